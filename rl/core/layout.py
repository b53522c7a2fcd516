"""How a layout's actors pack into nodes: the placement arithmetic that config validation and
`actors/placement.py` share (rl/core, so the config can check a layout without importing the actors)."""

from __future__ import annotations


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
