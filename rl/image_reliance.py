"""Does the model look? Teacher-forced loss of the reference answers with each row's own image and with
another row's image.

A model that reads box positions from the image loses much more on the coordinate digits when the image
is swapped; a model that has only learned where boxes usually are loses nothing, however good its format
and labels. Grounding rewards and IoU can rise without looking (fewer repeated boxes, the mean box), this
cannot. Reported with the held-out metrics of SFT, before and after.

    python -m rl.image_reliance CHECKPOINT [--data data/synthetic/val.jsonl] [--rows 64]

`coord_loss` / `coord_loss_shuffled`: mean cross-entropy (nats) of the answers' digit tokens with the own /
the next row's image; `image_reliance` is their difference. `text_loss*`: the same for every other answer
token (labels, tags, "No findings.").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl.core.data import GroundingRow, load_image, load_split
from rl.sft_data import completion_text, make_collator, prompt_text


def answer_losses(model: Any, processor: Any, rows: Sequence[GroundingRow], images: Sequence[Any],
                  batch_size: int = 32) -> dict[str, float]:
    """Mean teacher-forced cross-entropy of the rows' answers given `images` (one per row), split into
    coordinate (digit) tokens and the rest."""
    import torch

    tokenizer = processor.tokenizer
    collate = make_collator(processor)
    digit: dict[int, bool] = {}  # token id -> a digit? (decoded per id seen: real vocabularies are large)
    sums = {"coord": 0.0, "text": 0.0}
    counts = {"coord": 0, "text": 0}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate([{"images": [image], "prompt": prompt_text(tokenizer, row.prompt),
                              "completion": completion_text(tokenizer, row.answer)}
                             for row, image in zip(rows[start:start + batch_size], images[start:start + batch_size],
                                                   strict=True)])
            labels = batch.pop("labels")[:, 1:]
            batch = batch.to(next(model.parameters()).device)
            with torch.no_grad():
                logits = model(**batch).logits[:, :-1].float().cpu()
            scored = labels != -100
            ce = torch.nn.functional.cross_entropy(logits[scored], labels[scored], reduction="none")
            targets = labels[scored].tolist()
            for i in set(targets) - digit.keys():
                digit[i] = tokenizer.decode([i]).strip().isdigit()
            is_digit = torch.tensor([digit[i] for i in targets], dtype=torch.bool)
            for role, mask in (("coord", is_digit), ("text", ~is_digit)):
                sums[role] += float(ce[mask].sum())
                counts[role] += int(mask.sum())
    finally:
        model.train(was_training)
    return {f"{role}_loss": sums[role] / counts[role] if counts[role] else 0.0 for role in sums}


def image_reliance(model: Any, processor: Any, rows: Sequence[GroundingRow], batch_size: int = 32
                   ) -> dict[str, float]:
    """`answer_losses` with each row's own image and with the next row's (a derangement for >= 2 rows)."""
    images = [load_image(row.image) for row in rows]
    own = answer_losses(model, processor, rows, images, batch_size)
    swapped = answer_losses(model, processor, rows, images[1:] + images[:1], batch_size)
    return {**own, **{f"{k}_shuffled": v for k, v in swapped.items()},
            "image_reliance": swapped["coord_loss"] - own["coord_loss"]}


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    parser = argparse.ArgumentParser(prog="python -m rl.image_reliance", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="HF checkpoint folder (weights + processor)")
    parser.add_argument("--data", default="data/synthetic/val.jsonl", help="JSONL split to score")
    parser.add_argument("--rows", type=int, default=64, help="first N rows")
    args = parser.parse_args(argv)
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint, dtype=torch.float32)
    rows = load_split(Path(args.data)).rows[: args.rows]
    for name, value in image_reliance(model, processor, rows).items():
        print(f"{name:22s} {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
