"""Sweeps without engines: the sweep file schema, config validation before any run, resumability (DONE
markers, broken runs reported, the rest go on), results.csv, report.md and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl import checkpoint
from rl.report import mean_spread, read_results_csv, write_report, write_results_csv
from rl.tools.sweep import DONE, ERROR, run_sweep, status, train_all, write_outputs
from rl.tools.sweep_spec import SweepError, SweepSpec, expand, load_spec, validate

REPO = Path(__file__).resolve().parents[2]


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def make_spec(tmp_path: Path, **fields) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", "overrides": ["pipeline=[grpo]", "grpo.num_steps=2"],
                                     "variants": {"a": [], "b": ["rewards.giou=2"]}, "seeds": [0, 1],
                                     "output_dir": str(tmp_path / "out"), **fields})


def test_shipped_ablation_has_every_variant_and_valid_configs():
    spec = load_spec(REPO / "conf" / "sweeps" / "reward_ablation.yaml")
    variants = spec.variant_overrides()
    assert variants["no_giou"] == ["rewards.giou=0"] and variants["no_tag_count"] == ["rewards.tag_count=0"]
    assert {"all_rewards", "no_label_accuracy", "no_overlap_penalty", "overlong_penalty", "giou_0.5",
            "giou_2"} <= set(variants)
    configs = validate(spec, expand(spec))
    weights = {run.variant: cfg.rewards for run, cfg in configs.items()}
    assert weights["no_overlap_penalty"].overlap_penalty == 0 and weights["giou_2"].giou == 2.0
    assert weights["overlong_penalty"].overlong_penalty == 1.0 and weights["all_rewards"].overlong_penalty == 0.0
    assert len(configs) == len(variants) * len(spec.seeds)


def test_sweep_file_typo_is_rejected_naming_the_field(tmp_path):
    path = spec_file(tmp_path, "name: t\nvariants: {a: []}\nseed: [0, 1]\n")
    with pytest.raises(SweepError, match=r"seed: Extra inputs are not permitted"):
        load_spec(path)


@pytest.mark.parametrize("text, message", [
    ("name: t\nvariants: {a: []}\ngrid: {rewards.giou: [1]}\n", "exactly one of"),
    ("name: t\nvariants: {'a/b': []}\n", "variant name"),
    ("name: t\nvariants: {a: [rewards.giou]}\n", "key.path=value"),
    ("name: t\nvariants: {a: []}\nseeds: [1, 1]\n", "seeds repeat"),
    ("name: t\nvariants: {a: []}\nmode: slurm\n", "mode"),
    ("name: t\nvariants: {start: []}\n", "start checkpoint"),
])
def test_bad_sweep_files_are_rejected(tmp_path, text, message):
    with pytest.raises(SweepError, match=message):
        load_spec(spec_file(tmp_path, text))


def test_grid_expands_to_every_combination_and_seed(tmp_path):
    spec = make_spec(tmp_path, variants=None, grid={"rewards.giou": [0.5, 2], "rewards.tag_count": [0]})
    runs = expand(spec)
    assert [(r.variant, r.seed) for r in runs] == [
        ("rewards.giou=0.5,rewards.tag_count=0", 0), ("rewards.giou=0.5,rewards.tag_count=0", 1),
        ("rewards.giou=2,rewards.tag_count=0", 0), ("rewards.giou=2,rewards.tag_count=0", 1)]
    assert runs[3].overrides[-6:] == ("rewards.giou=2", "rewards.tag_count=0", "seed=1", "rollout.seed=1",
                                      f"logging.dir={runs[3].logs}", f"checkpoint.dir={runs[3].checkpoints}")
    configs = validate(spec, runs)
    assert configs[runs[3]].rewards.giou == 2.0 and configs[runs[3]].seed == 1


def test_unknown_key_fails_before_any_run_naming_it(tmp_path):
    spec = make_spec(tmp_path, variants={"ok": [], "typo": ["rewards.gio=2"]})
    started = []
    with pytest.raises(SweepError, match=r"(?s)variant 'typo'.*rewards\.gio: unknown key"):
        run_sweep(spec, run_fn=lambda s, run: started.append(run))
    assert started == [] and not (tmp_path / "out").exists()


def test_command_line_rejects_an_unknown_key_in_an_override(tmp_path, capsys):
    from rl.tools.sweep import main

    shipped = str(REPO / "conf" / "sweeps" / "reward_ablation.yaml")
    assert main([shipped, "--variants", "no_giou", "--output-dir", str(tmp_path), "grpo.num_stepz=2"]) == 2
    assert "grpo.num_stepz: unknown key" in capsys.readouterr().err
    assert main([shipped, "--variants", "nope"]) == 2
    assert "--variants: unknown ['nope']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_pipeline_without_grpo_is_rejected(tmp_path):
    spec = make_spec(tmp_path, overrides=["pipeline=[preview]"])
    with pytest.raises(SweepError, match="no grpo stage"):
        validate(spec, expand(spec))


def _write_model(folder):
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"x")


def fake_training(fail: set[tuple[str, int]], calls: list):
    """A run function that writes a complete final checkpoint (or raises for the runs in `fail`)."""
    def run(spec, run):
        calls.append((run.variant, run.seed))
        if (run.variant, run.seed) in fail:
            raise RuntimeError("learner died")
        checkpoint.save(run.checkpoints, 2, _write_model, {"step": 2, "version": 2}, keep_last=1)
    return run


def test_finished_runs_are_skipped_and_broken_ones_reported(tmp_path):
    spec = make_spec(tmp_path)
    runs = expand(spec)
    configs = validate(spec, runs)
    calls, lines = [], []
    train_all(spec, configs, fake_training({("a", 1)}, calls), lines.append)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # the broken run did not stop the others
    assert [status(r) for r in runs] == ["done", "failed", "done", "done"]
    assert "learner died" in (runs[1].dir / ERROR).read_text()
    assert json.loads((runs[0].dir / DONE).read_text())["step"] == 2
    assert any("FAILED" in line for line in lines)
    # A log line per run event, each with the sweep's ETA (none before a run finished), and a last count.
    assert lines[0].startswith("[1/4] a seed 0: training (") and lines[0].endswith("  ETA --:--")
    assert lines[1].startswith("[2/4] a seed 1: training (") and "ETA --:--" not in lines[1]
    assert lines[-1].startswith("sweep runs 4/4 in ")
    calls.clear()
    train_all(spec, configs, fake_training(set(), calls), lines.append)  # the sweep run again
    assert calls == [("a", 1)]  # only the run that had not finished
    assert [status(r) for r in runs] == ["done"] * 4 and not (runs[1].dir / ERROR).exists()


def test_a_run_that_stops_short_of_its_last_step_is_not_done(tmp_path):
    spec = make_spec(tmp_path, variants={"a": []}, seeds=[0], overrides=["pipeline=[grpo]", "grpo.num_steps=5"])
    configs = validate(spec, expand(spec))
    train_all(spec, configs, fake_training(set(), []), lambda _: None)  # writes step 2 of 5
    run = next(iter(configs))
    assert status(run) == "failed" and "no complete checkpoint at step 5" in (run.dir / ERROR).read_text()


RECORDS = [
    {"variant": "a", "seed": 0, "status": "done", "step": 2, "ap50": 0.5, "label_accuracy": 0.25},
    {"variant": "a", "seed": 1, "status": "done", "step": 2, "ap50": 0.7, "label_accuracy": 0.75},
    {"variant": "b", "seed": 0, "status": "failed"},
    {"variant": "b", "seed": 1, "status": "done", "step": 2, "ap50": 0.1, "label_accuracy": float("nan")},
]


def test_results_csv_round_trips(tmp_path):
    path = write_results_csv(tmp_path / "results.csv", RECORDS)
    assert path.read_text().splitlines()[0] == "variant,seed,status,step,ap50,label_accuracy"
    rows = read_results_csv(path)
    assert rows[1] == {"variant": "a", "seed": 1, "status": "done", "step": 2, "ap50": 0.7, "label_accuracy": 0.75}
    assert rows[2] == {"variant": "b", "seed": 0, "status": "failed"}


def test_mean_spread_is_sample_std_over_seeds():
    assert mean_spread([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert mean_spread([0.3]) == (0.3, 0.0)
    assert mean_spread([float("nan"), 0.2]) == (0.2, 0.0)


def test_report_shows_mean_and_spread_and_broken_runs(tmp_path):
    text = write_report(tmp_path / "report.md", "Sweep t", RECORDS, ["ap50", "label_accuracy"],
                        figures={"Final metrics": "figures/final-metrics.png"}).read_text()
    assert "| variant | seeds | ap50 | label_accuracy |" in text
    assert "| a | 2 | 0.600 ± 0.141 | 0.500 ± 0.354 |" in text
    assert "| b | 1 | 0.100 ± 0.000 | – |" in text
    assert "## Runs that did not finish" in text and "| b | 0 | failed |" in text
    assert "![Final metrics](figures/final-metrics.png)" in text
    # Every finished run with its seed, not only the mean.
    every = text[text.index("## Every run"):text.index("## Runs that did not finish")]
    assert "| a | 0 | 0.500 | 0.250 |" in every and "| a | 1 | 0.700 | 0.750 |" in every
    assert "| b | 1 | 0.100 | – |" in every and "| b | 0 |" not in every


def test_report_has_one_more_table_per_extra_metric_group(tmp_path):
    records = [{**r, "sampled/ap50": 0.1 * r["seed"]} for r in RECORDS if r["status"] == "done"]
    text = write_report(tmp_path / "report.md", "Sweep t", records, ["ap50"],
                        more={"Sampled answers": ["sampled/ap50"]}).read_text()
    assert "## Sampled answers\n\n| variant | seeds | sampled/ap50 |\n" in text
    assert "| a | 2 | 0.050 ± 0.071 |" in text
    assert "| variant | seed | ap50 | sampled/ap50 |" in text and "| a | 1 | 0.700 | 0.100 |" in text


def test_outputs_read_the_trainers_event_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    spec = make_spec(tmp_path, seeds=[0])
    runs = expand(spec)
    for run, offset in zip(runs, (0.0, 0.5), strict=True):
        writer = SummaryWriter(str(run.logs))
        for step in (1, 2, 3):
            writer.add_scalar("reward/total/mean", offset + 0.1 * step, step)
        writer.close()
        run.dir.joinpath(DONE).write_text("{}")
    records = [{"variant": r.variant, "seed": r.seed, "status": "done", "step": 3, "ap50": 0.2, "ap": 0.1}
               for r in runs]
    from rl.tools.plots import read_scalars

    assert read_scalars(runs[1].logs)["reward/total/mean"] == pytest.approx({1: 0.6, 2: 0.7, 3: 0.8})
    report = write_outputs(spec, runs, records)
    root = report.parent
    assert {p.name for p in (root / "figures").iterdir()} == {"curves-a.png", "curves-b.png", "final-metrics.png"}
    assert all((root / "figures" / n).stat().st_size < 200_000 for n in ("curves-a.png", "final-metrics.png"))
    assert read_results_csv(root / "results.csv")[1]["ap50"] == 0.2
    assert "![Training reward: b](figures/curves-b.png)" in report.read_text()


class FakeJobs:
    """Stands in for ray.job_submission.JobSubmissionClient: records submissions, ends them as told."""

    submitted: list[dict] = []
    outcome = "SUCCEEDED"

    def __init__(self, address=None):
        self.address, self.polls = address, 0

    def submit_job(self, **kwargs):
        FakeJobs.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_status(self, job):
        from ray.job_submission import JobStatus

        self.polls += 1
        return JobStatus.RUNNING if self.polls < 2 else JobStatus(FakeJobs.outcome)

    def get_job_logs(self, job):
        return f"log of {job}"


@pytest.mark.parametrize("outcome", ["SUCCEEDED", "FAILED"])
def test_ray_job_mode_submits_each_run_as_a_launch_job(tmp_path, monkeypatch, outcome):
    import ray.job_submission

    from rl.tools.sweep import run_ray_job

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeJobs)
    monkeypatch.setattr(FakeJobs, "submitted", [])
    monkeypatch.setattr(FakeJobs, "outcome", outcome)
    spec = make_spec(tmp_path, mode="ray_job", base="conf/default.yaml")
    run = expand(spec)[1]
    run.dir.mkdir(parents=True)
    if outcome == "FAILED":
        with pytest.raises(RuntimeError, match="ended FAILED"):
            run_ray_job(spec, run, poll_s=0)
    else:
        run_ray_job(spec, run, poll_s=0)
    (job,) = FakeJobs.submitted
    assert job["entrypoint"].startswith("python -m rl.launch --config conf/default.yaml 'pipeline=[grpo]' ")
    assert f"checkpoint.dir={run.checkpoints}" in job["entrypoint"] and "seed=1" in job["entrypoint"]
    assert job["runtime_env"] == {"working_dir": str(REPO)}
    assert (run.dir / "job.log").read_text() == f"log of {job['submission_id']}"
