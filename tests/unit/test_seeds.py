"""rl/core/seeds.py: the rollout seeds a run has always used (a resumed run must draw the same samples)."""

from __future__ import annotations

from rl.core.seeds import rollout_seed, worker_seed


def test_rollout_seeds_keep_their_values():
    assert rollout_seed(0, 0, 0) == 0
    assert rollout_seed(1, 2, 3) == (1 * 1_000_003 + 2 * 101 + 3) * 64
    assert worker_seed(rollout_seed(0, 5, 1), 3) == (5 * 101 + 1) * 64 + 3


def test_steps_rounds_and_workers_never_share_a_seed():
    seeds = [worker_seed(rollout_seed(7, step, r), w) for step in range(50) for r in range(3) for w in range(64)]
    assert len(set(seeds)) == len(seeds)
