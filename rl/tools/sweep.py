"""Reward ablation sweeps: `python -m rl.sweep conf/sweeps/reward_ablation.yaml [key=value ...]`.

Every run (variant x seed, `rl/tools/sweep_spec.py`) is a normal `rl.launch` run with its own `logging.dir` and
`checkpoint.dir` under `<output_dir>/runs/<variant>/seed-<s>/`. Locally the runs go one after another in
this process on one Ray cluster (RAY_ADDRESS's, else a local one); with `mode: ray_job` each is submitted
as its own Ray job and waited for. A run is finished when its `DONE` marker exists: written last, after
its final checkpoint is complete, so a rerun of the sweep skips exactly the finished runs, and an
interrupted run resumes from its newest checkpoint (`checkpoint.resume=auto`). A broken run is reported
(`error.txt`) and the sweep goes on. At the end every finished run's final checkpoint is answered greedily
on the evaluation split by one rollout pool (weights reloaded per run) and the comparison is written:
`results.csv`, `report.md`, `figures/curves-<variant>.png`, `figures/final-metrics.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rl import checkpoint
from rl.core.config import Config, ConfigError, load_config
from rl.core.data import DatasetError, split_path
from rl.core.progress import Progress
from rl.evaluate import HEADLINE, evaluate_split, write_evaluation
from rl.report import summarize, write_report, write_results_csv
from rl.tools.plots import plot_final_metrics, plot_reward_curves, read_scalars
from rl.tools.sweep_spec import Run, SweepError, SweepSpec, eval_overrides, expand, load_spec, validate

DONE, ERROR = "DONE", "error.txt"
START = "start"  # the report's row for the checkpoint before GRPO
REPO = Path(__file__).resolve().parents[2]

RunFn = Callable[[SweepSpec, Run], None]  # trains one run; raises when it fails


# ------------------------------------------------------------------ markers: what is finished

def is_done(run: Run) -> bool:
    return (run.dir / DONE).is_file()


def final_checkpoint(run: Run, cfg: Config) -> Path:
    """The run's checkpoint at `grpo.num_steps`; raises when the run stopped short of it."""
    found = checkpoint.complete(run.checkpoints)
    if not found or checkpoint.load_state(found[-1])["step"] != cfg.grpo.num_steps:
        raise RuntimeError(f"no complete checkpoint at step {cfg.grpo.num_steps} under {run.checkpoints}")
    return found[-1]


