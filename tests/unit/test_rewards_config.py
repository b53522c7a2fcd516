"""RewardConfig: defaults, validation with clear messages, strict from_dict, embedding in pydantic."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest

from actors.reward import RewardService
from rewards import RewardConfig, score_batch
from rewards.config import COMPONENTS, resolve_extra


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


STDLIB = "is Python's standard library, not a reward module"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon_here", "must look like 'package.module:function'"),
        (":function", "must look like"),
        ("tests.unit.rewards_extra:", "must look like"),
        ("tests/unit/rewards_extra:length_bonus", "must look like"),
        ("tests.unit.rewards_extra:length_bonus()", "must look like"),
        ("tests..unit:fn", "must look like"),
        ("tests.unit.no_such_module:fn", "no module 'tests.unit.no_such_module' on the import path"),
        ("tests.unit.rewards_extra.deeper:fn", "no module 'tests.unit.rewards_extra.deeper'"),
        ("no_such_package_anywhere:fn", "no module 'no_such_package_anywhere'"),
        ("os:system", f"'os' {STDLIB}"),
        ("os.path:join", f"'os' {STDLIB}"),
        ("subprocess:run", STDLIB),
        ("builtins:exec", STDLIB),
        ("sys:exit", STDLIB),
        ("posix:system", STDLIB),
        ("pickle:loads", STDLIB),
    ],
)
def test_extra_paths_are_checked_at_config_time(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        RewardConfig(extra={path: 1.0})
    assert f"rewards.extra key {path!r}" in str(info.value) or f"rewards.extra {path!r}" in str(info.value)


def test_validation_imports_nothing_and_the_scorer_imports_the_reward(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "canary_rewards"
    package.mkdir()
    imported = tmp_path / "imported"
    for init in (package / "__init__.py", package / "scores.py"):  # both would leave a mark when run
        init.write_text(f"open({str(imported)!r}, 'a').write({init.name!r} + ' ')\n")
    with (package / "scores.py").open("a") as f:
        f.write("def short(completion, reference):\n    return float(len(completion) < 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = RewardConfig(extra={"canary_rewards.scores:short": 2.0})
    assert not imported.exists()  # validation found the module without running it or its package
    assert score_batch(["ab", "abcd"], ["r", "r"], config)["canary_rewards.scores:short"].tolist() == [1.0, 0.0]
    assert imported.read_text() == "__init__.py scores.py "


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.unit.rewards_extra:missing", "has no attribute 'missing'"),
        ("tests.unit.rewards_extra:NOT_CALLABLE", "is not callable"),
        ("tests.unit.rewards_extra:os.system", "is defined in module 'posix', outside package 'tests'"),
        ("tests.unit.rewards_extra:OS_SYSTEM", "is defined in module 'posix', outside package 'tests'"),
        ("tests.unit.rewards_extra:reexported_join", "is defined in module None, outside package 'tests'"),
        ("tests.unit.rewards_extra:one_argument", "must be callable as function(completion, reference) -> float: "
                                                  "too many positional arguments"),
        ("tests.unit.rewards_extra:keyword_reference", "must be callable as function(completion, reference)"),
    ],
)
def test_the_imported_object_must_be_a_reward_of_the_named_package(path: str, message: str) -> None:
    config = RewardConfig(extra={path: 1.0})  # the name passes: only the import shows what it is
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        resolve_extra(path)
    assert path in str(info.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        RewardService("reward-0", config)  # a reward actor refuses it at its start, before any scoring


def test_legit_extra_rewards_load() -> None:
    for path in ("tests.unit.rewards_extra:length_bonus", "tests.integration.extra_rewards:response_length"):
        assert callable(resolve_extra(path))
    service = RewardService("reward-0", RewardConfig(extra={"tests.unit.rewards_extra:length_bonus": 1.0}))
    assert service.score(["abcd"], ["r"])["tests.unit.rewards_extra:length_bonus"].tolist() == [0.4]


def test_launch_refuses_a_stdlib_extra_reward_even_for_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    from rl.launch import main

    assert main(["--print-config", 'rewards.extra={"os:system": 1.0}']) == 2
    err = capsys.readouterr().err
    assert "rewards.extra 'os:system': 'os' is Python's standard library, not a reward module" in err


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
