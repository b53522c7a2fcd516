"""The SFT run's pieces around TRL's `SFTTrainer`: grounding evaluation on val before and after training
(metrics and a box-overlay image grid), TensorBoard scalars with the training throughput, progress with an
ETA, the last-step save and the complete-checkpoint marker, and a trainer subclass that keeps the length
column for length-grouped batches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import gather_object
from transformers import TrainerCallback
from transformers.trainer_pt_utils import BatchRebalanceSampler
from trl import SFTTrainer
from trl.models.utils import unwrap_model_for_generation

from rl.core.config import Config
from rl.core.data import GroundingRow
from rl.core.progress import Progress
from rl.evaluate import HEADLINE, grounding_metrics
from rl.image_reliance import image_reliance
from rl.sft_data import RUN_MARKER, generate_answers


class GroundingEval(TrainerCallback):
    """Greedy answers on val rows (`rl.evaluate.grounding_metrics`: AP, IoU, labels, format, duplicates,
    rewards) and whether the coordinates depend on the image (`rl.image_reliance`), when training begins
    and ends; the first rows' answers drawn over their images (`rl.visualize.prediction_grid`, as GRPO
    draws them) unless `logging.image_every` is 0."""

    def __init__(self, cfg: Config, rows: list[GroundingRow], scalars: Any) -> None:
        self.cfg, self.rows, self.scalars = cfg, rows, scalars
        self.trainer: Any = None
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def _run(self, step: int, when: str) -> dict[str, float]:
        if not self.rows:
            return {}
        acc = self.trainer.accelerator
        mine = list(range(acc.process_index, len(self.rows), acc.num_processes))
        # ZeRO-3 shards the weights; generation needs them whole (gathered on every rank, collectively).
        with unwrap_model_for_generation(self.trainer.model_wrapped, acc) as model:
            processor = self.trainer.processing_class
            answers = generate_answers(model, processor, [self.rows[i] for i in mine],
                                       max_new_tokens=self.cfg.rollout.max_tokens,
                                       batch_size=self.cfg.sft.eval_batch_size)
            # Every rank scores all rows (under ZeRO-3 a forward gathers weights with the others): two cheap
            # teacher-forced passes next to generation.
            reliance = image_reliance(model, processor, self.rows, self.cfg.sft.eval_batch_size)
        pairs = sorted(gather_object(list(zip(mine, answers, strict=True))) if acc.num_processes > 1
                       else zip(mine, answers, strict=True))
        metrics = grounding_metrics([a for _, a in pairs], [r.answer for r in self.rows], self.cfg.rewards,
                                    extents=[r.extent for r in self.rows]) | reliance
        self.scalars.val_metrics(step, when, metrics, len(self.rows))
        if self.cfg.logging.image_every and self.scalars.main:
            self._draw([a for _, a in pairs], step)
        return metrics

    def _draw(self, answers: list[str], step: int) -> None:
        from rl.visualize import GRID_ROWS, prediction_grid

        rows = self.rows[:GRID_ROWS]
        image = prediction_grid([r.image for r in rows], answers[:len(rows)], [r.answer for r in rows],
                                [r.extent for r in rows])
        self.scalars.image("predictions", image, step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.before = self._run(state.global_step, "before")
        self.scalars.restart_clock()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.scalars.end_progress()  # the evaluation's lines print below a finished bar
        self.after = self._run(state.global_step, "after")

class Scalars(TrainerCallback):
    """TensorBoard scalars (and the grounding evaluation's images) under sft/, one printed line per log step
    and a progress bar with its ETA (`rl.core.progress`: plain lines in a log), on rank 0 only."""

    TAGS = {"loss": "loss", "eval_loss": "eval_loss", "learning_rate": "lr", "grad_norm": "grad_norm",
            "mean_token_accuracy": "token_accuracy", "eval_mean_token_accuracy": "eval_token_accuracy"}

    def __init__(self, log_dir: Path, main: bool) -> None:
        self.log_dir, self.main = log_dir, main
        self.writer: Any = None
        self.progress: Progress | None = None
        self.busy = self.window_busy = 0.0  # seconds inside training steps (incl. data loading)
        self.samples = self.window_samples = 0
        self.mark = time.perf_counter()

    def _tensorboard(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def _write(self, tag: str, value: float, step: int) -> None:
        if self.main:
            self._tensorboard().add_scalar(f"sft/{tag}", value, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """A PIL image under sft/`tag` (rank 0 only)."""
        if self.main:
            self._tensorboard().add_image(f"sft/{tag}", np.asarray(image), step, dataformats="HWC")

    def restart_clock(self) -> None:
        self.mark = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.main:  # after GroundingEval's first evaluation (the callbacks run in order)
            self.progress = Progress(state.max_steps, "sft", initial=state.global_step)

    def end_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.busy += now - self.mark
        self.window_busy += now - self.mark
        self.samples += batch
        self.window_samples += batch
        self.mark = now
        if self.progress is not None:
            self.progress.update(1)

    # Evaluation and checkpoint saves run between steps: keep them out of the throughput.
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restart_clock()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restart_clock()

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.busy if self.busy else 0.0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        step = state.global_step
        for key, tag in self.TAGS.items():
            if isinstance(logs.get(key), int | float):
                self._write(tag, float(logs[key]), step)
        parts = []
        if "loss" in logs and self.window_busy:
            rate = self.window_samples / self.window_busy
            self._write("samples_per_s", rate, step)
            self.window_busy, self.window_samples = 0.0, 0
            parts = [f"loss {logs['loss']:.4f}", f"lr {logs.get('learning_rate', 0):.2e}", f"{rate:.1f} samples/s"]
        if "eval_loss" in logs:
            parts.append(f"eval_loss {logs['eval_loss']:.4f}")
        if parts and self.progress is not None:  # rank 0, while training
            if "loss" in logs:
                self.progress.update(0, loss=float(logs["loss"]))
            self.progress.write(f"sft step {step}/{state.max_steps}  " + "  ".join(parts))
        self.restart_clock()

    def val_metrics(self, step: int, when: str, metrics: dict[str, float], rows: int) -> None:
        for name, value in metrics.items():
            self._write(f"val/{name}", value, step)
        if self.main:
            shown = "  ".join(f"{name} {metrics[name]:.3f}" for name in HEADLINE)
            print(f"sft val grounding {when} (step {step}, {rows} rows, greedy): {shown}\n"
                  f"  coordinate loss {metrics['coord_loss']:.3f} with the own image, "
                  f"{metrics['coord_loss_shuffled']:.3f} with another row's (image_reliance "
                  f"{metrics['image_reliance']:+.3f})", flush=True)

    def close(self) -> None:
        self.end_progress()
        if self.writer is not None:
            self.writer.close()


class Finish(TrainerCallback):
    """Always evaluate and save at the last step; mark each saved checkpoint complete (written last)."""

    def __init__(self, fingerprint: str, has_val: bool) -> None:
        self.fingerprint, self.has_val = fingerprint, has_val

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True  # the final training loss, whatever log_every is
            control.should_save = True
            control.should_evaluate = self.has_val

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:  # the main process; the Trainer saved into checkpoint-<global_step>
            marker = {"fingerprint": self.fingerprint, "step": state.global_step}
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / RUN_MARKER
            path.write_text(json.dumps(marker) + "\n", encoding="utf-8")


class GroundingSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, keeping the length column that the length-aware samplers need, and drawing
    batch_rebalance's rows with the run's seed."""

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the precomputed "length" column: the sampler reads it after unused columns are dropped
        # (the collator ignores it).
        super()._set_signature_columns_if_needed()
        if "length" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "length"]

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):  # transformers leaves it at its own fixed seed
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler
