"""`score_batch` against the straightforward per-sample oracle (rl/tools/bench_reference.py), on the bench's
realistic completions and on hypothesis-built answers; batch composition never changes a value."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import KEYS, RewardConfig, clear_reference_cache, score, score_batch
from rl.tools.bench import BENCHES, main
from rl.tools.bench_reference import hungarian_max, reference_score
from rl.tools.bench_rewards import generate

REPO = Path(__file__).resolve().parents[2]


def assert_matches_oracle(completions: list[str], references: list[str], config: RewardConfig | None = None) -> None:
    got = score_batch(completions, references, config)
    for k, (c, r) in enumerate(zip(completions, references, strict=True)):
        expected = reference_score(c, r, config)
        for key in KEYS:
            assert got[key][k] == pytest.approx(expected[key], abs=1e-9), (key, c, r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bench_completions_match_the_oracle(seed: int) -> None:
    completions, references = generate(1500, seed)
    clear_reference_cache()
    assert_matches_oracle(completions, references)
    assert_matches_oracle(completions, references, RewardConfig(max_boxes=3, overlap_threshold=0.2))


def test_generator_is_realistic_and_deterministic() -> None:
    completions, references = generate(800, 5)
    assert (completions, references) == generate(800, 5)
    assert len(completions) == 800 and 90 <= len(set(references)) <= 100  # 8 per reference
    text = "\n".join(completions)
    for marker in ("<answer>", "</box> </box>", "<box><box>", ".", "]]</box>", "[["):
        assert marker in text, marker


def test_hungarian_oracle_is_optimal() -> None:
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for _ in range(200):
        matrix = rng.random((int(rng.integers(1, 7)), int(rng.integers(1, 7))))
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        assert hungarian_max(matrix.tolist()) == pytest.approx(matrix[rows, cols].sum())


coordinate = st.integers(-5, 1005) | st.floats(-50.0, 1050.0, allow_nan=False).map(lambda v: round(v, 2))
box = st.lists(coordinate, min_size=4, max_size=4)
label = st.sampled_from(["Nodule", "nodule.", " Mass", "MASS:", "Pleural  effusion", "", "Σ lesion", "cyst,"])


@st.composite
def answers(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        boxes = draw(st.lists(box, min_size=1, max_size=5))
        content = json.dumps(boxes[0] if len(boxes) == 1 and draw(st.booleans()) else boxes)
        content = draw(st.sampled_from([content, content.replace(", ", ","), f" {content}\n", "junk", "[]"]))
        parts.append(f"{draw(label)} <box>{content}</box>")
    text = draw(st.sampled_from([" ", "\n", ", "])).join(parts)
    mangle = draw(st.integers(0, 9))
    if mangle == 0:
        text = text.replace("</box>", "", 1)
    elif mangle == 1:
        text = f"<think>{draw(label)} <box>[1,2,3,4]</box></think><answer>{text}</answer>"
    elif mangle == 2 and text:
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == 3:
        text = "</box>" + text + "<box>"
    return text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(answers(), answers()), min_size=1, max_size=6),
    st.integers(1, 8),
    st.sampled_from([0.0, 0.5, 0.9]),
)
def test_structured_answers_match_the_oracle(pairs: list, max_boxes: int, threshold: float) -> None:
    config = RewardConfig(max_boxes=max_boxes, overlap_threshold=threshold)
    assert_matches_oracle([p[0] for p in pairs], [p[1] for p in pairs], config)


def test_batch_order_and_composition_do_not_matter() -> None:
    completions, references = generate(600, 9)
    whole = score_batch(completions, references)
    order = list(range(600))
    random.Random(0).shuffle(order)
    shuffled = score_batch([completions[k] for k in order], [references[k] for k in order])
    halves = [score_batch(completions[:250], references[:250]), score_batch(completions[250:], references[250:])]
    for key in KEYS:
        np.testing.assert_allclose(shuffled[key], whole[key][order], atol=1e-12)
        np.testing.assert_allclose(np.concatenate([h[key] for h in halves]), whole[key], atol=1e-12)
        assert score(completions[7], references[7])[key] == pytest.approx(whole[key][7], abs=1e-12)


def test_reference_cache_is_transparent() -> None:
    completions, references = generate(400, 3)
    clear_reference_cache()
    cold = score_batch(completions, references)
    warm = score_batch(completions, references)
    clear_reference_cache()  # now fill the cache from several partial batches, in another order
    for lo in (300, 0, 150):
        score_batch(completions[lo : lo + 60], references[lo : lo + 60])
    mixed = score_batch(completions, references)
    for key in KEYS:
        np.testing.assert_array_equal(cold[key], warm[key])
        np.testing.assert_array_equal(cold[key], mixed[key])


def test_bench_cli_ends_with_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "rewards" in BENCHES
    assert main(["rewards", "--n", "400", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"bench", "ratio", "ours_per_s", "baseline_per_s", "n"}
    assert result["bench"] == "rewards" and result["n"] == 400 and result["ratio"] > 1
    assert all(not line.startswith("{") for line in lines[:-1])


def test_bench_cli_usage_and_lazy_imports() -> None:
    assert main([]) == 2 and main(["--help"]) == 0 and main(["no-such-bench"]) == 2
    code = "import sys, rl.tools.bench; assert not {'torch', 'ray', 'rewards'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
