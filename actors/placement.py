"""Placement: what the config's layout needs from the cluster, checked before any actor starts, and
the Ray placement groups that pin learners and rollout engines to nodes.

Layout: L learners, one accelerator each (one process with `learner.cpus_per_learner` CPUs on CPU),
R rollout engines of TP accelerators each, K reward actors on CPUs. On accelerators the node plan is
`rl.core.layout.pack_nodes`: learners fill whole nodes in rank order (the collective's ranks are ordered by
node), engines take the rest first-fit with each TP group inside one node, and engine indices rise with
the node (the weight-sync group, sender then engines in index order, stays node-contiguous). Each
planned node becomes one STRICT_PACK placement group pinned to a Ray node by its `ray.io/node-id` label.

Colocated (`cluster.colocate`): learner i and engine i share one GPU. Their bundle holds the GPU and both
actors' CPUs, and each actor asks for half of it, so Ray hands both the same device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rl.core.config import Config
from rl.core.platform import Platform

Resources = Mapping[str, float]
NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries it (Ray >= 2.49)
# A local Ray is sized from the layout (rl.cluster.connect), so Ray's own check always passes there; the
# machine is the limit. Its logical CPUs are reservations, and the demo's actors mostly wait on each other:
# it reserves 4 (learner, engine, reward actor, driver) and runs on 2 cores. 4 per core keeps it legal
# down to 1 core and refuses layouts of a cluster (100 engines, each a process with its own model copy).
LOCAL_CPUS_PER_CORE = 4


class PlacementError(RuntimeError):
    """The cluster cannot hold the configured layout; the message says what is missing."""


# Ray's share of a GPU each colocated actor asks for: two of them fill the one GPU of their bundle.
COLOCATED_SHARE = 0.5


@dataclass(frozen=True)
class Layout:
    learner_bundle: dict[str, float]  # one per learner (colocated: the learner's and its engine's resources)
    engine_bundle: dict[str, float]  # one per rollout engine (all its TP devices); colocated: none of its own
    reward_cpus: float
    learners: int
    engines: int
    learner_gpus: float = 1.0  # what each actor asks Ray for inside its bundle
    engine_gpus: float = 1.0
    colocated: bool = False  # engine i in learner i's bundle (cluster.colocate, on accelerators)

    def total(self) -> dict[str, float]:
        out: dict[str, float] = {"CPU": self.reward_cpus}
        for bundle, count in ((self.learner_bundle, self.learners), (self.engine_bundle, self.engines)):
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + value * count
        return out


@dataclass(frozen=True)
class NodeSlot:
    """One planned node: the Ray node it is pinned to (an index into the node list given; None on CPU,
    where one unpinned group holds everything) and the learner ranks and engines it hosts."""

    node: int | None
    learners: tuple[int, ...]
    engines: tuple[int, ...]


def layout(cfg: Config, platform: Platform) -> Layout:
    tp, cpus = cfg.rollout.tensor_parallel_size, float(cfg.learner.cpus_per_learner)
    counts = (float(cfg.cluster.reward_workers), cfg.learner.num_learners, cfg.rollout.num_workers)
    if not platform.has_accelerator:
        return Layout({"CPU": cpus}, {"CPU": 1.0}, *counts, learner_gpus=0.0, engine_gpus=0.0)
    gpu = platform.ray_accelerator
    if cfg.cluster.colocate:
        return Layout({"CPU": cpus + 1.0, gpu: 1.0}, {}, *counts, learner_gpus=COLOCATED_SHARE,
                      engine_gpus=COLOCATED_SHARE, colocated=True)
    return Layout({"CPU": cpus, gpu: 1.0}, {"CPU": 1.0, gpu: float(tp)}, *counts, engine_gpus=float(tp))


def usable_nodes(cfg: Config, platform: Platform, nodes: Sequence[Resources]) -> tuple[list[int], int]:
    """Indices of the nodes that can host a planned node (enough accelerators, of the configured type),
    and the accelerators per planned node: `cluster.gpus_per_node`, else the fewest any GPU node has."""
    key, want = platform.ray_accelerator, cfg.cluster.accelerator_type
    counts = [int(n.get(key, 0)) for n in nodes]
    per_node = cfg.cluster.gpus_per_node or min((c for c in counts if c), default=0)
    ok = [i for i, n in enumerate(nodes)
          if counts[i] and counts[i] >= per_node and (want is None or f"accelerator_type:{want}" in n)]
    return ok, per_node


def plan_nodes(cfg: Config, platform: Platform, nodes: Sequence[Resources]) -> list[NodeSlot]:
    """Which learner ranks and engines go to which of `nodes` (see the module docstring)."""
    learners, engines = cfg.learner.num_learners, cfg.rollout.num_workers
    if not platform.has_accelerator:
        return [NodeSlot(None, tuple(range(learners)), tuple(range(engines)))]
    ok, per_node = usable_nodes(cfg, platform, nodes)
    tp = cfg.rollout.tensor_parallel_size
    if tp > per_node:
        raise PlacementError(f"rollout.tensor_parallel_size={tp} does not fit one node "
                             f"(at most {per_node} {platform.ray_accelerator} per node)")
    packed = cfg.layout.node_plan(per_node)
    if len(packed) > len(ok):
        share = " on the learners' GPUs" if cfg.cluster.colocate else ""
        raise PlacementError(
            f"learner.num_learners={learners} + rollout.num_workers={engines} x TP {tp}{share} need {len(packed)} "
            f"nodes of {per_node} {platform.ray_accelerator}{_type_note(cfg)}; Ray reports {len(ok)} such nodes "
            f"(per node: {_describe(nodes, platform.ray_accelerator)})")
    return [NodeSlot(ok[k], tuple(ranks), tuple(eng)) for k, (ranks, eng) in enumerate(packed)]


def _type_note(cfg: Config) -> str:
    return f" of type {cfg.cluster.accelerator_type}" if cfg.cluster.accelerator_type else ""


def _describe(nodes: Sequence[Resources], key: str) -> str:
    def one(n: Resources) -> str:
        types = [k.split(":", 1)[1] for k in n if k.startswith("accelerator_type:")]
        return f"{n.get(key, 0):g}" + (f" {types[0]}" if types else "")

    return ", ".join(one(n) for n in nodes) or "no nodes"


def _shortfalls(plan: Layout, nodes: Sequence[Resources]) -> list[str]:
    have: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            have[key] = have.get(key, 0.0) + value
    return [f"{need:g} {key} needed, the cluster has {have.get(key, 0.0):g}"
            for key, need in plan.total().items() if have.get(key, 0.0) < need]


def _shape_problems(cfg: Config, platform: Platform, nodes: Sequence[Resources]) -> list[str]:
    """The declared cluster (cluster.nodes x cluster.gpus_per_node of cluster.accelerator_type) against
    what Ray reports, then whether the node plan fits."""
    c, key = cfg.cluster, platform.ray_accelerator
    ok, per_node = usable_nodes(cfg, platform, nodes)
    if c.nodes is not None and len(ok) < c.nodes:  # the declared cluster is missing: say that alone
        return [f"cluster.nodes={c.nodes} x cluster.gpus_per_node={per_node} {key}{_type_note(cfg)} "
                f"expected, Ray reports {len(ok)} such nodes (per node: {_describe(nodes, key)})"]
    try:
        plan_nodes(cfg, platform, nodes)
    except PlacementError as exc:
        return [str(exc)]
    return []


def _keys(cfg: Config, plan: Layout) -> str:
    """The config keys behind a layout's resources, with their values, for error messages."""
    return (f"learner.num_learners={plan.learners} x {plan.learner_bundle} (learner.cpus_per_learner="
            f"{cfg.learner.cpus_per_learner}), rollout.num_workers={plan.engines} x {plan.engine_bundle}, "
            f"cluster.reward_workers={cfg.cluster.reward_workers} x 1 CPU")


