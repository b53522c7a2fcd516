"""The config tree: YAML mirrors the schema, overrides apply, and every bad input names its key path."""

from __future__ import annotations

import pytest
import yaml

from rl.core.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from rl.launch import main


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, dict) and key != "extra":
            out |= _keys(value, path + ".")
    return out


def test_default_yaml_mirrors_the_schema_key_for_key():
    assert _keys(yaml.safe_load(DEFAULT_CONFIG.read_text())) == _keys(Config().to_dict())


def test_default_yaml_equals_schema_defaults():
    assert load_config() == Config()


def test_overrides_are_typed_and_applied():
    cfg = load_config(overrides=["grpo.group_size=4", "rollout.temperature=0.7", "rewards.giou=2",
                                 "cluster.address=null", "rollout.stop=[foo,bar]"])
    assert cfg.grpo.group_size == 4
    assert cfg.rollout.temperature == 0.7
    assert cfg.rewards.giou == 2.0
    assert cfg.cluster.address is None
    assert cfg.rollout.stop == ["foo", "bar"]


@pytest.mark.parametrize("override, expected", [
    ("grpo.no_such_key=1", "grpo.no_such_key: unknown key (expected one of: num_steps,"),
    ("model.tiny.hidden=3", "model.tiny.hidden: unknown key (expected one of: seed, hidden_size,"),
    ("nonsense=1", "nonsense: unknown key (expected one of: pipeline, seed, model,"),
    ("rewards.giuo=1", "rewards.giuo: unknown key (expected one of: extra, giou,"),
    ("grpo.group_size=abc", "grpo.group_size: Input should be a valid integer"),
    ("grpo.group_size=1", "grpo.group_size: Input should be greater than or equal to 2"),
    ("grpo.loss_agg=mean", "grpo.loss_agg: Input should be 'token_mean', 'seq_mean_token_mean' or"),
    ("rewards.overlap_threshold=1.5", "rewards.overlap_threshold must be in [0, 1), got 1.5"),
    ("data.on_error=ignore", "data.on_error: Input should be 'raise' or 'skip'"),
    ("pipeline=[preview,train]", "pipeline.1: Input should be 'preview'"),
])
def test_bad_keys_and_types_name_the_full_path(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)


def test_divisibility_is_checked_at_load_time():
    # 8 prompts x 8 samples = 64 sequences; 2 learners x micro-batch 5 = 10 does not divide 64.
    with pytest.raises(ConfigError, match=r"64 sequences per step is not divisible by .* = 10"):
        load_config(overrides=["learner.num_learners=2", "learner.micro_batch_size=5"])


def test_off_policy_needs_importance_weights():
    with pytest.raises(ConfigError, match=r"grpo.off_policy_lag=1 needs grpo.tis_cap"):
        load_config(overrides=["grpo.off_policy_lag=1", "grpo.tis_cap=null"])
    assert load_config(overrides=["grpo.off_policy_lag=1"]).grpo.off_policy_lag == 1


@pytest.mark.parametrize("override", ["rollout.top_p=0.9", "rollout.top_k=20"])
def test_truncated_sampling_is_refused_naming_the_key(override):
    # The learner's log-probs are the full (biased, tempered) softmax's: truncation would bias TIS.
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: truncated sampling is not supported .* would bias the "
                                          rf"importance weights"):
        load_config(overrides=[override])
    assert load_config(overrides=["rollout.top_k=0", "rollout.top_p=1.0"]).rollout.top_k == 0


def test_pixel_limits_are_ordered():
    with pytest.raises(ConfigError, match=r"model: min_pixels \(20000\) > max_pixels \(16384\)"):
        load_config(overrides=["model.min_pixels=20000"])
    with pytest.raises(ConfigError, match=r"data.synthetic: min_objects \(4\) > max_objects \(3\)"):
        load_config(overrides=["data.synthetic.min_objects=4"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_print_config_round_trips(tmp_path, capsys):
    assert main(["--print-config", "grpo.group_size=4", "rewards.extra={}"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == load_config(overrides=["grpo.group_size=4"])


def test_launch_help_names_the_stages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "python -m rl.launch" in out and "--print-config" in out and "preview" in out


def test_launch_rejects_bad_config_before_doing_anything(capsys, monkeypatch):
    monkeypatch.setattr("rl.launch.prepare", lambda cfg, stages: pytest.fail("prepare ran on a bad config"))
    assert main(["grpo.no_such_key=1"]) == 2
    assert "grpo.no_such_key: unknown key" in capsys.readouterr().err


def test_launch_rejects_malformed_override(capsys):
    assert main(["grpo.group_size"]) == 2
    assert "key.path=value" in capsys.readouterr().err
