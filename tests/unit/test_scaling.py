"""Scale-out without a cluster: the MedMO configs' arithmetic, the node plan, the check of a config
against what Ray reports, and the capacity plan that docs/scaling.md quotes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.placement import PlacementError, plan_nodes, sync_group_nodes, validate
from rl.core.config import ConfigError, load_config
from rl.core.layout import pack_nodes
from rl.core.platform import get_platform
from rl.tools.capacity import HEADER, ModelSpec, rows

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
MEDMO = {8: CONF / "medmo_8b_8xmi210.yaml", 16: CONF / "medmo_8b_16xmi210.yaml", 64: CONF / "medmo_8b_64xmi210.yaml"}
ROCM = get_platform("rocm")


def _mi210_nodes(count: int, gpus: int = 8, kind: str = "AMD-Instinct-MI210") -> list[dict[str, float]]:
    return [{"CPU": 64.0, "GPU": float(gpus), f"accelerator_type:{kind}": 1.0} for _ in range(count)]


@pytest.mark.parametrize("gpus", sorted(MEDMO))
def test_medmo_configs_fill_their_cluster_exactly(gpus):
    cfg = load_config(MEDMO[gpus])
    c, g = cfg.cluster, cfg.grpo
    assert c.nodes * c.gpus_per_node == gpus
    assert cfg.learner.num_learners + cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size == gpus
    assert (c.platform, c.accelerator_type, cfg.model.dtype) == ("rocm", "AMD-Instinct-MI210", "bfloat16")
    # each learner runs whole micro-batches in every mini-batch
    per_learner = g.prompts_per_step * g.group_size // (g.num_mini_batches * cfg.learner.num_learners)
    assert per_learner % cfg.learner.micro_batch_size == 0
    assert g.num_steps * g.prompts_per_step == 300_000  # one pass over the GRPO stage's prompts
    validate(cfg, ROCM, [{"CPU": 16.0}] + _mi210_nodes(c.nodes))  # a GPU-less head (KubeRay) is fine


def test_variants_derive_from_the_64_gpu_config():
    big, small = load_config(MEDMO[64]), load_config(MEDMO[16])
    assert small.model == big.model and small.weight_sync == big.weight_sync
    assert (small.learner.num_learners, small.rollout.num_workers, small.cluster.nodes) == (12, 4, 2)


def test_the_64_gpu_plan_packs_learners_then_engines_node_by_node():
    cfg = load_config(MEDMO[64])
    slots = plan_nodes(cfg, ROCM, _mi210_nodes(8))
    assert [s.node for s in slots] == list(range(8))
    assert [s.learners for s in slots[:6]] == [tuple(range(8 * k, 8 * k + 8)) for k in range(6)]
    assert [s.engines for s in slots[6:]] == [tuple(range(8)), tuple(range(8, 16))]
    assert sync_group_nodes(slots, 1) == [0] + [6] * 8 + [7] * 8


def test_pack_nodes_keeps_tp_groups_whole_and_engine_order_follows_nodes():
    # 5 learners leave 3 GPUs on node 0: one TP-2 engine fits there, the next opens node 1.
    assert pack_nodes(5, 3, 2, 8) == [([0, 1, 2, 3, 4], [0]), ([], [1, 2])]
    assert pack_nodes(0, 4, 4, 8) == [([], [0, 1]), ([], [2, 3])]
    with pytest.raises(ValueError, match="a TP group of 16 does not fit a node of 8"):
        pack_nodes(1, 1, 16, 8)


@pytest.mark.parametrize("overrides, message", [
    (["rollout.tensor_parallel_size=3"],
     "rollout.tensor_parallel_size=3 does not divide cluster.gpus_per_node=8: every engine's TP group"),
    (["rollout.num_workers=17"],
     "learner.num_learners=48 x 1 GPU + rollout.num_workers=17 x rollout.tensor_parallel_size=1 = 65 GPUs need 9 "
     "nodes of cluster.gpus_per_node=8 (learners packed first, each engine inside one node), but cluster.nodes=8"),
    (["cluster.gpus_per_node=null"], "cluster.nodes=8 needs cluster.gpus_per_node as well"),
])
def test_cluster_arithmetic_is_checked_at_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(MEDMO[64], overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("nodes, message", [
    (_mi210_nodes(7), "cluster.nodes=8 x cluster.gpus_per_node=8 GPU of type AMD-Instinct-MI210 expected, "
                      "Ray reports 7 such nodes (per node: 8 AMD-Instinct-MI210, "),
    (_mi210_nodes(7) + _mi210_nodes(1, kind="AMD-Instinct-MI250X"), "Ray reports 7 such nodes (per node: "),
    (_mi210_nodes(8, gpus=4) * 2, "Ray reports 0 such nodes (per node: 4 AMD-Instinct-MI210"),
])
def test_a_cluster_that_does_not_match_is_named_before_any_actor(nodes, message):
    with pytest.raises(PlacementError, match="the cluster cannot hold this layout") as err:
        validate(load_config(MEDMO[64]), ROCM, nodes)
    assert message in str(err.value)


def test_without_a_declared_shape_the_plan_uses_what_ray_has():
    cfg = load_config(overrides=["learner.num_learners=4", "learner.micro_batch_size=2", "rollout.num_workers=2",
                                 "rollout.tensor_parallel_size=2"])
    slots = plan_nodes(cfg, get_platform("cuda"), [{"CPU": 8.0}, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}])
    assert [(s.node, s.learners, s.engines) for s in slots] == [(1, (0, 1, 2, 3), ()), (2, (), (0, 1))]
    (cpu,) = plan_nodes(cfg, get_platform("cpu"), [{"CPU": 8.0}])
    assert (cpu.node, cpu.learners, cpu.engines) == (None, (0, 1, 2, 3), (0, 1))


def test_base_chains_are_followed_and_loops_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ngrpo: {group_size: 4}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base: a.yaml loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="base: missing.yaml: file not found"):
        load_config(tmp_path / "c.yaml")


def test_qwen3_vl_8b_parameter_count():
    m = ModelSpec()
    assert round(m.llm_params / 1e9, 2) == 8.19  # Qwen3-8B's published size
    assert round(m.params / 1e9, 2) == 8.76
    assert m.kv_bytes_per_token() == 147_456  # 2 x 36 layers x 8 KV heads x 128 x 2 B


def test_the_scaling_doc_quotes_the_capacity_plan():
    doc = (REPO / "docs" / "scaling.md").read_text()
    commands = re.findall(r"^\s+python -m rl\.tools\.capacity (.+)$", doc, re.M)
    assert len(commands) == 4  # the MedMO summary and the recipes (8B on two cards, 2B)
    for command in commands:
        flags = dict(re.findall(r"--(model|gpu) (\S+)", command))
        configs = re.sub(r"--(model|gpu) \S+", "", command).split()
        table = "\n".join([HEADER, *rows(configs, **flags)])
        assert table in doc, table
