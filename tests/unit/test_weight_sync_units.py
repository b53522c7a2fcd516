"""Weight-sync pieces without engines: bucket planning, packing, checksums."""

from __future__ import annotations

import pytest
import torch

from actors.sync_plan import TensorMeta, checksum, pack, plan_buckets, plan_to_wire, unpack
from actors.weight_sync import WeightSyncError, verify_checksums


def _meta(name, *shape, dtype="float32"):
    return TensorMeta(name, shape, dtype)


def test_buckets_respect_the_size_and_never_split_a_module():
    mb = 1024**2 // 4  # float32 elements in one MB
    metas = [_meta("m.layers.0.self_attn.q_proj.weight", mb // 2), _meta("m.layers.0.self_attn.k_proj.weight", mb // 2),
             _meta("m.layers.0.self_attn.v_proj.weight", mb // 2), _meta("m.layers.0.mlp.up_proj.weight", mb // 2),
             _meta("m.norm.weight", 4), _meta("lm_head.weight", 3 * mb)]
    plan = plan_buckets(metas, bucket_mb=1)
    # q/k/v (1.5 MB) stay together over the 1 MB limit; the 3 MB lm_head goes alone.
    assert [[m.name.split(".")[-2] for m in b] for b in plan] == [
        ["q_proj", "k_proj", "v_proj"], ["up_proj", "norm"], ["lm_head"]]
    assert [m for b in plan for m in b] == metas


def test_pack_and_unpack_round_trip_mixed_dtypes():
    tensors = {"a.w": torch.randn(3, 4), "b.w": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "c.w": torch.randn(5).to(torch.bfloat16)}
    bucket = tuple(_meta(n, *t.shape, dtype=str(t.dtype).removeprefix("torch.")) for n, t in tensors.items())
    flat = pack(tensors.values())
    assert flat.dtype == torch.uint8 and flat.numel() == sum(m.nbytes for m in bucket) == 48 + 48 + 10
    for (name, got), (ref_name, ref) in zip(unpack(flat, bucket), tensors.items(), strict=True):
        assert name == ref_name and got.dtype == ref.dtype and torch.equal(got, ref)


def test_checksum_sees_a_single_bit():
    w = torch.randn(64)
    flipped = w.clone()
    flipped.view(torch.int32)[7] ^= 1
    assert checksum([("w", w)]) == checksum([("w", w.clone())])
    assert checksum([("w", w)]) != checksum([("w", flipped)])


def test_partial_reload_warnings_are_quiet_only_while_a_bucket_loads(caplog):
    import logging

    from vllm.model_executor.model_loader.reload import inplace, layerwise

    from actors.weight_sync import PARTIAL_RELOAD_LOGGERS, quiet_partial_reload

    # The loggers vLLM's reload warns through are the ones we quiet (a rename in vLLM fails here).
    assert (inplace.logger.name, layerwise.logger.name) == PARTIAL_RELOAD_LOGGERS
    original = [inplace.logger.level, layerwise.logger.level]
    try:
        # Warnings on (other tests, or vLLM's logging config, may have raised the level of `vllm`).
        for logger in (inplace.logger, layerwise.logger):
            logger.setLevel(logging.WARNING)
        with caplog.at_level(logging.WARNING):
            with quiet_partial_reload():
                inplace.logger.warning("Following weights were not loaded from checkpoint: %s", {"a"})
                layerwise.logger.warning("%s: Failed to load weights", "Linear")
                inplace.logger.error("a real error still shows")
            inplace.logger.warning("after the bucket: shown again")
        assert [inplace.logger.level, layerwise.logger.level] == [logging.WARNING] * 2
    finally:
        for logger, level in zip((inplace.logger, layerwise.logger), original, strict=True):
            logger.setLevel(level)
    ours = [r.getMessage() for r in caplog.records if r.name in PARTIAL_RELOAD_LOGGERS]
    assert ours == ["a real error still shows", "after the bucket: shown again"]


class _RecordingRunner:
    """Stands in for vLLM's model runner: records what each `reload_weights` call gets (copies, so a
    buffer reused or overwritten later would show) and is slow, so buckets queue up in flight."""

    def __init__(self):
        self.calls: list[list[tuple[str, torch.Tensor]]] = []

    def reload_weights(self, weights_iterator):
        import time

        time.sleep(0.02)
        self.calls.append([(name, t.clone()) for name, t in weights_iterator])


@pytest.mark.parametrize("shared", [False, True], ids=["broadcast", "shared_memory"])
def test_pipelined_buckets_arrive_in_plan_order_with_the_senders_bytes(shared, tmp_path):
    """Sender and receiver over a real 2-rank gloo group (threads of this process): with bucket k+1 in
    flight (or packed into the other shared-memory slot) while bucket k loads, every bucket is loaded
    once, in plan order, bit for bit: the slow runner copies what it gets only after its sleep, so a
    slot overwritten too early would show. The shared-memory files are gone after the first sync."""
    import threading

    from actors.weight_sync import SyncGroup, WeightReceiver, WeightSender

    gen = torch.Generator().manual_seed(0)
    tensors = {f"m.layers.{i}.{kind}.weight": torch.randn(64 + i, 32, generator=gen).to(dtype)
               for i in range(6) for kind, dtype in (("mlp.up_proj", torch.float32), ("norm", torch.bfloat16))}
    metas = [_meta(n, *t.shape, dtype=str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()]
    plan = plan_buckets(metas, bucket_mb=0.01)  # 10 KB: every 4-9 KB tensor (its own module) travels alone
    assert len(plan) == 12

    sender = WeightSender("127.0.0.1", 2, "gloo", timeout_s=30, device="cpu", shm_dir=str(tmp_path) if shared else None)
    receiver = WeightReceiver()
    receiver.rank, receiver.device, receiver.model_runner = 0, torch.device("cpu"), _RecordingRunner()
    sent: list[int] = []
    connect = threading.Thread(target=sender.connect)
    connect.start()
    probe = (str(sender.probe.path), sender.probe.token) if shared else None
    assert receiver.init_weight_sync(SyncGroup("127.0.0.1", sender.port, 2, "gloo", 30, probe), 1) == (1, shared)
    connect.join()
    assert list(tmp_path.iterdir()) == []  # the probe is removed once every receiver joined
    send = threading.Thread(target=lambda: sent.append(sender.send(plan, iter(tensors.items()), shared)))
    send.start()
    sums = receiver.receive_weights(plan_to_wire(plan), sender.probe.slots_path if shared else None)
    send.join()
    assert list(tmp_path.iterdir()) == []  # the slots' name too, once both sides mapped them

    assert sent == [sum(m.nbytes for m in metas)]
    assert [[name for name, _ in call] for call in receiver.model_runner.calls] == [[m.name for m in b] for b in plan]
    for name, got in (pair for call in receiver.model_runner.calls for pair in call):
        assert got.dtype == tensors[name].dtype and torch.equal(got, tensors[name]), name
    assert sums == checksum(tensors.items())


def test_the_sender_refuses_weights_out_of_plan_order():
    from actors.weight_sync import WeightSender

    metas = [_meta("a.x.weight", 4), _meta("b.y.weight", 4)]
    sender = WeightSender("127.0.0.1", 1, "gloo", timeout_s=5, device="cpu")
    sender.connect()
    with pytest.raises(ValueError, match="out of plan: got b.y.weight"):
        sender.send(plan_buckets(metas, 1), iter([("b.y.weight", torch.zeros(4)), ("a.x.weight", torch.zeros(4))]))


def test_transport_choice_follows_what_the_receivers_see():
    from actors.sync_transport import choose_transport

    assert choose_transport("auto", [True, True], ["e0", "e1"]) == "shared_memory"
    assert choose_transport("auto", [True, False], ["e0", "e1"]) == "collective"
    assert choose_transport("collective", [True, True], ["e0", "e1"]) == "collective"
    assert choose_transport("shared_memory", [True], ["e0"]) == "shared_memory"
    with pytest.raises(ValueError, match=r"weight_sync.transport=shared_memory, but e1 on n2 cannot see"):
        choose_transport("shared_memory", [True, False], ["e0", "e1 on n2"])


def test_a_receiver_elsewhere_does_not_see_the_probe(tmp_path):
    from actors.sync_transport import Probe, sees_probe

    probe = Probe(str(tmp_path))
    assert sees_probe(str(probe.path), probe.token)
    assert not sees_probe(str(probe.path), "another sender's token")
    probe.remove()
    assert not sees_probe(str(probe.path), probe.token) and not sees_probe(None, None)


def test_slots_that_do_not_fit_are_an_error_naming_the_knobs(tmp_path):
    """A tmpfs too small for the slots (faked with RLIMIT_FSIZE in a child process: a small tmpfs cannot
    be mounted here) fails when the file is made, naming what to change, and leaves no file behind."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from actors.sync_transport import SharedSlots\n"
        "try:\n"
        f"    SharedSlots({str(tmp_path / 'x.slots')!r}, 8 << 20, create=True)\n"
        "except OSError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    assert "no room for 2 x 8 MB weight-sync slots" in out.stdout and "weight_sync.bucket_mb" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_checksum_mismatch_after_sync_names_the_engine_and_the_tensors():
    # The corruption is injected (a received sum edited): a real transfer gives no way to cause one.
    weights = {"a.w": torch.randn(3), "b.w": torch.randn(4)}
    sent = checksum(weights.items())
    good = dict(sent)
    verify_checksums(sent, [good, good], ["rollout-0", "rollout-1"])  # equal sums: no error
    bad = checksum({**weights, "b.w": weights["b.w"] + 1.0}.items())
    with pytest.raises(WeightSyncError, match=r"rollout-1: 1 tensors differ from the source after sync "
                                              r"\(first: \['b.w'\]\)") as err:
        verify_checksums(sent, [good, bad], ["rollout-0", "rollout-1"])
    assert (err.value.actor, err.value.phase) == ("rollout-1", "verify")
    with pytest.raises(WeightSyncError, match=r"rollout-0: 1 tensors differ .*\['a.w'\]"):
        verify_checksums(sent, [{"b.w": sent["b.w"]}, good], ["rollout-0", "rollout-1"])  # one never arrived
    with pytest.raises(WeightSyncError, match=r"rollout-0: 0 tensors differ .*, 1 not sent \(first: \['c.w'\]\)"):
        verify_checksums(sent, [{**good, "c.w": "x"}, good], ["rollout-0", "rollout-1"])


def test_a_killed_learners_files_go_at_the_next_start_of_its_run_and_nothing_else(tmp_path):
    """A learner SIGKILLed after making its slots, before its first sync ended (a real kill of a child
    process), leaves its probe and slots. The run's next sender removes them as it starts, the driver's
    `remove_files` what the run still has there; another run's files, links and other names stay."""
    import signal
    import subprocess
    import sys

    from actors.sync_transport import remove_owned
    from actors.weight_sync import WeightSender, WeightSync
    from rl.core.platform import get_platform

    code = (
        "import os, signal\n"
        "from actors.sync_transport import SharedSlots\n"
        "from actors.weight_sync import WeightSender\n"
        f"sender = WeightSender('127.0.0.1', 2, 'gloo', 30, 'cpu', shm_dir={str(tmp_path)!r}, owner='run1')\n"
        "SharedSlots(sender.probe.slots_path, 1 << 16, create=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n.rsplit(".", 1)[1] for n in left] == ["probe", "slots"], left
    assert all(n.startswith("ggrpo-sync-run1-") for n in left), left

    others = ["ggrpo-sync-run2-abc.slots", "ggrpo-sync-run1x-abc.slots", "ggrpo-sync-run1-abc.txt", "mine.slots"]
    for name in others:
        (tmp_path / name).write_text("not the run's")
    (tmp_path / "ggrpo-sync-run1-link.slots").symlink_to(tmp_path / "mine.slots")
    others.append("ggrpo-sync-run1-link.slots")

    sender = WeightSender("127.0.0.1", 2, "gloo", timeout_s=30, device="cpu", shm_dir=str(tmp_path), owner="run1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, sender.probe.path.name])
    sync = WeightSync(None, "learner-0", None, 1, 30, get_platform("cpu"), shm_dir=str(tmp_path), owner="run1")
    assert sync.remove_files() == [sender.probe.path.name]  # the driver, after a learner died mid-start
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert (tmp_path / "mine.slots").read_text() == "not the run's"
    with pytest.raises(ValueError, match=r"owner 'run1-\*': letters and digits only"):
        remove_owned(tmp_path, "run1-*")