def check_machine(cfg: Config, platform: Platform, cores: int, memory_bytes: int, gpus: int) -> Layout:
    """Check the layout of a local cluster against this machine's `cores`, `memory_bytes` and `gpus`, before
    Ray starts: at most `LOCAL_CPUS_PER_CORE` reserved CPUs per core, counting the one `connect` adds for the
    driver; on accelerators, the GPUs the layout takes; on CPU, the engines' KV caches (allocated up front,
    in host memory) within the memory, a lower bound on what the run needs since the weights come on top.
    Raises `PlacementError` naming the keys and the numbers."""
    plan = layout(cfg, platform)
    need, limit = plan.total()["CPU"] + 1, LOCAL_CPUS_PER_CORE * cores
    if need > limit:
        raise PlacementError(
            f"this machine cannot hold this layout: it reserves {need:g} CPUs ({_keys(cfg, plan)}, + 1 for the "
            f"driver), more than {LOCAL_CPUS_PER_CORE} per core on this machine's {cores} cores ({limit}); "
            "lower those keys, or give a Ray cluster (cluster.address)")
    r = cfg.rollout
    if platform.has_accelerator and cfg.layout.gpus_needed() > gpus:
        raise PlacementError(
            f"this machine cannot hold this layout: it takes {cfg.layout.gpus_needed()} GPUs (learner.num_learners="
            f"{cfg.learner.num_learners} + rollout.num_workers={r.num_workers} x rollout.tensor_parallel_size="
            f"{r.tensor_parallel_size}, cluster.colocate={cfg.cluster.colocate}), this machine has {gpus}; lower "
            "those keys, or give a Ray cluster (cluster.address)")
    kv_bytes = r.num_workers * r.kv_cache_memory_mb * 2**20
    if not platform.has_accelerator and kv_bytes > memory_bytes:
        raise PlacementError(
            f"this machine cannot hold this layout: its engines' KV caches take {kv_bytes / 2**30:.1f} GiB "
            f"(rollout.num_workers={r.num_workers} x rollout.kv_cache_memory_mb={r.kv_cache_memory_mb}), more "
            f"than this machine's {memory_bytes / 2**30:.1f} GiB of memory; lower those keys, or give a Ray "
            "cluster (cluster.address)")
    return plan


