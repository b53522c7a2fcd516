"""Multi-node placement without GPUs: a ray.cluster_utils.Cluster of 8 simulated nodes x 8 GPUs (plus
a GPU-less head, as under KubeRay), the 64-MI210 config placed on it, a call in every bundle. Runs in a
child process with its own RAY_TMPDIR: its cluster never meets the session's Ray or another user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def landed() -> dict:
    with tempfile.TemporaryDirectory(prefix="gg-ray-", dir="/tmp") as tmp:  # short: Ray's socket paths
        env = {**os.environ, "RAY_TMPDIR": tmp}
        env.pop("RAY_ADDRESS", None)
        run = subprocess.run([sys.executable, "-m", "tests.integration.placement_probe"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow
def test_64_mi210_learners_fill_nodes_in_rank_order_and_engines_the_rest(landed):
    nodes, medmo = landed["nodes"], landed["medmo"]
    head, workers = nodes[0], nodes[1:]
    # learner rank r on worker node r // 8, each on its own GPU; engine e on node 6 + e // 8.
    for rank, (node, gpus) in enumerate(medmo["learners"]):
        assert node == workers[rank // 8] and len(gpus) == 1
    for engine, (node, gpus) in enumerate(medmo["engines"]):
        assert node == workers[6 + engine // 8] and len(gpus) == 1
    for k, worker in enumerate(workers):  # all 8 GPUs of every node used once
        used = sorted(g for node, gpus in medmo["learners"] + medmo["engines"] if node == worker for g in gpus)
        assert used == list(range(8)), k
    assert head not in {node for node, _ in medmo["learners"] + medmo["engines"]}
    # what Ray reserved: bundle i of group k on worker k
    assert medmo["bundles"] == [[w] * 8 for w in workers]
    # weight-sync ranks (sender, then engines) in node order: the ring leaves each node once
    assert medmo["sync"] == [1] + [7] * 8 + [8] * 8


@pytest.mark.slow
def test_tp2_groups_stay_inside_a_node_next_to_the_last_learners(landed):
    workers, tp2 = landed["nodes"][1:], landed["tp2"]
    assert tp2["slots"] == [[1, list(range(8)), []], [2, [8, 9, 10, 11], [0, 1]], [3, [], [2, 3, 4, 5]]]
    engine_nodes = [node for node, _ in tp2["engines"]]
    assert engine_nodes == [workers[1]] * 2 + [workers[2]] * 4
    assert all(len(gpus) == 2 for _, gpus in tp2["engines"])
    assert sorted(g for node, gpus in tp2["learners"] + tp2["engines"] if node == workers[1] for g in gpus) == list(
        range(8))
    # actors with the same options land where the calls did
    assert tp2["actors"] == [tp2["learners"][-1], *tp2["engines"]]
    assert tp2["sync"] == [1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]


@pytest.mark.slow
def test_a_cluster_of_the_wrong_gpu_is_refused_before_any_actor(landed):
    assert landed["wrong_type"].startswith(
        "the cluster cannot hold this layout: cluster.nodes=8 x cluster.gpus_per_node=8 GPU of type "
        "AMD-Instinct-MI250X expected, Ray reports 0 such nodes (per node: 0, 8 AMD-Instinct-MI210, ")


@pytest.mark.slow
def test_colocated_engines_share_their_learners_gpu(landed):
    workers, shared = landed["nodes"][1:], landed["colocated"]
    assert shared["slots"] == [[1, list(range(8)), list(range(8))], [2, list(range(8, 16)), list(range(8, 16))]]
    assert shared["engines"] == shared["learners"]  # engine i: learner i's node and GPU
    for k, worker in enumerate(workers[:2]):  # each node's 8 GPUs hold one learner each
        assert sorted(g for node, gpus in shared["learners"] if node == worker for g in gpus) == list(range(8)), k
    assert shared["bundles"] == [[workers[0]] * 8, [workers[1]] * 8]
