"""Run by test_multinode_placement.py in a child process (its own Ray, its own RAY_TMPDIR): a simulated
cluster of 8 nodes x 8 GPUs plus a GPU-less head, the 64-MI210 config (and variants: TP 2, colocated)
placed on it, lightweight actors started in every bundle. Prints one JSON object: where every bundle and
every actor landed."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors.placement import PlacementError, alive_nodes, cluster_nodes, place, sync_group_nodes, validate
from rl.core.config import load_config
from rl.core.platform import get_platform

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "conf" / "medmo_8b_64xmi210.yaml"
# Ray resolves 127.0.0.1 to the host's routable address when dialling; another loopback address is not
# rewritten, and keeps everything on this machine.
HOST = "127.0.0.2"
MI210 = {"accelerator_type:AMD-Instinct-MI210": 1.0}


@ray.remote(num_cpus=0)
def where() -> tuple[str, list[int]]:
    """Stands in for a learner or an engine: its node and the GPUs Ray gave it."""
    return ray.get_runtime_context().get_node_id(), [int(g) for g in ray.get_gpu_ids()]


@ray.remote(num_cpus=0)
class Where:
    def report(self) -> tuple[str, list[int]]:
        return ray.get_runtime_context().get_node_id(), [int(g) for g in ray.get_gpu_ids()]


def in_waves(options: list[dict]) -> list[tuple[str, list[int]]]:
    """Run `where` once under each of `options`, one call per node at a time: every call still lands in
    its bundle, and each node reuses one worker process (64 processes would take minutes on 2 cores)."""
    out: list = [None] * len(options)
    pending = list(range(len(options)))
    while pending:
        wave, seen = [], set()
        for i in pending:
            group = options[i]["scheduling_strategy"].placement_group.id
            if group not in seen:
                seen.add(group)
                wave.append(i)
        for i, found in zip(wave, ray.get([where.options(**options[i]).remote() for i in wave], timeout=120),
                            strict=True):
            out[i] = found
        pending = [i for i in pending if i not in wave]
    return out


def start_cluster(nodes: int, gpus: int) -> Cluster:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "gcs_server_port": port, "node_ip_address": HOST,
        "include_dashboard": False, "dashboard_agent_listen_port": None})
    for _ in range(nodes):
        cluster.add_node(num_cpus=40, num_gpus=gpus, resources=MI210, node_ip_address=HOST, wait=False)
    cluster.wait_for_nodes(timeout=120)
    return cluster


def land(placement, cfg, actors: bool) -> dict:
    tp = cfg.rollout.tensor_parallel_size
    out = {"slots": [[s.node, list(s.learners), list(s.engines)] for s in placement.slots],
           "bundles": placement.bundle_nodes(), "sync": sync_group_nodes(placement.slots, tp)}
    learners = [{"num_cpus": cfg.learner.cpus_per_learner, "num_gpus": 1, **placement.learner_options(r)}
                for r in range(cfg.learner.num_learners)]
    engines = [{"num_cpus": 1, "num_gpus": tp, **placement.engine_options(i)} for i in range(cfg.rollout.num_workers)]
    found = in_waves(learners + engines)
    out["learners"], out["engines"] = found[: len(learners)], found[len(learners):]
    if actors:  # the same options on actors, as LearnerGroup and RolloutPool pass them
        handles = [Where.options(**o).remote() for o in (learners[-1], *engines)]
        out["actors"] = ray.get([h.report.remote() for h in handles], timeout=120)
        for handle in handles:
            ray.kill(handle)
    placement.remove()
    return out


def main() -> None:
    start = time.monotonic()
    cluster = start_cluster(8, 8)
    try:
        ray.init(address=cluster.address, _node_ip_address=HOST, logging_level="ERROR")
        rocm = get_platform("rocm")
        result = {"nodes": [node_id for node_id, _ in alive_nodes()]}
        cfg = load_config(CONFIG)
        result["medmo"] = land(place(cfg, rocm, timeout_s=60), cfg, actors=False)
        # TP 2 on 3 nodes: learners 0-7 | learners 8-11 + engines 0-1 | engines 2-5.
        small = load_config(CONFIG, ["learner.num_learners=12", "rollout.num_workers=6",
                                     "rollout.tensor_parallel_size=2", "cluster.nodes=3",
                                     "grpo.prompts_per_step=12", "learner.micro_batch_size=4"])
        result["tp2"] = land(place(small, rocm, timeout_s=60), small, actors=True)
        # Colocated on 2 nodes: learner i and engine i in one bundle, half a GPU each.
        shared = load_config(CONFIG, ["cluster.colocate=true", "learner.num_learners=16", "rollout.num_workers=16",
                                      "cluster.nodes=2", "grpo.prompts_per_step=32"])
        result["colocated"] = land(place(shared, rocm, timeout_s=60), shared, actors=False)
        try:
            validate(load_config(CONFIG, ["cluster.accelerator_type=AMD-Instinct-MI250X"]), rocm, cluster_nodes())
        except PlacementError as exc:
            result["wrong_type"] = str(exc)
        result["seconds"] = time.monotonic() - start
        print("RESULT " + json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