def validate(cfg: Config, platform: Platform, nodes: Sequence[Resources]) -> Layout:
    """Check the layout against the alive nodes' resources (as `ray.nodes()` reports them); raises
    `PlacementError` naming each shortfall and the config keys behind it."""
    plan = layout(cfg, platform)
    problems = _shortfalls(plan, nodes)
    if platform.has_accelerator:
        problems += _shape_problems(cfg, platform, nodes)
    if problems:
        raise PlacementError(f"the cluster cannot hold this layout: {'; '.join(problems)} ({_keys(cfg, plan)})")
    return plan


def alive_nodes() -> list[tuple[str, dict[str, float]]]:
    """(node id, resources) of every alive node, in a stable order: the head first (the driver runs
    there), then by address and id."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: ("node:__internal_head__" not in n["Resources"], n["NodeManagerAddress"], n["NodeID"]))
    return [(n["NodeID"], dict(n["Resources"])) for n in nodes]


def cluster_nodes() -> list[dict[str, float]]:
    return [resources for _, resources in alive_nodes()]


def sync_group_nodes(slots: Sequence[NodeSlot], tp: int) -> list[int | None]:
    """The node of every rank of the weight-sync group: the sender (learner rank 0), then each engine's
    TP workers in engine order (`actors.weight_sync.WeightSync.connect`)."""
    where = {e: s.node for s in slots for e in s.engines}
    sender = next(s.node for s in slots if 0 in s.learners)
    return [sender] + [where[e] for e in sorted(where) for _ in range(tp)]


@dataclass
class Placement:
    """One placement group per planned node; `learner_options(rank)` / `engine_options(i)` go to
    `.options(...)` of the actor."""

    groups: list[Any]
    slots: list[NodeSlot]
    learner_bundles: dict[int, tuple[int, int]]  # rank -> (group, bundle index)
    engine_bundles: dict[int, tuple[int, int]]  # engine -> (group, bundle index); colocated: its learner's
    learner_gpus: float = 1.0  # num_gpus of each actor (Layout)
    engine_gpus: float = 1.0

    def learner_options(self, rank: int) -> dict[str, Any]:
        return {"num_gpus": self.learner_gpus, **self._options(*self.learner_bundles[rank], capture=False)}

    def engine_options(self, index: int) -> dict[str, Any]:
        # capture_child_tasks: vLLM's own workers for TP > 1 stay in the engine's bundle.
        return {"num_gpus": self.engine_gpus, **self._options(*self.engine_bundles[index], capture=True)}

    def _options(self, group: int, bundle: int, capture: bool) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.groups[group], placement_group_bundle_index=bundle, placement_group_capture_child_tasks=capture)}

    def bundle_nodes(self) -> list[list[str]]:
        """The Ray node id of every bundle, group by group (what Ray actually reserved)."""
        from ray.util import placement_group_table

        tables = [placement_group_table(g)["bundles_to_node_id"] for g in self.groups]
        return [[table[i] for i in sorted(table)] for table in tables]

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for group in self.groups:
            remove_placement_group(group)


def place(cfg: Config, platform: Platform, timeout_s: float, name: str = "grpo") -> Placement:
    """Validate against the cluster, then reserve one group per planned node: STRICT_PACK pinned to
    its node on accelerators, one PACK group on CPU. Learner bundles first, then engine bundles."""
    import ray
    from ray.util import placement_group, remove_placement_group

    nodes = alive_nodes()
    plan = validate(cfg, platform, [resources for _, resources in nodes])
    slots = plan_nodes(cfg, platform, [resources for _, resources in nodes])
    groups, learner_bundles, engine_bundles = [], {}, {}
    for g, slot in enumerate(slots):
        learner_bundles.update({rank: (g, i) for i, rank in enumerate(slot.learners)})
        if plan.colocated:  # engine i lives in learner i's bundle
            bundles = [plan.learner_bundle] * len(slot.learners)
            engine_bundles.update({e: learner_bundles[e] for e in slot.engines})
        else:
            bundles = [plan.learner_bundle] * len(slot.learners) + [plan.engine_bundle] * len(slot.engines)
            engine_bundles.update({e: (g, len(slot.learners) + i) for i, e in enumerate(slot.engines)})
        if slot.node is None:
            groups.append(placement_group(bundles, strategy="PACK", name=f"{name}-all"))
        else:
            pin = [{NODE_ID_LABEL: nodes[slot.node][0]}] * len(bundles)
            groups.append(placement_group(bundles, strategy="STRICT_PACK", name=f"{name}-node{g}",
                                          bundle_label_selector=pin))
    ready, pending = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if pending:
        for group in groups:
            remove_placement_group(group)
        raise PlacementError(f"placement groups not ready within {timeout_s:.0f} s: the cluster reported "
                             f"enough resources but could not pack them ({len(pending)} of {len(groups)} pending)")
    return Placement(groups, slots, learner_bundles, engine_bundles, plan.learner_gpus, plan.engine_gpus)
