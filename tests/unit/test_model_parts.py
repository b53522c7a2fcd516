"""rl/core/model_parts.py: which weights are the vision encoder (frozen by `sft.freeze_vision` and
`learner.freeze_vision`), and the optimizer's groups (trainable weights only), also on ZeRO-3 partitions."""

from __future__ import annotations

import pytest
import torch

from rl.core.config import ConfigError
from rl.core.model_parts import freeze_vision_encoder, is_vision_encoder, numel, optimizer_groups, shape
from rl.core.platform import get_platform
from rl.sft import load_model


@pytest.fixture
def tiny_model(tiny_config, tiny_model_dir):
    """The tiny Qwen3-VL as SFT loads it without DeepSpeed (fp32 on CPU)."""
    model = load_model(tiny_config.model, get_platform("cpu"), deepspeed=False)
    assert next(model.parameters()).dtype == torch.float32
    return model


def test_vision_encoder_freezes_but_the_merger_and_language_model_train(tiny_model):
    named = dict(tiny_model.named_parameters())
    encoder = {n for n in named if is_vision_encoder(n)}
    frozen = freeze_vision_encoder(tiny_model, "learner.freeze_vision")
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert frozen == sum(named[n].numel() for n in encoder) > 0
    assert trainable == set(named) - encoder  # everything else still trains
    assert any(n.startswith("model.visual.patch_embed") for n in encoder)
    assert any("visual.merger" in n for n in trainable) and any("language_model" in n for n in trainable)
    assert not any("merger" in n for n in encoder) and all(".visual." in f".{n}" for n in encoder)


def test_optimizer_groups_hold_trainable_weights_only_decaying_matrices(tiny_model):
    freeze_vision_encoder(tiny_model, "sft.freeze_vision")
    decay, rest = optimizer_groups(tiny_model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    held = {id(p) for g in (decay, rest) for p in g["params"]}
    assert held == {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in rest["params"])
    assert decay["params"] and rest["params"]


def test_zero3_partitioned_parameters_count_at_full_size():
    # Under zero.Init a parameter's local data is empty and 1-D; ds_numel / ds_shape give the real size.
    model = torch.nn.Module()
    model.visual = torch.nn.Module()
    model.visual.patch_embed = torch.nn.Linear(4, 3)
    model.visual.merger = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.ds_numel, p.ds_shape = p.numel(), p.shape
        p.data = torch.empty(0)
    assert freeze_vision_encoder(model, "learner.freeze_vision") == 4 * 3 + 3
    assert [numel(p) for p in model.parameters()] == [12, 3, 6, 2]
    assert shape(model.visual.merger.weight) == (2, 3)
    decay, rest = optimizer_groups(model, 0.1)
    assert decay["params"] == [model.visual.merger.weight] and rest["params"] == [model.visual.merger.bias]


@pytest.mark.parametrize("key", ["learner.freeze_vision", "sft.freeze_vision"])
def test_a_model_without_a_vision_tower_names_the_key_that_asked(key):
    with pytest.raises(ConfigError, match=rf"^{key}: this model has no parameters under a 'visual' module.*"
                                          rf"set {key}=false"):
        freeze_vision_encoder(torch.nn.Linear(2, 2), key)
