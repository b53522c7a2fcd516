"""DeepSpeed state loads weights-only (actors/ds_checkpoint.py): a checkpoint file that pickles code is
refused, naming the file, before anything in it runs; DeepSpeed's own state still loads; files are hashed
as they are saved and checked against the manifest as they load."""

from __future__ import annotations

import re

import deepspeed.runtime.engine as ds_engine
import pytest
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.config import DeepSpeedConfig
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from actors.checkpoint_files import CorruptCheckpointError, UnsafeCheckpointError, manifest_entry
from actors.ds_checkpoint import WeightsOnlyCheckpointEngine, use_weights_only_loads
from tests.payload import Payload, plant


def test_deepspeeds_own_engine_runs_the_payload_ours_refuses_it_naming_the_file(tmp_path):
    marker = tmp_path / "ran"
    state = plant(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                  {"optimizer_state_dict": {"state": {0: {"exp_avg": torch.ones(3)}}}}, marker)
    TorchCheckpointEngine().load(str(state))  # the threat: DeepSpeed's default loader unpickles
    assert marker.exists()
    marker.unlink()
    refused = rf"^{re.escape(str(state))}: refused to load: it pickles io.open, which is not tensor data"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        WeightsOnlyCheckpointEngine().load(str(state))
    assert not marker.exists()


def test_deepspeed_state_types_and_tensors_load(tmp_path):
    state = {"zero_stage": ZeroStageEnum.weights, "loss_scaler": LossScaler(1.0), "ds_version": "0.19",
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=2)}], "fp32": torch.arange(4.0)}
    torch.save(state, tmp_path / "optim.pt")
    loaded = WeightsOnlyCheckpointEngine().load(str(tmp_path / "optim.pt"))
    assert loaded["zero_stage"] is ZeroStageEnum.weights and loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=2)
    assert torch.equal(loaded["fp32"], torch.arange(4.0))


def test_a_file_not_written_by_torch_save_is_refused_naming_it(tmp_path):
    marker = tmp_path / "ran"
    legacy = tmp_path / "state.pt"  # torch's pre-zip format: not what DeepSpeed writes
    torch.save({"payload": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    refused = rf"^{re.escape(str(legacy))}: not a checkpoint file written by torch.save"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        WeightsOnlyCheckpointEngine().load(str(legacy))
    assert not marker.exists()


def test_engines_created_after_the_switch_load_weights_only(monkeypatch):
    monkeypatch.setattr(ds_engine, "create_checkpoint_engine", ds_engine.create_checkpoint_engine)  # undone after
    use_weights_only_loads()
    config = DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1})
    made = ds_engine.create_checkpoint_engine(config, groups=None, zero_stage=3, has_moe_layers=False,
                                              optimize_dp_state=False)
    assert type(made) is WeightsOnlyCheckpointEngine
    universal = DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "checkpoint": {"load_universal": True}})
    with pytest.raises(ValueError, match="sets checkpoint.load_universal, whose loader reads files with pickle"):
        ds_engine.create_checkpoint_engine(universal, groups=None, zero_stage=3, has_moe_layers=False,
                                           optimize_dp_state=False)


def test_saved_files_are_hashed_by_their_writer_and_checked_against_the_manifest_as_they_load(tmp_path):
    files = WeightsOnlyCheckpointEngine(DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1}))
    path = str(tmp_path / "optim_states.pt")
    files.save({"fp32": torch.arange(3.0)}, path)
    assert files.written is None  # hashing only while a learner's save records (SFT's saves hash nothing)
    files.written = {}
    files.save({"fp32": torch.arange(3.0)}, path)
    assert files.written == {path: manifest_entry(path)}
    files.expected = {path: files.written[path]["sha256"]}
    assert torch.equal(files.load(path)["fp32"], torch.arange(3.0))
    files.save({"fp32": torch.arange(3.0) + 1}, path)  # same size, other numbers: a changed file
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(path)}: sha256 \w+ differs from the manifest's"):
        files.load(path)
    files.expected = {}
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(path)}: not listed in the checkpoint's manifest"):
        files.load(path)
