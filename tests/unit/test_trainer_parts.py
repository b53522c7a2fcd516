"""Driver-side pieces without engines: checkpoints, prompt order, placement checks, held-out metrics,
prediction drawings."""

from __future__ import annotations

import json
import re
from hashlib import sha256

import numpy as np
import pytest
from PIL import Image

from actors.checkpoint_files import CorruptCheckpointError, manifest_entry
from actors.placement import PlacementError, layout, validate
from rl import checkpoint
from rl.core.config import ConfigError, load_config
from rl.core.data import PromptOrder
from rl.core.platform import get_platform
from rl.evaluate import duplicate_boxes, grounding_metrics, matched_ious, metrics_markdown, run_evaluation
from rl.visualize import PREDICTION, REFERENCE, draw


def _write_model(path):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")


def test_checkpoint_is_complete_only_with_its_manifest_and_keeps_the_last_k(tmp_path):
    for step in (2, 4, 6):
        checkpoint.save(tmp_path, step, _write_model, {"step": step}, keep_last=2)
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step-000004", "step-000006"]
    assert checkpoint.load_state(checkpoint.resolve_resume(tmp_path, "auto")) == {"step": 6}
    checkpoint.check_model(tmp_path / "step-000006" / "model")
    assert not list(tmp_path.glob(".*"))  # no temporary directories left
    checkpoint.check(tmp_path / "step-000006")  # every listed file has its digest
    (tmp_path / "step-000006" / "model" / "model.safetensors").write_bytes(b"WEIGHTS")  # same size, new bytes
    assert checkpoint.verify(tmp_path / "step-000006")  # sizes only
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: sha256 \w+ differs"):
        checkpoint.check(tmp_path / "step-000006")


def test_a_half_written_checkpoint_is_ignored_and_named(tmp_path):
    checkpoint.save(tmp_path, 1, _write_model, {"step": 1}, keep_last=3)
    broken = checkpoint.step_dir(tmp_path, 2)  # crashed before its manifest
    _write_model(broken / "model")
    truncated = checkpoint.save(tmp_path, 3, _write_model, {"step": 3}, keep_last=3)
    (truncated / "model" / "model.safetensors").write_bytes(b"w")  # size no longer matches the manifest
    with pytest.warns(UserWarning, match="ignoring incomplete checkpoint .*step-000002"):
        assert checkpoint.resolve_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 1)
    assert checkpoint.resolve_resume(tmp_path, "never") is None
    with pytest.raises(FileNotFoundError, match="checkpoint.resume=.*step-000002: not a complete checkpoint"):
        checkpoint.resolve_resume(tmp_path, str(broken))


def test_digests_come_from_the_writer_and_a_changed_file_is_named_where_it_is_loaded(tmp_path):
    def hashed_model(path, digest=None):
        _write_model(path)
        entry = manifest_entry(path / "model.safetensors")
        return {"model.safetensors": {**entry, "sha256": digest or entry["sha256"]}}

    written = checkpoint.save(tmp_path, 2, lambda p: hashed_model(p, "the writer's"), {"step": 2}, keep_last=2)
    assert checkpoint.digests(written, "model") == {"model.safetensors": "the writer's"}  # not hashed again
    ckpt = checkpoint.save(tmp_path, 3, hashed_model, {"step": 3}, keep_last=2)
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())["files"]
    assert manifest["model/model.safetensors"] == {"bytes": 7, "sha256": sha256(b"weights").hexdigest()}
    assert manifest[checkpoint.STATE]["sha256"] == sha256((ckpt / checkpoint.STATE).read_bytes()).hexdigest()
    (ckpt / checkpoint.STATE).write_text(json.dumps({"step": 9}, indent=1))  # same size: only the digest sees it
    (ckpt / "model" / "model.safetensors").write_bytes(b"weighs!")
    assert checkpoint.resolve_resume(tmp_path, "auto") == ckpt  # listing checks sizes only
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(str(ckpt / checkpoint.STATE))}: sha256 \w+ "
                                                     r"differs from the manifest's \w+: the file changed"):
        checkpoint.load_state(ckpt)
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(str(ckpt / 'model' / 'model.safetensors'))}: "):
        checkpoint.check_model(ckpt / "model")
    (ckpt / "model" / "extra.json").write_text("{}")
    with pytest.raises(CorruptCheckpointError, match=r"model/extra.json: not listed in the checkpoint's manifest"):
        checkpoint.check_model(ckpt / "model")
    checkpoint.check_model(tmp_path)  # not a checkpoint's model folder: nothing to check
    (written / checkpoint.MANIFEST).write_text('{"files": {"model/w": [1]}}')  # not a manifest: incomplete
    with pytest.raises(FileNotFoundError, match=r"step-000002: not a complete checkpoint"):
        checkpoint.resolve_resume(tmp_path, str(written))
    cfg = load_config(overrides=[f"model.path={ckpt / 'model'}", "model.tiny=null"])
    with pytest.raises(ConfigError, match=rf"^model.path={re.escape(str(ckpt / 'model'))}: .*extra.json: not listed"):
        run_evaluation(cfg)  # before any engine starts


