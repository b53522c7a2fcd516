"""Seeds: which config key drives which randomness, and the one place a rollout call's seed is derived.

The config keeps five seed keys apart on purpose, so that one source of randomness can change while the
others hold still (a sweep over run seeds sets `seed` and `rollout.seed` and keeps the data and the
starting weights; conf/sweeps/reward_ablation.yaml `seed_keys`):

| key | drives |
| --- | --- |
| `seed` | the run: GRPO's prompt order (`rl.core.data.PromptOrder`), the learners' torch RNG, SFT's shuffling |
| `rollout.seed` | the engines' sampling: the engine's own seed, and each training step's rollouts (`rollout_seed`) |
| `model.tiny.seed` | the tiny model's random initial weights (`rl.tiny`): the starting point, not the run |
| `data.synthetic.seed` | the synthetic images and answers (`rl.core.synthetic`): the data, not the run |
| `chaos.seed` | which worker each fault drill kills, and when (`rl.faults.Chaos`) |

`grpo.eval_seed` seeds the held-out samples, the same draws before and after training;
`evaluation.sample_seed` the sampled answers of `rl.evaluate` and a sweep's evaluation (`evaluation.samples`).
"""

from __future__ import annotations

# A rollout call's seed leaves room for this many workers: worker i samples with call seed + i.
WORKERS_PER_CALL = 64
# Spacing of the (rollout.seed, step, refill round) terms: (step, round) pairs stay distinct while a step has
# fewer than 101 rounds, and one rollout.seed's steps stay clear of the next one's for 9,900 steps.
RUN_FACTOR, STEP_FACTOR = 1_000_003, 101


def rollout_seed(seed: int, step: int, round_: int) -> int:
    """Seed of the rollouts of step `step` (0-based), refill round `round_`, from `rollout.seed`: a resumed
    or restarted run samples exactly what the straight one would have."""
    return (seed * RUN_FACTOR + step * STEP_FACTOR + round_) * WORKERS_PER_CALL


def worker_seed(call_seed: int, worker: int) -> int:
    """Seed of rollout worker `worker`'s share of a seeded call."""
    return call_seed + worker
