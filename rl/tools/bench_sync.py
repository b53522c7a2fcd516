"""`python -m rl.bench sync`: seconds and GB/s to sync a model into R vLLM engines (ours: buckets through
`weight_sync.transport`, shared memory on one node by default, + in-place load, checksums verified) vs a
raw `broadcast` of the same bytes over the same process group (no packing, no load), in one run, rounds
alternating.

The baseline lives here, not in the actors: `send_raw` runs in the source actor and `receive_raw` in every
engine worker (through Ray's `__ray_call__` and vLLM's `collective_rpc`, which both take a function), over
the group that `WeightSync.connect` built."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

CACHE = Path(".cache/bench")


def send_raw(source: Any, sizes: list[int]) -> int:
    """In the source actor (a `WeightSource` whose sync is open): broadcast zero buffers of these byte sizes."""
    import torch

    sender = source._sender
    for size in sizes:
        sender.group.broadcast(torch.zeros(size, dtype=torch.uint8, device=sender.device), 0).wait(sender.timeout)
    return sum(sizes)


def receive_raw(worker: Any, sizes: list[int]) -> int:
    """In an engine worker that joined the sync group (`WeightReceiver.init_weight_sync`): receive buffers of
    these byte sizes and drop them (no load)."""
    import torch

    for size in sizes:
        flat = torch.empty(size, dtype=torch.uint8, device=worker.device)
        worker._sync_group.broadcast(flat, 0).wait(worker._sync_timeout)
    return sum(sizes)


def engine_receive_raw(rollout_worker: Any, sizes: list[int]) -> int:
    """In a `RolloutWorker` actor: `receive_raw` in each of its engine's workers."""
    return rollout_worker.engine.collective_rpc(receive_raw, args=(sizes,))[0]


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rl.bench sync")
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512, help="text hidden size of the synced model")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--bucket-mb", type=float, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transport", choices=["auto", "collective", "shared_memory"], default="auto",
                        help="ours (weight_sync.transport); the baseline is always a broadcast over the group")
    args = parser.parse_args(argv)

    import ray

    from actors.rollout import RolloutPool
    from actors.sync_plan import plan_from_wire
    from actors.weight_sync import CheckpointSource, WeightSync
    from rl.core.config import TinyModelConfig, load_config
    from rl.core.platform import apply_env, get_platform
    from rl.tiny import ensure_model

    path = CACHE / f"sync-h{args.hidden}-l{args.layers}"
    cfg = load_config(overrides=[f"model.path={path}", f"rollout.num_workers={args.engines}"])
    cfg.model.tiny = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers,
                                     intermediate_size=3 * args.hidden, num_heads=args.hidden // 64)
    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    ensure_model(cfg.model)
    ray.init(num_cpus=4 + args.engines, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    pool = RolloutPool(cfg)
    source = ray.remote(CheckpointSource).options(name="bench-source").remote(str(path))
    sync = WeightSync(source, "bench-source", pool, args.bucket_mb, cfg.weight_sync.timeout_s, platform,
                      transport=args.transport, shm_dir=cfg.weight_sync.shm_dir)
    sync.connect()
    sizes = [sum(m.nbytes for m in bucket) for bucket in plan_from_wire(sync.plan)]

    def ours() -> tuple[float, int]:
        stats = sync.sync(version=1)
        return stats.seconds, stats.bytes

    def raw() -> tuple[float, int]:
        start = time.perf_counter()
        ray.get([source.__ray_call__.remote(send_raw, sizes),
                 *[w.__ray_call__.remote(engine_receive_raw, sizes) for w in pool.workers]])
        return time.perf_counter() - start, sum(sizes)

    ours(), raw()  # warm-up
    ours_s, raw_s = [], []
    for i in range(args.rounds):
        ours_s.append(ours()[0])
        raw_s.append(raw()[0])
        print(f"round {i}: ours {ours_s[-1]:.3f} s, raw broadcast {raw_s[-1]:.3f} s")
    nbytes = sum(sizes)
    pool.shutdown()
    ray.shutdown()
    o, r = statistics.median(ours_s), statistics.median(raw_s)
    print(f"{nbytes / 1e6:.0f} MB to {args.engines} engines in {len(sizes)} buckets: ours {o:.3f} s "
          f"({nbytes / o / 1e9:.2f} GB/s), raw broadcast {r:.3f} s ({nbytes / r / 1e9:.2f} GB/s)")
    return {"bench": "sync", "ratio": round(r / o, 3), "ours_s": round(o, 4), "raw_broadcast_s": round(r, 4),
            "ours_gb_per_s": round(nbytes / o / 1e9, 3), "raw_gb_per_s": round(nbytes / r / 1e9, 3),
            "bytes": nbytes, "engines": args.engines, "buckets": len(sizes), "backend": platform.dist_backend,
            "transport": sync.transport}
