"""The GRPO step loop, on the driver. It holds actor handles only (no model): each step

    prompts -> rollouts (RolloutPool, G per prompt) -> rewards (reward service) -> advantages and the
    dynamic-sampling filter (rl/core/grpo.py; refill from the next prompts, bounded) -> learner update
    (LearnerGroup, DeepSpeed) -> weight sync (every engine holds the new version) -> metrics -> checkpoint.

With `grpo.off_policy_lag: 1` the update runs on a background thread while the next step's prompts go
through rollouts and rewards (sampled one policy version behind), and the sync waits for both.

Held-out metrics (greedy and sampled answers on `grpo.eval_rows` rows of `data.val_split`) are printed before the
first and after the last step.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from actors.learner import LearnerGroup
from actors.learner_batch import TrainSample
from actors.placement import Placement, place
from actors.remote import ActorCallError
from actors.reward import RewardPool
from actors.rollout import RolloutPool
from actors.weight_sync import SyncStats, WeightSync, WeightSyncError
from rl import checkpoint
from rl.core.config import Config
from rl.core.data import GroundingRow, PromptOrder, load_configured_split, split_path
from rl.core.grpo import dynamic_sampling_mask, group_advantages
from rl.core.platform import Platform, get_platform
from rl.core.progress import Progress
from rl.core.seeds import rollout_seed
from rl.evaluate import HEADLINE, evaluate_rows, evaluate_sampled
from rl.faults import Chaos, NonFiniteGuard, RestartBudget, RunStopped, nonfinite


@dataclass
class Collected:
    """What a step trains on: kept groups' samples, their rewards, and what was dropped on the way."""

    samples: list[TrainSample] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=dict)  # component -> per kept sample
    rows: list[GroundingRow] = field(default_factory=list)  # per kept sample
    texts: list[str] = field(default_factory=list)  # per kept sample
    groups_seen: int = 0
    groups_dropped: int = 0  # zero reward variance (dynamic sampling)
    failed_rows: int = 0  # bad image, prompt too long
    rounds: int = 0
    response_tokens: int = 0
    truncated: int = 0  # responses cut at rollout.max_tokens
    nonfinite: str | None = None  # why the step must not update: a NaN/inf among the rewards
    version: int = 0  # the oldest policy version the kept samples came from


@dataclass
class StepState:
    """What the loop carries from one call to the next. In off-policy mode step t+1's batch is sampled while
    step t's update runs on a background thread; `_stop` and `save` need to know where each stands."""

    pending: Collected | None = None  # the next step's batch, sampled during this step's update
    pending_order: dict[str, int] = field(default_factory=dict)  # the data position before its prompts
    # What `_stop` saves if the step in flight fails: the data position, and whether its update ran.
    good: dict[str, Any] = field(default_factory=lambda: {"order": {}, "updated": False})
    updating: concurrent.futures.Future | None = None  # the update on the background thread
    trained: Collected | None = None  # the batch the last update trained on


class Actors(NamedTuple):
    placement: Placement
    learners: LearnerGroup
    pool: RolloutPool
    rewards: RewardPool
    sync: WeightSync


def build_actors(cfg: Config, platform: Platform) -> Actors:
    """Every actor of a GRPO run, placed and wired: learners packed by node (collective ranks in node order),
    each engine's TP group inside one node, the reward actors, and the weight sync from learner rank 0 (its
    ZeRO-3 peers gather with it) to every engine."""
    # Actor names carry a run tag: two runs on one cluster (or in one Ray namespace) never collide.
    run = uuid.uuid4().hex[:6]
    placement = place(cfg, platform, cfg.cluster.call_timeout_s, name=f"grpo-{run}")
    learners = LearnerGroup(cfg, name_prefix=f"learner-{run}", placement=placement)
    pool = RolloutPool(cfg, name_prefix=f"rollout-{run}", placement=placement)
    rewards = RewardPool(cfg, name_prefix=f"reward-{run}")
    ws = cfg.weight_sync
    sync = WeightSync(learners.actors[0], learners.labels[0], pool, ws.bucket_mb, ws.timeout_s, platform,
                      host=cfg.cluster.host, peers=list(zip(learners.labels[1:], learners.actors[1:], strict=True)),
                      transport=ws.transport, shm_dir=ws.shm_dir, backend="gloo" if cfg.cluster.colocate else None,
                      owner=sync_owner(cfg))
    return Actors(placement, learners, pool, rewards, sync)