def test_a_write_killed_midway_leaves_a_temporary_folder_that_is_ignored_and_named(tmp_path):
    checkpoint.save(tmp_path, 1, _write_model, {"step": 1}, keep_last=3)
    partial = tmp_path / ".step-000002.tmp"  # what a driver killed mid-write leaves
    _write_model(partial / "model")
    with pytest.warns(UserWarning, match=r"ignoring incomplete checkpoint .*\.step-000002\.tmp"):
        assert checkpoint.resolve_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 1)
    checkpoint.save(tmp_path, 2, _write_model, {"step": 2}, keep_last=3)  # the next write of step 2 replaces it
    assert not partial.exists() and checkpoint.load_state(checkpoint.step_dir(tmp_path, 2)) == {"step": 2}


def test_a_full_disk_stops_the_write_naming_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    """ENOSPC cannot be caused portably without root (a tiny tmpfs): this one is raised by the writer,
    the faked part being the disk; what follows (cleanup, message, the previous checkpoint) is real."""
    import errno

    checkpoint.save(tmp_path, 1, _write_model, {"step": 1}, keep_last=3)
    before = {p: p.read_bytes() for p in (tmp_path / "step-000001").rglob("*") if p.is_file()}

    def full_disk(path):
        _write_model(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "model.safetensors"))

    with pytest.raises(checkpoint.CheckpointError, match=r"step 2: No space left on device \(.*step-000002\.tmp/model/"
                       r"model\.safetensors\); the last complete checkpoint is .*step-000001, untouched"):
        checkpoint.save(tmp_path, 2, full_disk, {"step": 2}, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]  # the partial write is gone
    assert {p: p.read_bytes() for p in (tmp_path / "step-000001").rglob("*") if p.is_file()} == before
    assert checkpoint.verify(tmp_path / "step-000001")
    checkpoint.check_model(tmp_path / "step-000001" / "model")


def test_an_unwritable_checkpoint_folder_is_named(tmp_path):
    (tmp_path / "taken").write_text("a file where the checkpoint folder should be")
    with pytest.raises(checkpoint.CheckpointError, match=r"step 1: Not a directory \(.*taken/\.step-000001\.tmp\); "
                       "the last complete checkpoint is none"):
        checkpoint.save(tmp_path / "taken", 1, _write_model, {"step": 1}, keep_last=1)


def test_a_run_names_its_weight_sync_files_after_its_checkpoint_folder(tmp_path, monkeypatch):
    """The same run (a resume, also from another working directory) finds its files; another run does not."""
    from rl.trainer import sync_owner

    run = load_config(overrides=[f"checkpoint.dir={tmp_path / 'a'}"])
    monkeypatch.chdir(tmp_path)
    assert sync_owner(run) == sync_owner(load_config(overrides=["checkpoint.dir=a"]))
    assert sync_owner(run) != sync_owner(load_config(overrides=[f"checkpoint.dir={tmp_path / 'b'}"]))
    assert sync_owner(run).isalnum() and len(sync_owner(run)) == 16


def test_prompt_order_is_seeded_covers_each_epoch_and_resumes_exactly():
    order = PromptOrder(5, seed=3)
    first = order.take(3) + order.take(3)  # crosses into epoch 1
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and order.state() == {"epoch": 1, "cursor": 1}
    resumed = PromptOrder(5, seed=3, **order.state())
    assert resumed.take(7) == order.take(7)
    assert PromptOrder(5, seed=3).take(6) == first
    assert PromptOrder(5, seed=4).take(5) != first[:5]


def test_layout_arithmetic_and_shortfalls_name_the_keys():
    cfg = load_config(overrides=["learner.num_learners=4", "learner.micro_batch_size=2", "rollout.num_workers=2",
                                 "rollout.tensor_parallel_size=2", "cluster.reward_workers=2"])
    gpu = get_platform("cuda")
    # 4 learners x 1 GPU + 2 engines x TP 2 = 8 GPUs; CPUs: 4 x 1 + 2 x 1 + 2 reward actors = 8.
    assert layout(cfg, gpu).total() == {"CPU": 8.0, "GPU": 8.0}
    validate(cfg, gpu, [{"CPU": 16, "GPU": 8}])
    with pytest.raises(PlacementError, match=r"8 GPU needed, the cluster has 4.*learner.num_learners=4"):
        validate(cfg, gpu, [{"CPU": 16, "GPU": 4}])
    with pytest.raises(PlacementError, match=r"rollout.tensor_parallel_size=2 does not fit one node"):
        validate(cfg, gpu, [{"CPU": 8, "GPU": 1}] * 8)
    assert layout(cfg, get_platform("cpu")).total() == {"CPU": 8.0}


