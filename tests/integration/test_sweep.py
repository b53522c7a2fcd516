"""`rl.sweep` end to end with every real part: a 2-variant x 1-seed sweep of 2-step GRPO runs on the tiny model,
evaluated by one rollout pool (`rl.evaluate`'s metrics and files), reported; then the same sweep again skips
everything."""

from __future__ import annotations

import pytest

from rl.report import read_results_csv
from rl.tools.sweep import run_sweep
from rl.tools.sweep_spec import SweepSpec
from tests.conftest import CACHE
from tests.integration.test_trainer import SMALL

pytestmark = pytest.mark.slow


def test_tiny_sweep_runs_end_to_end_and_resumes(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path):
    spec = SweepSpec.model_validate({
        "name": "tiny", "overrides": [*SMALL, "grpo.num_steps=2", "checkpoint.every=0", "logging.image_every=0"],
        "variants": {"all_rewards": [], "no_giou": ["rewards.giou=0"]}, "seeds": [0],
        "output_dir": str(tmp_path / "sweep"), "evaluation": {"split": "test", "max_rows": 8, "gallery_rows": 4,
                                                           "samples": 2}})
    assert str(CACHE) in " ".join(spec.overrides)  # the session's cached model and data, no rebuild
    lines: list[str] = []
    report = run_sweep(spec, log=lines.append)
    root = tmp_path / "sweep"
    rows = read_results_csv(root / "results.csv")
    assert [(r["variant"], r["seed"], r["status"], r["step"]) for r in rows] == [
        ("start", 0, "done", 0), ("all_rewards", 0, "done", 2), ("no_giou", 0, "done", 2)]
    for row in rows:
        assert row["rows"] == 8.0
        assert 0.0 <= row["format_valid"] <= 1.0 and 0.0 <= row["label_accuracy"] <= 1.0
        assert 0.0 <= row["mean_iou_matched"] <= 1.0 and -1.0 <= row["reward/giou"] <= 1.0
        assert row.get("ap50", 0.0) >= row.get("ap", 0.0) >= 0.0  # AP@.5 bounds AP@[.5:.95]
        # total_reward is scored with the base weights for every variant: recomputable from the components
        total = (row["reward/label_accuracy"] + row["reward/giou"] + 0.5 * row["reward/tag_count"]
                 + row["reward/overlap_penalty"] + row["reward/tests.integration.extra_rewards:response_length"])
        assert row["total_reward"] == pytest.approx(total, abs=1e-9)
        # Two sampled answers per row, scored the same way: their own box count and format figures.
        assert 0.0 <= row["sampled/format_valid"] <= 1.0 and row["sampled/box_ratio"] >= 0.0
        assert row["sampled/total_reward"] == pytest.approx(
            row["sampled/reward/label_accuracy"] + row["sampled/reward/giou"] + 0.5 * row["sampled/reward/tag_count"]
            + row["sampled/reward/overlap_penalty"]
            + row["sampled/reward/tests.integration.extra_rewards:response_length"], abs=1e-9)
    text = report.read_text()
    assert "## Sampled answers (2 per row" in text and "## Every run" in text
    assert "| start | 1 |" in text and "| all_rewards | 1 |" in text and "| no_giou | 1 |" in text
    for name in ("final-metrics.png", "curves-all_rewards.png", "curves-no_giou.png"):
        assert (root / "figures" / name).stat().st_size > 1000
    assert (root / "runs" / "no_giou" / "seed-0" / "eval" / "gallery.png").is_file()

    lines.clear()
    run_sweep(spec, log=lines.append)  # everything finished: nothing trains, evaluations come from cache
    assert sum("finished earlier, skipped" in line for line in lines) == 2
    assert read_results_csv(root / "results.csv") == rows
