"""`python -m rl.bench rewards`: `rewards.score_batch` against the per-sample pure-Python baseline.

Both score the same 20,000 realistic GRPO completions (8 per reference: 1-3 labels, 1-4 boxes,
jitter, dropped / extra / duplicate boxes, wrong labels, broken tags and JSON, <answer> wrappers),
in the same process. Both time a cold start: the reference-parse cache is cleared before each run.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import cast

import numpy as np

FINDINGS = (
    "Fractures", "Nodule", "Pleural effusion", "Pneumothorax", "Cardiomegaly", "Mass",
    "Consolidation", "Atelectasis", "Lesion", "Calcification", "Opacity", "Cyst",
)  # fmt: skip
GROUP_SIZE = 8  # completions per reference, as in a GRPO group


def _box(rng: random.Random) -> list[int]:
    w, h = rng.randint(15, 300), rng.randint(15, 300)
    x, y = rng.randint(0, 1000 - w), rng.randint(0, 1000 - h)
    return [x, y, x + w, y + h]


def _reference(rng: random.Random) -> list[tuple[str, list[list[float]]]]:
    if rng.random() < 0.05:
        return []  # "no findings"
    labels = rng.sample(FINDINGS, rng.randint(1, 3))
    return [(label, [_box(rng) for _ in range(rng.randint(1, 4))]) for label in labels]


def _render(groups: list[tuple[str, list[list[float]]]], rng: random.Random) -> str:
    if not groups:
        return "No findings."
    parts = []
    for label, boxes in groups:
        if len(boxes) == 1 and rng.random() < 0.3:
            content = json.dumps(boxes[0])  # the single-box form
        else:
            content = json.dumps(boxes, separators=(",", ":") if rng.random() < 0.3 else None)
        parts.append(f"{label} <box>{content}</box>")
    return rng.choice((" ", ", ", "\n", "; ")).join(parts)


def _jitter(box: list[float], sigma: float, rng: random.Random, floats: bool) -> list[float]:
    out = [v + rng.gauss(0.0, sigma) for v in box]
    return [round(v, 1) for v in out] if floats else [round(v) for v in out]


def _mutate_boxes(boxes: list[list[float]], rng: random.Random) -> list[list[float]]:
    sigma, floats = rng.choice((0.0, 2.0, 8.0, 25.0, 60.0)), rng.random() < 0.1
    out = [_jitter(b, sigma, rng, floats) for b in boxes if rng.random() > 0.1]
    if rng.random() < 0.15:
        out.append(_box(rng))  # extra box
    if out and rng.random() < 0.1:
        out.append(_jitter(rng.choice(out), 1.0, rng, floats))  # near-duplicate
    if out and rng.random() < 0.03:
        x1, y1, x2, y2 = out[0]
        out[0] = [x2, y1, x1, y2]  # invalid: x1 > x2
    return out or [_box(rng)]


def _mutate_labels(groups: list, rng: random.Random) -> list:
    out = []
    for label, boxes in groups:
        if rng.random() < 0.1:
            continue  # missed finding
        if rng.random() < 0.1:
            label = rng.choice(FINDINGS)  # wrong label
        label = rng.choice((label, label.lower(), label + ".", f"  {label.upper()}:"))
        out.append((label, _mutate_boxes(boxes, rng)))
    if rng.random() < 0.1 or not out:
        out.append((rng.choice(FINDINGS), [_box(rng)]))  # extra finding
    return out


def _break(text: str, rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return text.replace("</box>", "", 1)  # unclosed
    if kind == 1:
        return text.replace("<box>", "", 1)  # missing open
    if kind == 2:
        return text + " </box>"  # stray close
    if kind == 3:
        return text[: rng.randrange(1, len(text))]  # truncated at the token limit
    if kind == 4:
        return text.replace("]]", "]", 1)  # broken JSON
    return text.replace("<box>", "<box><box>", 1)  # doubled open


def _completion(groups: list, rng: random.Random) -> str:
    text = _render(_mutate_labels(groups, rng), rng)
    if rng.random() < 0.1:
        text = _break(text, rng)
    if rng.random() < 0.15:
        text = rng.choice(("The image shows ", "Findings: ")) + text
    if rng.random() < 0.1:
        text = f"<think>look at the image</think><answer>{text}</answer>"
    return text


def generate(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (completion, reference) pairs, GROUP_SIZE completions per reference."""
    rng = random.Random(seed)
    completions, references = [], []
    while len(completions) < n:
        groups = _reference(rng)
        reference = _render(groups, rng)
        for _ in range(min(GROUP_SIZE, n - len(completions))):
            completions.append(_completion(groups, rng))
            references.append(reference)
    return completions, references


def _interleaved_best(repeat: int, *fns: Callable[[], object]) -> tuple[list[tuple[float, float]], list[object]]:
    """Best (CPU, wall) seconds of each function over `repeat` rounds, run in turn so that both sides
    see the same background load; and each function's last result."""
    best = [(float("inf"), float("inf"))] * len(fns)
    results: list[object] = [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            cpu, wall = time.process_time(), time.perf_counter()
            results[k] = fn()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best[k] = (min(best[k][0], cpu), min(best[k][1], wall))
    return best, results


def run(argv: list[str]) -> dict:
    """Time both sides; the JSON figures use CPU time (both are single-threaded), which co-tenants on a
    shared machine cannot inflate; wall times are printed next to them."""
    from rewards import KEYS, clear_reference_cache, score_batch
    from rl.tools.bench_reference import reference_score

    parser = argparse.ArgumentParser(prog="python -m rl.bench rewards")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs, for both sides")
    args = parser.parse_args(argv)

    completions, references = generate(args.n, args.seed)
    print(f"rewards: {args.n} completions, {len(set(references))} distinct references")

    def ours() -> dict[str, np.ndarray]:
        clear_reference_cache()  # a cold cache: every distinct reference is parsed in the timed run
        return score_batch(completions, references)

    def baseline() -> list[dict[str, float]]:
        return [reference_score(c, r) for c, r in zip(completions, references, strict=True)]

    times, (got, expected) = _interleaved_best(args.repeat, ours, baseline)
    got = cast(dict[str, np.ndarray], got)
    expected = cast(list[dict[str, float]], expected)
    diff = max(float(np.max(np.abs(got[k] - np.array([e[k] for e in expected])))) for k in KEYS)
    if diff > 1e-9:
        raise SystemExit(f"score_batch disagrees with the baseline by {diff}")
    means = ", ".join(f"{k} {np.mean(got[k]):.3f}" for k in KEYS)
    print(f"  means: {means}")
    for name, (cpu, wall) in zip(("score_batch", "pure Python"), times, strict=True):
        print(f"  {name:12s}: {cpu * 1e3:8.1f} ms CPU {args.n / cpu:12,.0f} completions/s  ({wall * 1e3:.1f} ms wall)")
    ours_per_s, base_per_s = args.n / times[0][0], args.n / times[1][0]
    wall_ratio = times[1][1] / times[0][1]
    print(f"  ratio {ours_per_s / base_per_s:.1f}x CPU ({wall_ratio:.1f}x wall; target >= 20x), max |diff| {diff:.1e}")
    return {
        "bench": "rewards",
        "ratio": round(ours_per_s / base_per_s, 2),
        "ours_per_s": round(ours_per_s, 1),
        "baseline_per_s": round(base_per_s, 1),
        "n": args.n,
    }
