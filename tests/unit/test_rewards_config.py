"""RewardConfig: defaults, validation with clear messages, strict from_dict, embedding in pydantic."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from rewards import RewardConfig
from rewards.config import COMPONENTS


def test_defaults() -> None:
    config = RewardConfig()
    assert config.weights() == {
        "label_accuracy": 1.0,
        "giou": 1.0,
        "tag_count": 0.5,
        "overlap_penalty": 1.0,
        "overlong_penalty": 0.0,
    }
    assert (config.overlap_threshold, config.max_boxes) == (0.5, 100)
    assert config.overlong_max_tokens is None and config.overlong_buffer is None and config.extra == {}
    assert set(COMPONENTS) <= {f.name for f in dataclasses.fields(RewardConfig)}


def test_is_a_plain_frozen_dataclass() -> None:
    config = RewardConfig(giou=2.0)
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.giou = 3.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config  # noqa: S301 - our own bytes; Ray pickles configs
    assert RewardConfig.from_dict(dataclasses.asdict(config)) == config


def test_from_dict_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(ValueError, match="unknown rewards key.*giuo.*lable_accuracy"):
        RewardConfig.from_dict({"giuo": 1.0, "lable_accuracy": 1.0, "tag_count": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"giou": float("nan")}, "rewards.giou must be a finite number"),
        ({"tag_count": "0.5"}, "rewards.tag_count must be a finite number"),
        ({"label_accuracy": True}, "rewards.label_accuracy must be a finite number"),
        ({"overlap_threshold": 1.0}, "overlap_threshold must be in"),
        ({"overlap_threshold": -0.1}, "overlap_threshold must be in"),
        ({"max_boxes": 0}, "max_boxes"),
        ({"max_boxes": 2.5}, "max_boxes"),
        ({"overlong_max_tokens": 0}, "overlong_max_tokens"),
        ({"overlong_buffer": -1}, "overlong_buffer"),
        ({"overlong_max_tokens": 10, "overlong_buffer": 11}, "must not exceed"),
        ({"extra": {"tests.unit.rewards_extra:length_bonus": float("inf")}}, "finite"),
    ],
)
def test_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon_here", "must look like 'package.module:function'"),
        (":function", "must look like"),
        ("tests.unit.no_such_module:fn", "cannot import module 'tests.unit.no_such_module'"),
        ("tests.unit.rewards_extra:missing", "has no attribute 'missing'"),
        ("tests.unit.rewards_extra:NOT_CALLABLE", "is not callable"),
    ],
)
def test_extra_paths_are_checked_at_config_time(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        RewardConfig(extra={path: 1.0})
    assert path in str(info.value)


def test_extra_registration() -> None:
    config = RewardConfig.from_dict({"extra": {"tests.unit.rewards_extra:length_bonus": 0.25}})
    assert config.weights()["tests.unit.rewards_extra:length_bonus"] == 0.25


def test_embeds_in_a_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Tree(pydantic.BaseModel):
        rewards: RewardConfig = pydantic.Field(default_factory=RewardConfig)

    assert Tree().rewards == RewardConfig()
    tree = Tree(rewards=RewardConfig(giou=2.0))
    assert tree.rewards.giou == 2.0
    assert Tree.model_validate({"rewards": {"giou": 3.0}}).rewards.giou == 3.0
