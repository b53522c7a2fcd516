"""The `preview` stage: sample grounded answers for a few held-out images with vLLM and print them
next to the reference and their reward, so a run ends by showing what the model now does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from actors.rollout import build_engine, engine_inputs, sampling_params
from rewards import score
from rl.core.config import Config
from rl.core.data import load_configured_split
from rl.core.platform import apply_env, get_platform

if TYPE_CHECKING:
    from vllm import LLM

PREVIEW_ROWS = 4


def run_preview(cfg: Config, split: str | None = None, num_rows: int = PREVIEW_ROWS, engine: LLM | None = None
                ) -> list[dict]:
    """Greedy answers for the first `num_rows` rows of `split` (default: data.val_split); one record per row.
    `engine`: an already running engine on `cfg.model` (tests share one); else one is started."""
    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    split = split or cfg.data.val_split
    rows = load_configured_split(cfg, Path(cfg.data.path) / f"{split}.jsonl").rows[:num_rows]
    engine = engine or build_engine(cfg.model, cfg.rollout, platform)
    outputs = engine.generate(engine_inputs(rows, engine.get_tokenizer()),
                              sampling_params(cfg.rollout, n=1, greedy=True), use_tqdm=False)
    records = []
    print(f"\n=== {len(rows)} {split} images, greedy answers from {cfg.model.path} (vLLM) ===")
    for row, out in zip(rows, outputs, strict=True):
        answer = out.outputs[0].text
        reward = score(answer, row.answer, cfg.rewards)
        records.append({"image": str(row.image), "answer": answer, "reference": row.answer, **reward})
        print(f"image     {row.image.name}\nreference {row.answer}\nmodel     {answer!r}\n"
              f"reward    total {reward['total']:.3f}  label {reward['label_accuracy']:.2f}  "
              f"giou {reward['giou']:.2f}  tags {reward['tag_count']:.2f}\n")
    return records
