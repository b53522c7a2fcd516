"""Placement: what the config's layout needs from the cluster, checked before any actor starts, and
the Ray placement groups that pin learners and rollout engines.

Layout: L learners, one accelerator each (one process with `learner.cpus_per_learner` CPUs on CPU),
packed onto as few nodes as possible so their collective stays node-local; R rollout engines of TP
accelerators each, every engine's tensor-parallel group inside one node; K reward actors on CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.config import Config
from rl.platform import Platform


class PlacementError(RuntimeError):
    """The cluster cannot hold the configured layout; the message says what is missing."""


@dataclass(frozen=True)
class Layout:
    learner_bundle: dict[str, float]  # one per learner
    engine_bundle: dict[str, float]  # one per rollout engine (all its TP devices)
    reward_cpus: float
    learners: int
    engines: int

    def total(self) -> dict[str, float]:
        out: dict[str, float] = {"CPU": self.reward_cpus}
        for bundle, count in ((self.learner_bundle, self.learners), (self.engine_bundle, self.engines)):
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + value * count
        return out


def layout(cfg: Config, platform: Platform) -> Layout:
    tp = cfg.rollout.tensor_parallel_size
    if platform.has_accelerator:
        learner = {"CPU": float(cfg.learner.cpus_per_learner), platform.ray_accelerator: 1.0}
        engine = {"CPU": 1.0, platform.ray_accelerator: float(tp)}
    else:
        learner, engine = {"CPU": float(cfg.learner.cpus_per_learner)}, {"CPU": 1.0}
    return Layout(learner, engine, float(cfg.cluster.reward_workers), cfg.learner.num_learners,
                  cfg.rollout.num_workers)


def validate(cfg: Config, platform: Platform, nodes: list[dict[str, float]]) -> Layout:
    """Check the layout against the alive nodes' resources (as `ray.nodes()` reports them); raises
    `PlacementError` naming each shortfall and the config keys behind it."""
    plan = layout(cfg, platform)
    have: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            have[key] = have.get(key, 0.0) + value
    problems = []
    for key, need in plan.total().items():
        if have.get(key, 0.0) < need:
            problems.append(f"{need:g} {key} needed, the cluster has {have.get(key, 0.0):g}")
    if platform.has_accelerator:
        per_node = max((n.get(platform.ray_accelerator, 0.0) for n in nodes), default=0.0)
        tp = cfg.rollout.tensor_parallel_size
        if tp > per_node:
            problems.append(f"rollout.tensor_parallel_size={tp} does not fit one node "
                            f"(at most {per_node:g} {platform.ray_accelerator} per node)")
    if problems:
        raise PlacementError(
            "the cluster cannot hold this layout: " + "; ".join(problems)
            + f" (learner.num_learners={plan.learners} x {plan.learner_bundle}, rollout.num_workers={plan.engines}"
            f" x {plan.engine_bundle}, cluster.reward_workers={cfg.cluster.reward_workers} x 1 CPU)")
    return plan


def cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


@dataclass
class Placement:
    """Placement groups for one run; `learner_options` / `engine_options(i)` go to `.options(...)`."""

    learners: Any
    engines: list[Any]

    def learner_options(self) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.learners)}

    def engine_options(self, index: int) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # capture_child_tasks: vLLM's own workers for TP > 1 stay in the engine's bundle.
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.engines[index], placement_group_capture_child_tasks=True)}

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for group in (self.learners, *self.engines):
            remove_placement_group(group)


def place(cfg: Config, platform: Platform, timeout_s: float) -> Placement:
    """Validate, then reserve: learners PACKed (node-local collectives), each engine STRICT_PACKed
    (its TP group on one node)."""
    import ray
    from ray.util import placement_group

    plan = validate(cfg, platform, cluster_nodes())
    learners = placement_group([plan.learner_bundle] * plan.learners, strategy="PACK", name="learners")
    engines = [placement_group([plan.engine_bundle], strategy="STRICT_PACK", name=f"rollout-{i}")
               for i in range(plan.engines)]
    ready, pending = ray.wait([g.ready() for g in (learners, *engines)], num_returns=1 + len(engines),
                              timeout=timeout_s)
    if pending:
        raise PlacementError(f"placement groups not ready within {timeout_s:.0f} s: the cluster reported "
                             f"enough resources but could not pack them ({len(pending)} groups pending)")
    return Placement(learners, engines)
