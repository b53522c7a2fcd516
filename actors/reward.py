"""Reward side: `RewardService` Ray actors that score completions with `rewards.score_batch`.

Thin on purpose: every number comes from `rewards/` (pure, unit-tested without Ray); this file only
splits a batch over K actors, waits for their pieces and puts them back in order. Its config is the
tree's `cfg.rewards`; K and the deadline come from `cfg.cluster` (`reward_workers`, `call_timeout_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from actors.pool import ActorPool
from actors.remote import ActorCallError, Locatable, Retry, gather
from rewards import RewardConfig, score_batch
from rewards.config import resolve_extra
from rl.core.chunks import balanced_ranges
from rl.core.config import Config


class RewardServiceError(ActorCallError):
    """A reward actor died, raised or missed the deadline; the message names it."""


class RewardService(Locatable):
    """One scoring process (a Ray actor in `RewardPool`; a plain object works the same in tests)."""

    def __init__(self, name: str, config: RewardConfig):
        self.name, self.config = name, config
        for path in config.extra:  # imported here, at the actor's start, never while the config is validated
            resolve_extra(path)

    def ping(self) -> str:
        return self.name

    def score(
        self, completions: Sequence[str], references: Sequence[str], lengths: ArrayLike | None = None
    ) -> dict[str, np.ndarray]:
        """Every component per sample (`rewards.score_batch`)."""
        return score_batch(completions, references, self.config, lengths)


@dataclass(frozen=True)
class RewardBatch:
    """Scores of a batch: every component (and extra reward) per sample."""

    values: dict[str, np.ndarray]


def split_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of range(size), at most `parts` (no empty one: an idle reward actor
    gets no call), sizes differing by at most one."""
    return [(r.start, r.stop) for r in balanced_ranges(size, parts) if r]


def merge(parts: Sequence[dict[str, np.ndarray]], size: int) -> RewardBatch:
    """Concatenate per-chunk results (in batch order)."""
    if not parts:
        parts = [score_batch([], [])]
    values = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    for key, arr in values.items():
        if arr.shape != (size,):
            raise ValueError(f"reward {key!r}: {arr.shape[0]} values for a batch of {size}")
    return RewardBatch(values)


class RewardPool(ActorPool):
    """K `RewardService` actors; splits each batch into K contiguous chunks, one per actor.

    Plain class held by the driver: it owns handles only.
    """

    def __init__(self, cfg: Config, name_prefix: str = "reward"):
        """`cluster.reward_workers` actors scoring with `cfg.rewards`; every call (and start) waits at most
        `cluster.call_timeout_s`."""
        import ray

        self.timeout_s = cfg.cluster.call_timeout_s
        names = [f"{name_prefix}-{i}" for i in range(cfg.cluster.reward_workers)]
        actor = ray.remote(RewardService)
        super().__init__(names, lambda i: actor.options(name=names[i], num_cpus=1).remote(names[i], cfg.rewards),
                         self.timeout_s, RewardServiceError)

    def score(
        self, completions: Sequence[str], references: Sequence[str], lengths: ArrayLike | None = None,
        recover: Callable[[int, ActorCallError], None] | None = None,
    ) -> RewardBatch:
        """Every component per sample, in batch order: contiguous chunks, one per actor, each awaited at
        most `timeout_s`. `recover(k, err)`: called when actor k dies or hangs; it replaces the actor
        (`restart`) and that actor's chunk is scored again. Without it, the error is raised."""
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        lengths_arr = None if lengths is None else np.asarray(lengths)
        parts = [(k, (list(completions[start:stop]), list(references[start:stop]),
                      None if lengths_arr is None else lengths_arr[start:stop]))
                 for k, (start, stop) in enumerate(split_bounds(len(completions), len(self.actors)))]
        labels = [self.labels[k] for k, _ in parts]
        retry: Retry | None = None
        if recover is not None:
            def retry(j: int, err: ActorCallError) -> Any:
                k, args = parts[j]
                recover(k, err)
                labels[j] = self.labels[k]  # errors name the replacement from now on
                return self.actors[k].score.remote(*args)

        refs = [self.actors[k].score.remote(*args) for k, args in parts]
        return merge(gather(refs, labels, "score", self.timeout_s, RewardServiceError, retry), len(completions))
