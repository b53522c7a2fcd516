"""The shipped configs, and the real-model recipes on paper: each loads and prints, its layout fits the
cluster it declares, and the capacity model's memory per GPU fits the GPU it is written for. No engines:
what a GPU would measure is docs/scaling.md's list of things not yet run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actors.placement import PlacementError, layout, plan_nodes, validate
from rl.core.config import ConfigError, load_config
from rl.core.platform import get_platform
from rl.launch import main as launch_main
from rl.tools.capacity import GPUS, MODELS, learner_memory, memory_problems, sft_memory
from rl.tools.capacity import main as capacity_main

CONF = Path(__file__).resolve().parents[2] / "conf"
SHIPPED = sorted(CONF.glob("*.yaml"))
EIGHT_B, TWO_B = CONF / "qwen3vl_8b_8gpu.yaml", CONF / "qwen3vl_2b_1gpu.yaml"
# recipe -> (model, the GPUs whose memory it must fit, the platforms it runs on)
RECIPES = {EIGHT_B: ("qwen3vl-8b", ["mi210", "h100"], ["cuda", "rocm"]),
           TWO_B: ("qwen3vl-2b", ["h100"], ["cuda", "rocm"])}


def _node(gpus: int) -> dict[str, float]:
    return {"CPU": 64.0, "GPU": float(gpus)}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_prints_a_config_that_loads_back(path, tmp_path, capsys):
    assert launch_main(["--config", str(path), "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == load_config(path)


def test_the_recipes_are_among_the_shipped_configs():
    assert set(RECIPES) <= set(SHIPPED)


@pytest.mark.parametrize("path", sorted(RECIPES), ids=lambda p: p.name)
def test_recipes_train_a_real_checkpoint_in_bf16_with_zero3(path):
    cfg = load_config(path)
    assert cfg.pipeline == ["sft", "grpo"]
    assert cfg.model.tiny is None and cfg.data.synthetic is None
    assert cfg.model.path.startswith("/path/to/") and cfg.data.path.startswith("/path/to/")  # the user sets them
    assert cfg.model.dtype == "bfloat16" and cfg.learner.zero_stage == 3 and cfg.learner.gradient_checkpointing
    assert cfg.sft.freeze_vision and cfg.learner.freeze_vision  # pretrained towers stay fixed
    assert (cfg.model.max_pixels, cfg.model.max_model_len) == (1280 * 32 * 32, 2048)
    # the longest prompt (every visual token + ~100 text tokens) plus the longest answer fit the context
    assert 1280 + 100 + cfg.rollout.max_tokens <= cfg.model.max_model_len
    assert (cfg.sft.lr, cfg.learner.lr) in {(1e-5, 1e-6), (2e-5, 1e-6)}  # SFT 10-20x the GRPO lr
    assert cfg.sft.num_processes == cfg.cluster.nodes * cfg.cluster.gpus_per_node  # SFT uses the whole node


@pytest.mark.parametrize("path", sorted(RECIPES), ids=lambda p: p.name)
def test_recipe_layouts_fit_their_declared_node_on_cuda_and_rocm(path):
    cfg = load_config(path)
    gpus = cfg.cluster.gpus_per_node
    assert cfg.cluster.nodes == 1 and cfg.cluster.platform == "auto" and cfg.layout.gpus_needed() == gpus
    for platform in RECIPES[path][2]:
        validate(cfg, get_platform(platform), [_node(gpus)])
        with pytest.raises(PlacementError, match="the cluster cannot hold this layout"):
            validate(cfg, get_platform(platform), [_node(gpus - 1)] if gpus > 1 else [{"CPU": 64.0}])


def test_the_8b_recipe_puts_six_learners_and_two_engines_on_one_node():
    (slot,) = plan_nodes(load_config(EIGHT_B), get_platform("cuda"), [_node(8)])
    assert (slot.learners, slot.engines) == (tuple(range(6)), (0, 1))


def test_the_2b_recipe_shares_one_gpu_between_learner_and_engine():
    cfg = load_config(TWO_B)
    (slot,) = plan_nodes(cfg, get_platform("cuda"), [_node(1)])
    assert (slot.learners, slot.engines) == ((0,), (0,))
    plan = layout(cfg, get_platform("cuda"))
    assert plan.total() == {"CPU": 4 + 1 + 2, "GPU": 1.0}  # learner + engine CPUs, reward actors; one GPU
    assert (plan.learner_gpus, plan.engine_gpus, plan.colocated) == (0.5, 0.5, True)
    assert cfg.weight_sync.transport == "shared_memory"


@pytest.mark.parametrize("path", sorted(RECIPES), ids=lambda p: p.name)
def test_recipe_memory_fits_every_gpu_it_is_written_for(path):
    model, gpus, _ = RECIPES[path]
    cfg, m = load_config(path), MODELS[model]
    for gpu in gpus:
        assert memory_problems(cfg, m, GPUS[gpu]) == [], gpu
        assert capacity_main(["--model", model, "--gpu", gpu, str(path)]) == 0


def test_the_2b_recipe_needs_an_80_gb_gpu(capsys):
    # learner 44.5 GB + the engine's 0.35 x 64 = 22.4 GB: more than a 64 GB card holds
    cfg, m = load_config(TWO_B), MODELS["qwen3vl-2b"]
    learner = learner_memory(cfg, m, GPUS["mi210"])["total"]
    assert 44 < learner < 45
    assert capacity_main(["--model", "qwen3vl-2b", "--gpu", "mi210", str(TWO_B)]) == 1
    assert ("does not fit: qwen3vl_2b_1gpu: grpo learner: 44.5 GB per GPU > 41.6 GB (what "
            "rollout.gpu_memory_utilization leaves of 64 GB)") in capsys.readouterr().out


def test_sft_memory_counts_the_whole_micro_batch_of_logits():
    cfg, m, hw = load_config(EIGHT_B), MODELS["qwen3vl-8b"], GPUS["mi210"]
    sft = sft_memory(cfg, m, hw)
    assert sft["logits"] == pytest.approx(4 * 2048 * 151_936 * 10 / 1e9)
    assert sft["optimizer"] == pytest.approx(12 * m.params / 8 / 1e9)  # sharded over the 8 SFT processes
    bigger = load_config(EIGHT_B, ["sft.micro_batch_size=16"])
    assert memory_problems(bigger, m, hw) == ["sft: 95.8 GB per GPU > 64 GB"]


def test_qwen3_vl_2b_parameter_count():
    m = MODELS["qwen3vl-2b"]
    assert round(m.llm_params / 1e9, 2) == 1.72  # Qwen3-1.7B, embeddings tied
    assert round(m.params / 1e9, 2) == 2.12
    assert m.kv_bytes_per_token() == 114_688  # 2 x 28 layers x 8 KV heads x 128 x 2 B


@pytest.mark.parametrize("overrides, message", [
    (["rollout.tensor_parallel_size=2"], "cluster.colocate pairs each rollout engine with one learner on its GPU: "
                                         "it needs rollout.tensor_parallel_size=1 (got 2)"),
    (["rollout.num_workers=2"], "rollout.num_workers = learner.num_learners (got 2 and 1)"),
    (["cluster.gpus_per_node=1", "learner.num_learners=2", "rollout.num_workers=2", "learner.micro_batch_size=2"],
     "learner.num_learners=2 x 1 GPU + rollout.num_workers=2 sharing the learners' GPUs (cluster.colocate) = 2 GPUs "
     "need 2 nodes of cluster.gpus_per_node=1"),
])
def test_colocation_is_checked_at_load(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TWO_B, overrides)
    assert message in str(err.value)


def test_colocated_nodes_hold_each_engine_beside_its_learner():
    cfg = load_config(TWO_B, ["cluster.nodes=2", "cluster.gpus_per_node=2", "learner.num_learners=3",
                              "rollout.num_workers=3", "grpo.prompts_per_step=24"])
    assert cfg.layout.node_plan(2) == [([0, 1], [0, 1]), ([2], [2])]
    assert cfg.layout.gpus_needed() == 3


def test_a_colocated_config_on_cpu_keeps_one_process_per_bundle():
    plan = layout(load_config(TWO_B), get_platform("cpu"))
    assert (plan.learner_bundle, plan.engine_bundle, plan.colocated) == ({"CPU": 4.0}, {"CPU": 1.0}, False)


def test_recipe_files_name_what_the_user_must_replace():
    for path in RECIPES:
        head = path.read_text().split("\npipeline:")[0]
        assert "model.path" in head and "data.path" in head and "on paper" in head, path.name
        assert yaml.safe_load(path.read_text())["model"]["tiny"] is None