def grpo_rows(cfg: Config) -> tuple[list[GroundingRow], list[GroundingRow]]:
    """The rows GRPO trains on (`data.split`) and the held-out ones (the first `grpo.eval_rows` of
    `data.val_split`; none when it is 0), from `data.path`; DatasetError naming a missing file."""
    def rows(name: str, key: str) -> list[GroundingRow]:
        return load_configured_split(cfg, split_path(cfg.data.path, name, key)).rows

    train = rows(cfg.data.split, "data.split")
    return train, rows(cfg.data.val_split, "data.val_split")[:cfg.grpo.eval_rows] if cfg.grpo.eval_rows else []


class GRPOTrainer:
    def __init__(self, cfg: Config):
        self.cfg, g = cfg, cfg.grpo
        self.platform = get_platform(cfg.cluster.platform)
        self.rows, self.val_rows = grpo_rows(cfg)
        self.order = PromptOrder(len(self.rows), cfg.seed)
        self.step, self.version = 0, 0
        self.placement, self.learners, self.pool, self.rewards, self.sync = build_actors(cfg, self.platform)
        self.restarts = RestartBudget(cfg.reliability)
        self.nonfinite = NonFiniteGuard(cfg.reliability.max_nonfinite_steps)
        self.chaos = Chaos(cfg.chaos)
        self.recovery_s = 0.0  # spent replacing workers this step (time/recovery)
        self.state = StepState()
        self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grpo-update")
        self._resume()
        # The engines start from model.path; after a resume the learners hold newer weights.
        self._sync(self.version)
        self.group_size = g.group_size

    # ------------------------------------------------------------------ the loop

    def run(self, log: Any = print) -> dict[str, dict[str, float]]:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(self.cfg.logging.dir)
        held_out = f"{len(self.val_rows)} {self.cfg.data.val_split} rows"
        before = self.evaluate()
        if before:
            log(_table(f"held-out before GRPO ({held_out})", before))
        bar = Progress(self.cfg.grpo.num_steps, "grpo", initial=self.step)
        while self.step < self.cfg.grpo.num_steps:
            try:
                metrics = self.train_step()
            except (ActorCallError, RunStopped) as exc:
                self._stop(exc)
                raise
            write_scalars(writer, metrics, self.step)
            if self.cfg.logging.image_every and self.step % self.cfg.logging.image_every == 0:
                self._log_images(writer)
            bar.update(1, reward=metrics["reward/total/mean"])
            if self.step % self.cfg.logging.log_every == 0:
                bar.write(_line(self.step, metrics))
            if self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0:
                self.save()
        bar.close()
        if not self.cfg.checkpoint.every or self.step % self.cfg.checkpoint.every:
            self.save()
        after = self.evaluate()
        write_scalars(writer, {f"eval/{key}": value for key, value in after.items()}, self.step)
        writer.close()
        if after:
            log(_table(f"held-out after GRPO ({held_out})", after, before))
        return {"before": before, "after": after}

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of greedy answers, and `sampled/...` ones of G samples per row (seeded with
        grpo.eval_seed: the same draws before and after); empty when there are no held-out rows."""
        if not self.val_rows:
            return {}
        rewards = self.cfg.rewards
        greedy = evaluate_rows(self.pool, self.val_rows, rewards)
        sampled = evaluate_sampled(self.pool, self.val_rows, self.group_size, self.cfg.grpo.eval_seed, rewards)
        return greedy | {f"sampled/{k}": v for k, v in sampled.items()}

    def train_step(self) -> dict[str, float]:
        """One step: this step's batch (prefetched by the last step in off-policy mode), the update, the
        next step's rollouts overlapping it when `grpo.off_policy_lag` is 1, then the weight sync; the step
        then counts (`self.step`: steps done, which seeds the next step's rollouts)."""
        timings = {"rollout": 0.0, "reward": 0.0}  # 0 on an off-policy run's last step: nothing to sample
        start, state = time.perf_counter(), self.state
        prefetched = state.pending is not None
        if not prefetched:  # on-policy, or the first step of an off-policy run
            state.good = {"order": self.order.state(), "updated": False}
            batch = self._collect_step(self.step, timings)
        else:
            batch, state.pending = state.pending, None
            state.good = {"order": state.pending_order, "updated": False}
        after = self.order.state()  # the data position once this step counts
        if self.cfg.grpo.off_policy_lag and self.step + 1 < self.cfg.grpo.num_steps:
            # The engines sample step t+1 with the weights they hold (version t-1) while the learner
            # trains step t; the learner's importance weights correct that one-version lag.
            state.updating = self._background.submit(self._update, batch, after, timings)
            try:
                state.pending = self._collect_step(self.step + 1, timings, drill=prefetched)
                state.pending_order = after
            finally:
                learner, state.updating = state.updating.result(), None
        else:
            learner = self._update(batch, after, timings)
        mark = time.perf_counter()
        sync = self._sync(self.version)
        timings["sync"] = time.perf_counter() - mark
        total = time.perf_counter() - start
        timings["recovery"], self.recovery_s = self.recovery_s, 0.0
        metrics = self._metrics(batch, learner, timings, total, sync.gb_per_s)
        self.step += 1
        return metrics

    def _collect_step(self, step: int, timings: dict[str, float], drill: bool = True) -> Collected:
        """`collect` for the step with 0-based index `step`, with the chaos drill's kill of the current
        step in flight (`drill`: once per step, at its first collection)."""
        if drill:
            self.chaos.start(self.step + 1, {
                "rollout": list(zip(self.pool.names, self.pool.workers, strict=True)),
                "reward": list(zip(self.rewards.names, self.rewards.actors, strict=True))})
        try:
            return self.collect(timings, step)
        finally:
            self.chaos.finish()

    def _update(self, batch: Collected, after: dict[str, int], timings: dict[str, float]) -> dict[str, float]:
        """The learners' update on `batch`; the learner version then counts one more (even when a
        non-finite value skipped it: the step still happened)."""
        mark = time.perf_counter()
        # A NaN/inf anywhere upstream of the weights skips the update (the learners check loss and
        # gradients themselves, on every rank); several in a row stop the run.
        skip = batch.nonfinite or nonfinite("advantages", [s.advantage for s in batch.samples])
        learner = self.learners.update(batch.samples) if batch.samples and not skip else {}
        if learner.get("skipped_nonfinite"):
            skip = f"{learner['skipped_nonfinite']:.0f} optimizer steps with non-finite loss or gradients"
        self.nonfinite.record(self.step + 1, skip)
        self.state.good = {"order": after, "updated": True}
        self.state.trained = batch
        self.version += 1
        timings["update"] = time.perf_counter() - mark
        return learner

    # ------------------------------------------------------------------ faults

    def _replace_rollout(self, index: int, error: ActorCallError) -> None:
        """A rollout worker died or hung mid-call: a fresh one, at the current weights version (its
        lost share is then generated again by the pool, with the same seed)."""
        self._replace(self.pool, index, error, catch_up=True)

    def _replace_reward(self, index: int, error: ActorCallError) -> None:
        self._replace(self.rewards, index, error)

    def _replace(self, pool: RolloutPool | RewardPool, index: int, error: ActorCallError,
                 catch_up: bool = False) -> None:
        """Charge the restart budget, start a fresh worker `index` of `pool` (and sync it to the current
        version with `catch_up`), and log how long it took."""
        start, lost = time.perf_counter(), pool.labels[index]
        self.restarts.charge(lost, error)
        pool.restart(index)
        if catch_up:
            if self.state.updating is not None:  # the learner answers after its update: send that version
                concurrent.futures.wait([self.state.updating])
            self.sync.catch_up(index, self.version)
        seconds = time.perf_counter() - start
        self.recovery_s += seconds
        print(f"step {self.step + 1}: {lost} replaced by {pool.labels[index]} in {seconds:.1f} s", flush=True)

    def _sync(self, version: int) -> SyncStats:
        """`WeightSync.sync`; an engine lost during it is replaced and every engine synced again."""
        while True:
            try:
                return self.sync.sync(version)
            except WeightSyncError as exc:
                if exc.actor not in self.pool.labels:
                    raise  # the learner side: nothing to replace
                # An engine lost, hung, or holding weights whose checksums differ from the source's.
                # No catch-up: the next sync builds a fresh group with the replacement in it.
                self._replace(self.pool, self.pool.labels.index(exc.actor), exc)

    def _stop(self, error: BaseException) -> None:
        """A fault the run cannot absorb: save the last good step if the learners can still write it.
        A step that failed before its update leaves the learners at the previous step (its prompts are
        put back); one that failed after it counts as done."""
        if self.state.good["updated"]:
            self.step += 1
        # The prompts of the step that failed, or of a prefetched batch, go back.
        self.order = PromptOrder(len(self.rows), self.cfg.seed, **self.state.good["order"])
        self.state.pending = None
        try:
            path = self.save()
        except Exception as exc:  # noqa: BLE001 - reported next to the error that stops the run
            print(f"stopping at step {self.step} without a new checkpoint ({exc}); the last complete one "
                  f"stays usable: {checkpoint.resolve_resume(self.cfg.checkpoint.dir, 'auto')}", flush=True)
            return
        print(f"stopping after {error}; saved step {self.step} to {path}: resume=auto continues there", flush=True)

    # ------------------------------------------------------------------ one step's data

    def collect(self, timings: dict[str, float], step: int) -> Collected:
        """Sample G answers for the next prompts for step `step` (0-based), score them, keep groups with
        reward variance (DAPO dynamic sampling), and refill from the following prompts until
        `prompts_per_step` groups are kept or `max_refill_rounds` extra rounds are spent."""
        g, out = self.cfg.grpo, Collected(version=self.version)
        kept = 0
        while kept < g.prompts_per_step and out.rounds <= g.max_refill_rounds:
            rows = [self.rows[i] for i in self.order.take(g.prompts_per_step - kept)]
            mark = time.perf_counter()
            # Seeded by (rollout seed, step, round): a resumed or restarted run samples exactly the same.
            seed = rollout_seed(self.cfg.rollout.seed, step, out.rounds)
            results = self.pool.generate(rows, n=g.group_size, seed=seed, recover=self._replace_rollout)
            timings["rollout"] += time.perf_counter() - mark
            # On-policy never trains on samples of an older policy; off-policy at most one version behind.
            stale = [r.index for r in results if not r.error and self.version - r.policy_version > g.off_policy_lag]
            if stale:
                raise RuntimeError(f"rollouts of prompts {stale[:5]} came from a policy more than "
                                   f"grpo.off_policy_lag={g.off_policy_lag} versions behind {self.version}")
            out.version = min([out.version] + [r.policy_version for r in results if not r.error])
            ok = [r for r in results if r.error is None]
            out.failed_rows += len(results) - len(ok)
            out.rounds += 1
            if not ok:
                continue
            samples = [s for r in ok for s in r.samples]
            mark = time.perf_counter()
            references = [rows[r.index].answer for r in ok for _ in r.samples]
            scores = self.rewards.score([s.text for s in samples], references, [len(s.response_ids) for s in samples],
                                        recover=self._replace_reward).values
            timings["reward"] += time.perf_counter() - mark
            out.nonfinite = out.nonfinite or next(
                (reason for key, values in scores.items() if (reason := nonfinite(f"{key!r} rewards", values))), None)
            total = torch.as_tensor(scores["total"], dtype=torch.float32)  # [n*G]
            keep = (dynamic_sampling_mask(total, g.group_size)[0] if g.dynamic_sampling
                    else torch.ones(len(ok), dtype=torch.bool))
            out.groups_seen += len(ok)
            for gi, result in enumerate(ok):
                if not keep[gi] or kept == g.prompts_per_step:
                    out.groups_dropped += int(not keep[gi])
                    continue
                kept += 1
                for j, sample in enumerate(result.samples):
                    k = gi * g.group_size + j
                    out.samples.append(TrainSample(
                        prompt_ids=result.prompt_ids, response_ids=sample.response_ids,
                        image=str(rows[result.index].image), sampling_logprobs=sample.logprobs))
                    for key, values in scores.items():
                        out.rewards.setdefault(key, []).append(float(values[k]))
                    out.rows.append(rows[result.index])
                    out.texts.append(sample.text)
                    out.response_tokens += len(sample.response_ids)
                    out.truncated += sample.finish_reason == "length"
        # Advantages once the step's batch is complete: with grpo.adv_std=batch the std is over every kept
        # group of the step, whichever refill round it came from.
        if out.samples:
            totals = torch.as_tensor(out.rewards["total"], dtype=torch.float32)  # [kept*G]
            for sample, advantage in zip(out.samples, group_advantages(totals, g.group_size, g.adv_std).tolist(),
                                         strict=True):
                sample.advantage = advantage
        return out

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        # A prefetched batch is not saved: its prompts are drawn again after a resume (from the
        # resumed weights, so an off-policy run resumes exactly in data, not bit for bit).
        data = self.state.pending_order if self.state.pending is not None else self.order.state()
        state = {"step": self.step, "version": self.version, "data": data,
                 "config": self.cfg.to_dict()}
        return checkpoint.save(self.cfg.checkpoint.dir, self.step, self.learners.save, state,
                               self.cfg.checkpoint.keep_last)

    def _resume(self) -> None:
        path = checkpoint.resolve_resume(self.cfg.checkpoint.dir, self.cfg.checkpoint.resume)
        if path is None:
            return
        state = checkpoint.load_state(path)
        # The learners check each DeepSpeed file against its manifest digest as they read it.
        self.learners.load(path / checkpoint.MODEL, checkpoint.digests(path, checkpoint.MODEL))
        self.step, self.version = state["step"], state["version"]
        self.order = PromptOrder(len(self.rows), self.cfg.seed, **state["data"])
        print(f"resumed from {path} at step {self.step}")

    def shutdown(self) -> None:
        self._background.shutdown()
        for part in (self.pool, self.learners, self.rewards):
            part.shutdown()
        self.placement.remove()
        self.sync.remove_files()  # a learner killed before its first sync ended leaves its slots

    # ------------------------------------------------------------------ metrics

    def _metrics(self, batch: Collected, learner: dict[str, float], timings: dict[str, float], total: float,
                 sync_gbps: float) -> dict[str, float]:
        out = {f"reward/{k}/mean": float(np.mean(v)) for k, v in batch.rewards.items()}
        out |= {f"reward/{k}/std": float(np.std(v)) for k, v in batch.rewards.items()}
        adv = np.array([s.advantage for s in batch.samples]) if batch.samples else np.zeros(1)
        out |= {"advantage/mean": float(adv.mean()), "advantage/std": float(adv.std()),
                "advantage/abs_max": float(np.abs(adv).max()),
                "batch/dropped_group_frac": batch.groups_dropped / max(batch.groups_seen, 1),
                "batch/failed_rows": float(batch.failed_rows), "batch/refill_rounds": float(batch.rounds - 1),
                "batch/sequences": float(len(batch.samples)),
                "response/length_mean": batch.response_tokens / max(len(batch.samples), 1),
                "response/truncated_frac": batch.truncated / max(len(batch.samples), 1),
                # The update made `version`; the samples it trained on were drawn from `batch.version`.
                "policy/version": float(self.version), "policy/version_lag": float(self.version - 1 - batch.version),
                "time/step": total, "time/sync_gb_per_s": sync_gbps,
                "faults/restarts": float(self.restarts.total), "faults/nonfinite_skipped": float(self.nonfinite.total),
                "faults/chaos_kills": float(len(self.chaos.kills)),
                "throughput/response_tokens_per_s": batch.response_tokens / total}
        out |= {f"time/{k}": v for k, v in timings.items()}
        out |= {f"learner/{k}": v for k, v in learner.items()}
        out.setdefault("reward/total/mean", 0.0)
        return out

    def _log_images(self, writer: Any) -> None:
        from rl.visualize import GRID_ROWS, prediction_grid

        rows = self.val_rows[:GRID_ROWS]
        if not rows:  # grpo.eval_rows=0: nothing held out to draw
            return
        results = self.pool.generate(rows, n=1, greedy=True)
        texts = [r.samples[0].text if r.samples else "" for r in results]
        image = prediction_grid([r.image for r in rows], texts, [r.answer for r in rows], [r.extent for r in rows])
        writer.add_image("predictions", np.asarray(image), self.step, dataformats="HWC")


def _line(step: int, m: dict[str, float]) -> str:
    return (f"step {step:4d} | reward {m['reward/total/mean']:.3f} (giou {m.get('reward/giou/mean', 0):.3f}, "
            f"label {m.get('reward/label_accuracy/mean', 0):.3f}) | kl {m.get('learner/approx_kl', 0):.4f} | "
            f"clip {m.get('learner/clipfrac', 0):.3f} | len {m['response/length_mean']:.1f} | "
            f"dropped {m['batch/dropped_group_frac']:.2f} | {m['time/step']:.1f}s")


def _table(title: str, metrics: dict[str, float], before: dict[str, float] | None = None) -> str:
    lines = [title, f"  {'':18s} {'greedy':18s}sampled (G per row)"]
    for k in HEADLINE:
        cells = []
        for key in (k, f"sampled/{k}"):
            delta = f" ({metrics[key] - before[key]:+.3f})" if before else ""
            cells.append(f"{metrics[key]:.3f}{delta:9s}")
        lines.append(f"  {k:18s} " + "   ".join(cells))
    return "\n".join(lines)


def sync_owner(cfg: Config) -> str:
    """The run's name in its weight-sync shared-memory files: from its checkpoint folder, so the run's next
    start (a resume) finds what a killed learner of it left, and only that."""
    return hashlib.sha256(str(Path(cfg.checkpoint.dir).resolve()).encode()).hexdigest()[:16]


def write_scalars(writer: Any, metrics: dict[str, float], step: int) -> None:
    """One step's TensorBoard scalars, flushed. TensorBoard writes from a thread of its own and re-raises
    that thread's OSError (a full disk) at a later call without a path: here it stops the run naming the
    folder, instead of some later step failing with `File too large`."""
    try:
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        writer.flush()
    except OSError as exc:
        raise OSError(exc.errno, f"could not write TensorBoard logs to {writer.log_dir}: {exc.strerror or exc}"
                      ) from exc


def write_summary(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def run_grpo(cfg: Config) -> None:
    """The `grpo` stage: validate the layout against the cluster, train, save, report."""
    import ray

    from rl.cluster import connect

    platform = get_platform(cfg.cluster.platform)
    started = connect(cfg, platform)
    try:
        trainer = GRPOTrainer(cfg)  # validates the layout against the cluster before any actor starts
        try:
            result = trainer.run()
        finally:
            trainer.shutdown()
        write_summary(Path(cfg.logging.dir) / "summary.json", result)
    finally:
        if started:
            ray.shutdown()
