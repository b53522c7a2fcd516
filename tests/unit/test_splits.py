"""Splits by name and the held-out rows from the config: any file stem in the data folder, checked at start-up,
and nothing about the data fixed in the trainer or SFT. No engine is started here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rl.core.config import ConfigError, load_config
from rl.core.data import DatasetError
from rl.core.synthetic import generate_synthetic
from rl.launch import prepare
from rl.sft import run_fingerprint
from rl.sft_data import sft_split_path
from rl.tools.sweep_spec import SweepSpec
from rl.trainer import grpo_rows


def renamed_dataset(root: Path) -> Path:
    """A dataset whose splits are mytrain (3 rows), holdout (5 rows) and an empty test: no train.jsonl, no val.jsonl."""
    generate_synthetic(root, num_train=3, num_val=5, num_test=0, image_size=32, max_objects=1)
    os.rename(root / "train.jsonl", root / "mytrain.jsonl")
    os.rename(root / "val.jsonl", root / "holdout.jsonl")
    return root


def _config(data: Path, *overrides: str, model: Path | None = None):
    model_keys = [f"model.path={model}"] if model else []
    return load_config(overrides=[*model_keys, f"data.path={data}", "data.synthetic=null", "data.split=mytrain",
                                  "data.val_split=holdout", *overrides])


@pytest.mark.parametrize("key", ["data.split", "data.val_split"])
@pytest.mark.parametrize(("name", "why"), [
    ("../secrets", "no path separators"), ("a/b", "no path separators"), ("a\\b", "no path separators"),
    (".hidden", "a split is a file stem"), ("'a b'", "a split is a file stem"), ("''", "a split is a file stem"),
    ("val.jsonl", "name the split without .jsonl"),
])
def test_a_split_must_be_a_plain_file_stem(key, name, why):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{key}={name}"])
    assert str(err.value).startswith(f"invalid config:\n  {key}: ") and why in str(err.value)


def test_any_stem_is_a_split_and_the_held_out_rows_and_seed_are_keys():
    cfg = load_config(overrides=["data.split=test_external", "data.val_split=val-2024.v1", "grpo.eval_rows=0",
                                 "grpo.eval_seed=7"])
    assert (cfg.data.split, cfg.data.val_split, cfg.grpo.eval_rows, cfg.grpo.eval_seed) == (
        "test_external", "val-2024.v1", 0, 7)
    with pytest.raises(ConfigError, match=r"grpo.eval_rows: Input should be greater than or equal to 0"):
        load_config(overrides=["grpo.eval_rows=-1"])
    spec = SweepSpec.model_validate({"name": "s", "variants": {"a": []}, "evaluation": {"split": "test_external"}})
    assert spec.evaluation.split == "test_external"
    with pytest.raises(ValueError, match="evaluation.split"):
        SweepSpec.model_validate({"name": "s", "variants": {"a": []}, "evaluation": {"split": "../x"}})


def test_grpo_trains_on_data_split_and_holds_out_the_first_eval_rows_of_val_split(tmp_path):
    data = renamed_dataset(tmp_path / "data")
    train, held_out = grpo_rows(_config(data, "grpo.eval_rows=2"))
    assert [(r.source.name, r.line) for r in train] == [("mytrain.jsonl", i) for i in (1, 2, 3)]
    assert [(r.source.name, r.line) for r in held_out] == [("holdout.jsonl", 1), ("holdout.jsonl", 2)]
    assert len(grpo_rows(_config(data, "grpo.eval_rows=64"))[1]) == 5  # fewer rows than asked: all of them
    # eval_rows=0: no held-out metrics, and the val split is not read at all.
    assert grpo_rows(_config(data, "grpo.eval_rows=0", "data.val_split=absent"))[1] == []
    with pytest.raises(DatasetError, match=r"absent.jsonl: dataset split not found \(data.val_split=absent; the "
                                           r"folder holds holdout, mytrain, test\)"):
        grpo_rows(_config(data, "data.val_split=absent"))


def test_sft_reads_the_configured_splits_from_its_folder(tmp_path):
    data = renamed_dataset(tmp_path / "data")
    cfg = _config(tmp_path / "elsewhere", f"sft.data_path={data}")
    assert sft_split_path(cfg, "train") == data / "mytrain.jsonl"
    assert sft_split_path(cfg, "val") == data / "holdout.jsonl"
    with pytest.raises(DatasetError, match=r"train.jsonl: dataset split not found \(data.split=train;"):
        sft_split_path(_config(data, "data.split=train"), "train")
    (data / "other.jsonl").write_text((data / "mytrain.jsonl").read_text())
    # A resumed run continues only on the same training file.
    assert run_fingerprint(cfg) != run_fingerprint(_config(data, "data.split=other"))


def test_start_up_stops_on_a_split_file_that_a_stage_would_read(tmp_path, tiny_model_dir):
    data = renamed_dataset(tmp_path / "data")
    prepare(_config(data, model=tiny_model_dir), ["sft", "grpo", "preview"])  # every named file is there
    for stages, override, message in [
        ([], "data.split=nope", "data.split=nope"),  # rl.evaluate: the split it answers
        (["grpo"], "data.val_split=nope", "data.val_split=nope"),
        (["preview"], "data.val_split=nope", "data.val_split=nope"),
        (["sft"], "data.val_split=nope", "data.val_split=nope"),
        (["sft"], f"sft.data_path={tmp_path}", "data.split=mytrain"),
    ]:
        with pytest.raises(DatasetError, match=rf"dataset split not found \({message};"):
            prepare(_config(data, override, model=tiny_model_dir), stages)
    prepare(_config(data, "data.val_split=nope", "grpo.eval_rows=0", model=tiny_model_dir), ["grpo"])
    prepare(_config(data, "data.val_split=nope", model=tiny_model_dir), [])