def test_grounding_metrics_worked_by_hand():
    reference = "Mass <box>[[0, 0, 10, 10], [20, 20, 30, 30]]</box>"
    # One box exact (IoU 1), one shifted by 5 in x: IoU = 50 / 150 = 1/3.
    good = "Mass <box>[[0, 0, 10, 10], [25, 20, 35, 30]]</box>"
    assert matched_ious(good, reference) == pytest.approx([1.0, 1 / 3])
    m = grounding_metrics([good, "nonsense"], [reference, reference])
    assert m["mean_iou_matched"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["format_valid"] == 0.5 and m["label_accuracy"] == 0.5
    assert m["total_reward"] == pytest.approx(m["reward/total"])
    assert m["duplicate_rate"] == 0.0
    assert m["box_ratio"] == 0.5  # 2 boxes answered ("nonsense" names none) for 4 reference boxes


def test_metrics_markdown_shows_sampled_answers_beside_greedy_ones():
    greedy = grounding_metrics(["Mass <box>[[0, 0, 10, 10]]</box>"], ["Mass <box>[[0, 0, 10, 10]]</box>"])
    sampled = grounding_metrics(["No findings."], ["Mass <box>[[0, 0, 10, 10]]</box>"])
    text = metrics_markdown(greedy | {f"sampled/{k}": v for k, v in sampled.items()}, "t")
    assert "| metric | greedy | sampled |" in text and "| ap50 | 1.000 | 0.000 |" in text
    assert "| box_ratio | 1.000 | 0.000 |" in text
    assert "| metric | value |" in metrics_markdown(greedy, "t")  # greedy only: one column


def test_box_ratio_counts_left_out_and_extra_boxes():
    two = "Mass <box>[[0, 0, 10, 10], [20, 20, 30, 30]]</box>"
    one = "Mass <box>[[0, 0, 10, 10]]</box>"
    assert grounding_metrics([one, one], [two, two])["box_ratio"] == 0.5
    assert grounding_metrics([two, "No findings."], [one, "No findings."])["box_ratio"] == 2.0
    assert grounding_metrics(["No findings."], ["No findings."])["box_ratio"] == 0.0  # no reference box: no ratio


def test_duplicate_rate_counts_boxes_repeating_an_earlier_box_of_their_label():
    # Box 2 repeats box 1 (IoU 100/110 > 0.5); box 3 is elsewhere; the Nodule box repeats no box of its label.
    answer = "Mass <box>[[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]]</box> Nodule <box>[[0, 0, 10, 10]]</box>"
    assert duplicate_boxes(answer) == (1, 4)
    assert duplicate_boxes("No findings.") == (0, 0)
    m = grounding_metrics([answer, "Mass <box>[[0, 0, 10, 10]]</box>"], ["No findings."] * 2)
    assert m["duplicate_rate"] == pytest.approx(1 / 5)


def test_drawing_puts_reference_and_prediction_boxes_on_the_image():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    out = np.asarray(draw(image, "A <box>[[100, 100, 500, 500]]</box>", "A <box>[[600, 600, 900, 900]]</box>",
                          extent=(1000, 1000), scale=2))
    assert out.shape == (200, 200, 3)
    assert tuple(out[20, 60]) == PREDICTION  # top edge of the predicted box at y = 0.1 x 200
    assert tuple(out[120, 150]) == REFERENCE  # top edge of the reference box at y = 0.6 x 200
    assert tuple(out[199, 0]) == (0, 0, 0)


def test_a_full_disk_under_the_logs_stops_the_run_naming_the_folder(tmp_path):
    """A real write error: the file-size limit (RLIMIT_FSIZE, EFBIG past 4 KB) in a child process, where
    TensorBoard's writer thread hits it; `write_scalars` surfaces it with the folder named. The child prints
    the error it caught on stdout: on stderr the writer thread's own report of the same error ("Exception in
    thread ...") races the main thread's, and their lines interleave as the threads are scheduled."""
    import subprocess
    import sys

    script = f"""
import resource, signal, sys
from torch.utils.tensorboard import SummaryWriter
from rl.trainer import write_scalars
writer = SummaryWriter({str(tmp_path / "runs")!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    for step in range(1, 200):
        write_scalars(writer, {{f"metric/{{k}}": float(k) for k in range(20)}}, step)
except OSError as exc:
    print(step, type(exc).__name__, exc, sep="\\n", flush=True)
    sys.exit(3)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    step, kind, message = done.stdout.splitlines()
    assert (kind, message) == ("OSError", f"[Errno 27] could not write TensorBoard logs to {tmp_path / 'runs'}: "
                                          "File too large")
    assert int(step) < 20  # a step's 20 scalars are about 1 KB: past the 4 KB limit within a few steps
