"""The driver's dynamic-sampling refill loop (`GRPOTrainer.collect`) without engines: the rollout pool and
the reward service are replaced by scripted stand-ins (the loop's behaviour, not the engines', is under
test: which groups are kept, how many refill rounds run, the seeds per round, the advantages of the step's
batch). A completion's text is its scripted total reward."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from actors.reward import RewardBatch
from actors.rollout import PromptResult, Sample
from rl.core.config import load_config
from rl.core.data import GroundingRow, PromptOrder
from rl.core.grpo import group_advantages
from rl.trainer import GRPOTrainer

GROUP = 2


class ScriptedPool:
    """Answers round r's prompts with the reward lists of script[r], one list (G rewards) per prompt."""

    def __init__(self, script: list[list[list[float]]]):
        self.script, self.seeds, self.asked = script, [], []

    def generate(self, rows: Sequence[GroundingRow], n: int, seed: int | None = None, recover: Any = None,
                 ) -> list[PromptResult]:
        groups = self.script[len(self.seeds)]
        self.seeds.append(seed)
        self.asked.append(len(rows))
        assert len(groups) == len(rows) and all(len(g) == n for g in groups)
        return [PromptResult(index=i, prompt_ids=[1], policy_version=0,
                             samples=[Sample([2], [-0.5], "stop", str(r)) for r in group])
                for i, group in enumerate(groups)]


class ScriptedRewards:
    def score(self, completions: Sequence[str], references: Sequence[str], lengths: Any = None,
              recover: Any = None) -> RewardBatch:
        total = np.array([float(c) for c in completions])
        return RewardBatch(values={"total": total})


def _trainer(pool: ScriptedPool, *overrides: str) -> GRPOTrainer:
    trainer = GRPOTrainer.__new__(GRPOTrainer)  # the loop's state only: no Ray, no actors
    trainer.cfg = load_config(overrides=[f"grpo.group_size={GROUP}", "grpo.prompts_per_step=2",
                                         "grpo.dynamic_sampling=true", "grpo.num_mini_batches=1",
                                         "learner.micro_batch_size=1", *overrides])
    trainer.rows = [GroundingRow(Path(f"{i}.png"), "find", "a", Path("train.jsonl"), i + 1, (1000, 1000))
                    for i in range(10)]
    trainer.order = PromptOrder(len(trainer.rows), seed=0)
    trainer.version, trainer.pool, trainer.rewards = 0, pool, ScriptedRewards()
    return trainer


def test_refill_replaces_dropped_groups_and_the_batch_std_spans_the_whole_step():
    # Round 1: a constant group (dropped) and a kept one; round 2 refills the one missing prompt.
    pool = ScriptedPool([[[1.0, 1.0], [0.0, 1.0]], [[0.0, 3.0]]])
    trainer = _trainer(pool, "grpo.adv_std=batch", "grpo.max_refill_rounds=3")
    batch = trainer.collect({"rollout": 0.0, "reward": 0.0}, step=0)
    assert (batch.rounds, batch.groups_seen, batch.groups_dropped) == (2, 3, 1)
    assert pool.asked == [2, 1] and trainer.order.state()["cursor"] == 3
    assert len(set(pool.seeds)) == 2  # each round samples with its own seed
    assert batch.rewards["total"] == [0.0, 1.0, 0.0, 3.0]
    # One std over the step's kept rewards [0, 1, 0, 3] (unbiased: sqrt 2), not one per refill round.
    expected = [-0.5 / 2**0.5, 0.5 / 2**0.5, -1.5 / 2**0.5, 1.5 / 2**0.5]
    assert [s.advantage for s in batch.samples] == pytest.approx(expected, abs=1e-5)
    whole = group_advantages(torch.tensor(batch.rewards["total"]), GROUP, "batch")
    assert [s.advantage for s in batch.samples] == pytest.approx(whole.tolist())


def test_refill_stops_after_max_refill_rounds_with_what_it_has():
    constant = [[1.0, 1.0], [0.0, 0.0]]
    pool = ScriptedPool([constant, [[2.0, 2.0], [0.0, 2.0]], [[5.0, 5.0]]])
    trainer = _trainer(pool, "grpo.max_refill_rounds=2")
    batch = trainer.collect({"rollout": 0.0, "reward": 0.0}, step=0)
    assert (batch.rounds, batch.groups_seen, batch.groups_dropped) == (3, 5, 4)
    assert pool.asked == [2, 2, 1]  # 1 + max_refill_rounds rounds, then the step trains on one group
    assert [s.advantage for s in batch.samples] == pytest.approx([-2**-0.5, 2**-0.5], abs=1e-5)
