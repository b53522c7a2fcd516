"""How a layout's actors pack into nodes: the placement arithmetic that config validation and
`actors/placement.py` share (rl/core, so the config can check a layout without importing the actors)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """The actors a config starts (`Config.layout`): `learners` (one accelerator each), `engines` of `tp`
    accelerators each, or with `colocate` engine i on learner i's accelerator."""

    learners: int
    engines: int
    tp: int
    colocate: bool

    def gpus_needed(self) -> int:
        """Accelerators the layout takes: one per learner, plus TP per engine unless they share (colocate)."""
        return self.learners + (0 if self.colocate else self.engines * self.tp)

    def node_plan(self, per_node: int) -> list[tuple[list[int], list[int]]]:
        """`pack_nodes` for this layout: colocated engines sit on their learner's node (engine i with rank i)."""
        if not self.colocate:
            return pack_nodes(self.learners, self.engines, self.tp, per_node)
        return [(ranks, list(ranks)) for ranks, _ in pack_nodes(self.learners, 0, 1, per_node)]

    def check(self, nodes: int | None, gpus_per_node: int | None) -> None:
        """ValueError naming the config keys when the layout cannot run: colocation needs one engine of TP 1
        per learner; learners and engines must tile `nodes` nodes of `gpus_per_node` (`cluster.*`), e.g. 48
        learners x 1 GPU fill nodes 0-5 and 16 engines x TP 1 fill nodes 6-7 = 8 nodes x 8 GPUs."""
        if self.colocate and (self.tp != 1 or self.engines != self.learners):
            raise ValueError(
                f"cluster.colocate pairs each rollout engine with one learner on its GPU: it needs "
                f"rollout.tensor_parallel_size=1 (got {self.tp}) and rollout.num_workers = "
                f"learner.num_learners (got {self.engines} and {self.learners})")
        if gpus_per_node is None:
            if nodes is not None:
                raise ValueError(f"cluster.nodes={nodes} needs cluster.gpus_per_node as well")
            return
        if gpus_per_node % self.tp:
            raise ValueError(f"rollout.tensor_parallel_size={self.tp} does not divide cluster.gpus_per_node="
                             f"{gpus_per_node}: every engine's TP group must sit inside one node")
        used = len(self.node_plan(gpus_per_node))
        if nodes is not None and used > nodes:
            engines = "sharing the learners' GPUs (cluster.colocate)" if self.colocate else (
                f"x rollout.tensor_parallel_size={self.tp}")
            raise ValueError(
                f"learner.num_learners={self.learners} x 1 GPU + rollout.num_workers={self.engines} {engines} = "
                f"{self.gpus_needed()} GPUs need {used} nodes of cluster.gpus_per_node={gpus_per_node} (learners "
                f"packed first, each engine inside one node), but cluster.nodes={nodes}")


def pack_nodes(learners: int, engines: int, tp: int, per_node: int) -> list[tuple[list[int], list[int]]]:
    """(learner ranks, engine indices) per node. Learners fill nodes in rank order (rank r on node
    r // per_node): the learners' collective ranks are ordered by node, so ring neighbours share a node
    wherever they can. Engines then take the free accelerators first-fit, each engine's TP group whole on
    one node; engine indices therefore rise with the node, which keeps the weight-sync group (sender =
    learner rank 0, then every engine in index order) node-contiguous."""
    if tp > per_node:
        raise ValueError(f"a TP group of {tp} does not fit a node of {per_node}")
    nodes: list[tuple[list[int], list[int]]] = [(list(range(r, min(r + per_node, learners))), [])
                                                for r in range(0, learners, per_node)]
    free = [per_node - len(ranks) for ranks, _ in nodes]
    for engine in range(engines):
        k = next((k for k, f in enumerate(free) if f >= tp), len(nodes))
        if k == len(nodes):
            nodes.append(([], []))
            free.append(per_node)
        nodes[k][1].append(engine)
        free[k] -= tp
    return nodes
