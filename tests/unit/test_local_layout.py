"""A local cluster (no cluster.address, no RAY_ADDRESS) is this machine: a layout it cannot hold fails
before Ray starts, naming the keys and the numbers; the demo's layouts stay legal down to one core."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from actors.placement import LOCAL_CPUS_PER_CORE, PlacementError, check_machine
from rl import cluster
from rl.core.config import load_config
from rl.core.platform import get_platform

CPU = get_platform("cpu")
REPO = Path(__file__).resolve().parents[2]
GIB = 2**30  # the demo's one engine takes 256 MB of KV cache


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml"])
@pytest.mark.parametrize("cores", [1, 2])
def test_the_demo_layouts_fit_small_machines(name: str, cores: int) -> None:
    plan = check_machine(load_config(REPO / "conf" / name), CPU, cores, GIB, 0)
    assert plan.total() == {"CPU": 3.0}  # learner, engine, reward actor; + 1 for the driver = 4 per core at 1 core


def test_an_impossible_layout_names_the_keys_and_the_numbers() -> None:
    cfg = load_config(overrides=["rollout.num_workers=100"])
    with pytest.raises(PlacementError) as err:
        check_machine(cfg, CPU, cores=2, memory_bytes=GIB, gpus=0)
    assert str(err.value) == (
        "this machine cannot hold this layout: it reserves 103 CPUs (learner.num_learners=1 x {'CPU': 1.0} "
        "(learner.cpus_per_learner=1), rollout.num_workers=100 x {'CPU': 1.0}, cluster.reward_workers=1 x 1 CPU, "
        "+ 1 for the driver), more than 4 per core on this machine's 2 cores (8); lower those keys, or give a "
        "Ray cluster (cluster.address)")


def test_cpu_engines_kv_caches_must_fit_the_machines_memory() -> None:
    cfg = load_config(overrides=["rollout.kv_cache_memory_mb=3072"])
    with pytest.raises(PlacementError) as err:
        check_machine(cfg, CPU, cores=2, memory_bytes=2 * GIB, gpus=0)
    assert str(err.value) == (
        "this machine cannot hold this layout: its engines' KV caches take 3.0 GiB (rollout.num_workers=1 x "
        "rollout.kv_cache_memory_mb=3072), more than this machine's 2.0 GiB of memory; lower those keys, or give "
        "a Ray cluster (cluster.address)")
    assert check_machine(cfg, CPU, cores=2, memory_bytes=4 * GIB, gpus=0).total() == {"CPU": 3.0}
    # On an accelerator the KV cache lives in device memory (rollout.gpu_memory_utilization), not here.
    assert check_machine(cfg, get_platform("cuda"), cores=2, memory_bytes=2 * GIB, gpus=2)


def test_an_accelerator_layout_needs_its_gpus_on_this_machine() -> None:
    cfg = load_config(overrides=["learner.num_learners=2", "rollout.num_workers=2", "rollout.tensor_parallel_size=2"])
    cuda = get_platform("cuda")
    with pytest.raises(PlacementError) as err:
        check_machine(cfg, cuda, cores=16, memory_bytes=64 * GIB, gpus=4)
    assert str(err.value) == (
        "this machine cannot hold this layout: it takes 6 GPUs (learner.num_learners=2 + rollout.num_workers=2 x "
        "rollout.tensor_parallel_size=2, cluster.colocate=False), this machine has 4; lower those keys, or give a "
        "Ray cluster (cluster.address)")
    assert check_machine(cfg, cuda, cores=16, memory_bytes=64 * GIB, gpus=6)
    assert cluster.machine_gpus(CPU) == 0


def test_machine_memory_is_this_machines() -> None:
    assert 2**28 < cluster.machine_memory() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize(("overrides", "need"), [
    (["learner.cpus_per_learner=6"], 9), (["cluster.reward_workers=6"], 9),
    (["learner.num_learners=2", "learner.cpus_per_learner=3", "rollout.num_workers=2"], 10)])
def test_the_limit_is_four_reserved_cpus_per_core(overrides: list[str], need: int) -> None:
    cfg = load_config(overrides=overrides)
    cores = need // LOCAL_CPUS_PER_CORE  # one core short of need
    with pytest.raises(PlacementError, match=rf"it reserves {need} CPUs .* on this machine's {cores} cores "
                                              rf"\({LOCAL_CPUS_PER_CORE * cores}\)"):
        check_machine(cfg, CPU, cores, GIB, 0)
    assert check_machine(cfg, CPU, cores + 1, GIB, 0).total()["CPU"] == need - 1


def test_connect_refuses_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    # In the full suite this process may already hold the slow tests' Ray (connect then joins it and
    # checks nothing): make connect see none, and record whether it went on to start one.
    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "start_local", lambda *args, **kwargs: started.append(args))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "machine_cores", lambda: 2)
    with pytest.raises(PlacementError, match=re.escape("rollout.num_workers=100 x")):
        cluster.connect(load_config(overrides=["rollout.num_workers=100"]), CPU)
    assert started == []
    assert cluster.connect(load_config(), CPU) is True and len(started) == 1  # the demo's layout goes on to start


def test_a_configured_cluster_is_not_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "machine_cores", lambda: 1)
    big = ["rollout.num_workers=100"]
    cluster.check_local_layout(load_config(overrides=[*big, "cluster.address=10.0.0.1:6379"]), CPU)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # ray job submit
    cluster.check_local_layout(load_config(overrides=big), CPU)
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(PlacementError, match="1 cores"):
        cluster.check_local_layout(load_config(overrides=big), CPU)


def test_machine_cores_is_this_process_share() -> None:
    import os

    assert cluster.machine_cores() == len(os.sched_getaffinity(0))


def test_launch_fails_before_preparing_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from rl.launch import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "machine_cores", lambda: 2)
    data = tmp_path / "data"
    assert main(["cluster.platform=cpu", "rollout.num_workers=100", f"data.path={data}",
                 f"model.path={tmp_path / 'model'}"]) == 2
    assert "error: this machine cannot hold this layout: it reserves 103 CPUs" in capsys.readouterr().err
    assert not data.exists() and not (tmp_path / "model").exists()  # neither generated nor built