def mark_done(run: Run, cfg: Config) -> Path:
    """Write the DONE marker (last: after the final checkpoint is verified complete)."""
    final = final_checkpoint(run, cfg)
    (run.dir / ERROR).unlink(missing_ok=True)
    (run.dir / DONE).write_text(json.dumps({"checkpoint": str(final), "step": cfg.grpo.num_steps,
                                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return final


def status(run: Run) -> str:
    if is_done(run):
        return "done"
    return "failed" if (run.dir / ERROR).is_file() else "not run"


# ------------------------------------------------------------------ running

def launch_argv(spec: SweepSpec, run: Run) -> list[str]:
    return [*(["--config", spec.base] if spec.base else []), *run.overrides]


def run_local(spec: SweepSpec, run: Run) -> None:
    """`rl.launch` in this process: it joins the cluster this sweep connected to."""
    from rl.launch import main

    code = main(launch_argv(spec, run))
    if code:
        raise RuntimeError(f"rl.launch exited with {code}")


def run_ray_job(spec: SweepSpec, run: Run, poll_s: float = 5.0) -> None:
    """Submit the run as its own Ray job (the repository as working_dir) and wait for it; its driver log
    goes to `job.log`. Run folders are absolute paths: they must be on storage the cluster shares."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(spec.job_address)  # None: RAY_ADDRESS
    entrypoint = shlex.join(["python", "-m", "rl.launch", *launch_argv(spec, run)])
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)},
                            submission_id=f"{spec.name}-{run.variant}-seed{run.seed}-{int(time.time())}")
    while (state := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(poll_s)
    (run.dir / "job.log").write_text(client.get_job_logs(job))
    if state != JobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {job} ended {state}: see {run.dir / 'job.log'}")


def train_all(spec: SweepSpec, configs: dict[Run, Config], run_fn: RunFn, log: Callable[[str], Any] = print
              ) -> None:
    """Every unfinished run in order; a failure is written to the run's error.txt and the next run starts.
    Progress (`rl.core.progress`) counts the unfinished runs: the ETA is the time per run trained now."""
    with Progress(sum(not is_done(run) for run in configs), "sweep runs", log=log) as bar:
        for i, (run, cfg) in enumerate(configs.items(), 1):
            tag = f"[{i}/{len(configs)}] {run.variant} seed {run.seed}"
            if is_done(run):
                bar.write(f"{tag}: finished earlier, skipped")
                continue
            run.dir.mkdir(parents=True, exist_ok=True)
            bar.write(f"{tag}: training ({' '.join(run.overrides)})")
            try:
                run_fn(spec, run)
                mark_done(run, cfg)
            except Exception:  # any failure of one run: report it, go on with the others
                (run.dir / ERROR).write_text(traceback.format_exc())
                bar.write(f"{tag}: FAILED, see {run.dir / ERROR}")
            bar.update(1)


# ------------------------------------------------------------------ evaluation and report

class PoolCache:
    """One rollout pool for every evaluation: runs whose model and rollout settings match share it and only
    reload weights (starting an engine costs far more than answering the split)."""

    def __init__(self) -> None:
        self.key, self.pool = None, None

    def get(self, cfg: Config) -> Any:
        from actors.rollout import RolloutPool

        key = (cfg.model.model_dump_json(exclude={"path"}), cfg.rollout.model_dump_json())
        if key != self.key:
            self.close()
            self.pool = RolloutPool(cfg, name_prefix="sweep-eval")
            self.key = key
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.key, self.pool = None, None


def evaluate_run(spec: SweepSpec, run: Run, base: Config, pools: PoolCache, version: int) -> dict[str, float]:
    """The run's final checkpoint answered greedily, scored with the base config's rewards; cached in
    `eval/metrics.json` (written after the DONE marker, so a retrained run is evaluated again)."""
    cached = run.dir / "eval" / "metrics.json"
    if cached.is_file() and cached.stat().st_mtime >= (run.dir / DONE).stat().st_mtime:
        return json.loads(cached.read_text())
    cfg = load_config(spec.base, [*run.overrides, *eval_overrides(spec)])
    pool = pools.get(cfg)
    weights = str(final_checkpoint(run, cfg) / "model")
    pool.load_weights(version, weights)
    ev = evaluate_split(cfg.model_copy(update={"rewards": base.rewards}), pool)
    named = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": weights})})  # for the title
    write_evaluation(ev, named, run.dir / "eval", title=f"{run.variant} seed {run.seed}")
    return ev.metrics


def evaluate_start(spec: SweepSpec, base: Config, pools: PoolCache) -> dict[str, Any]:
    """The checkpoint every run starts from, as the record of variant `START`: what GRPO changed. Cached in
    `<output_dir>/start/` for as long as the start checkpoint is the same path."""
    out = spec.root() / "start"
    cached = out / "metrics.json"
    if cached.is_file() and (out / "model.txt").read_text() == base.model.path:
        metrics = json.loads(cached.read_text())
    else:
        pool = pools.get(base)
        pool.load_weights(0, base.model.path)  # the pool may hold another run's weights
        ev = evaluate_split(base, pool)
        write_evaluation(ev, base, out, title="start checkpoint")
        (out / "model.txt").write_text(base.model.path)
        metrics = ev.metrics
    return {"variant": START, "seed": 0, "status": "done", "step": 0, **metrics}


def evaluate_all(spec: SweepSpec, runs: Sequence[Run], log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """One record per run (finished or not) for results.csv; an evaluation that fails marks its run."""
    base = load_config(spec.base, [*spec.overrides, *eval_overrides(spec)])
    pools, records = PoolCache(), []
    bar = Progress(len(runs) + spec.evaluation.include_start, "sweep evaluations", log=log)
    try:
        if spec.evaluation.include_start:
            records.append(evaluate_start(spec, base, pools))
            bar.update(1)
        for version, run in enumerate(runs, 1):
            record: dict[str, Any] = {"variant": run.variant, "seed": run.seed, "status": status(run)}
            if record["status"] == "done":
                try:
                    record |= {"step": json.loads((run.dir / DONE).read_text())["step"],
                               **evaluate_run(spec, run, base, pools, version)}
                except Exception:  # report it in the table, evaluate the rest
                    (run.dir / "eval-error.txt").write_text(traceback.format_exc())
                    record["status"] = "eval failed"
            bar.update(1)
            bar.write(f"evaluated {run.variant} seed {run.seed}: {record['status']}")
            records.append(record)
    finally:
        bar.close()
        pools.close()
    return records


def write_outputs(spec: SweepSpec, runs: Sequence[Run], records: list[dict[str, Any]]) -> Path:
    """results.csv, the figures and report.md in the sweep's folder; returns the report's path."""
    root = spec.root()
    write_results_csv(root / "results.csv", records)
    figures = {}
    for variant in dict.fromkeys(r.variant for r in runs):
        done = [r for r in runs if r.variant == variant and is_done(r)]
        if done:
            path = plot_reward_curves([read_scalars(r.logs) for r in done], root / "figures" / f"curves-{variant}.png",
                                      f"{variant}: training reward ({len(done)} seed(s))")
            figures[f"Training reward: {variant}"] = str(path.relative_to(root))
    summary = summarize(records, HEADLINE)
    bars = plot_final_metrics(summary, HEADLINE, root / "figures" / "final-metrics.png",
                              f"{spec.name}: final checkpoints on {spec.evaluation.split}")
    figures = {"Final metrics": str(bars.relative_to(root)), **figures}
    variants = "\n".join(f"- `{v}`: `{' '.join(o) or '(base)'}`" for v, o in spec.variant_overrides().items())
    notes = [f"Base config `{spec.base or 'conf/default.yaml'}` with `{' '.join(spec.overrides)}`; "
             f"seeds {spec.seeds}; evaluated greedily"
             f"{f' and with {spec.evaluation.samples} samples per row' if spec.evaluation.samples else ''}"
             f" on the `{spec.evaluation.split}` split, "
             "`total_reward` with the base config's reward weights.",
             f"Variants (`{START}`: the checkpoint the runs start from, evaluated the same way):\n\n{variants}"]
    more = {f"Sampled answers ({spec.evaluation.samples} per row at the rollout temperature: the policy GRPO "
            "trains)": [f"sampled/{k}" for k in HEADLINE]} if spec.evaluation.samples else {}
    return write_report(root / "report.md", f"Sweep {spec.name}", records, HEADLINE, notes, figures, more)


# ------------------------------------------------------------------ the command

def run_sweep(spec: SweepSpec, run_fn: RunFn | None = None, log: Callable[[str], Any] = print) -> Path:
    """Validate every run's config (before any run starts), train the unfinished runs, evaluate, report."""
    import ray

    from rl.cluster import connect
    from rl.core.platform import get_platform
    from rl.launch import prepare

    runs = expand(spec)
    configs = validate(spec, runs)
    first = next(iter(configs.values()))
    prepare(first, first.pipeline)  # the model and data every run starts from, built once
    split_path(first.data.path, spec.evaluation.split, "evaluation.split")  # found now, not after the training
    spec.root().mkdir(parents=True, exist_ok=True)
    (spec.root() / "sweep.json").write_text(spec.model_dump_json(indent=1))
    platform = get_platform(first.cluster.platform)
    started = False
    try:
        if spec.mode == "local":  # the runs join this process's cluster
            started = connect(first, platform)
        train_all(spec, configs, run_fn or (run_ray_job if spec.mode == "ray_job" else run_local), log)
        if spec.mode == "ray_job" and os.environ.get("RAY_ADDRESS", "").startswith("http"):
            # The jobs API address is for submitting; ray.init needs a GCS address (cluster.address) or
            # starts a local Ray, which is where the evaluation then runs.
            os.environ.pop("RAY_ADDRESS")
        started = started or connect(first, platform)
        records = evaluate_all(spec, runs, log)
    finally:
        if started:
            ray.shutdown()
    report = write_outputs(spec, runs, records)
    log(f"report: {report}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="sweep file (YAML), e.g. conf/sweeps/reward_ablation.yaml")
    parser.add_argument("--mode", choices=["local", "ray_job"], help="override the file's mode")
    parser.add_argument("--output-dir", help="override the file's output_dir")
    parser.add_argument("--variants", help="comma-separated subset of the variants to run")
    parser.add_argument("--seeds", help="comma-separated seeds, replacing the file's")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="applied to every run")
    args = parser.parse_intermixed_args(argv)  # the sweep file, options and overrides in any order
    try:
        spec = load_spec(args.sweep, args.overrides)
        spec = _narrow(spec, args)
        run_sweep(spec)
    except (SweepError, ConfigError) as exc:  # ConfigError: e.g. model.path is no usable checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:  # e.g. a split file the runs or the evaluation would read is missing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _narrow(spec: SweepSpec, args: argparse.Namespace) -> SweepSpec:
    update: dict[str, Any] = {k: v for k, v in (("mode", args.mode), ("output_dir", args.output_dir)) if v}
    if args.seeds:
        update["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.variants:
        chosen, known = args.variants.split(","), spec.variant_overrides()
        unknown = [v for v in chosen if v not in known]
        if unknown:
            raise SweepError(f"--variants: unknown {unknown} (the file has: {', '.join(known)})")
        update |= {"variants": {v: known[v] for v in chosen}, "grid": None}
    return SweepSpec.model_validate(spec.model_dump() | update)

