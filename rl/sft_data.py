"""SFT data and grounding evaluation: JSONL rows -> the prompt/completion dataset TRL's SFTTrainer
collates, and greedy answers on val rows scored by the rewards package.

The prompt text is exactly what the rollout engines feed vLLM (`chat_messages` through the chat template
with the generation prompt), and the completion is the reference answer followed by the EOS token
`<|im_end|>`: what the policy must generate, token for token, and nothing else carries loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rl.core.config import Config
from rl.core.data import DatasetError, GroundingRow, chat_messages, load_configured_split, load_image, split_path

if TYPE_CHECKING:
    import datasets
    import torch

RUN_MARKER = "sft_run.json"  # written last into every SFT checkpoint: its presence means "complete"


@dataclass
class SFTSplit:
    rows: list[GroundingRow]
    lengths: list[int]  # prompt + image + answer + EOS tokens per row
    prompt_lengths: list[int]  # prompt + image tokens per row: what length-grouped batches group by
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" per skipped row


def data_root(cfg: Config) -> Path:
    return Path(cfg.sft.data_path or cfg.data.path)


def sft_split_path(cfg: Config, role: Literal["train", "val"]) -> Path:
    """The file SFT trains on (`data.split`) or holds out (`data.val_split`), in sft.data_path or data.path;
    DatasetError naming the file and the key when it is missing."""
    key = "split" if role == "train" else "val_split"
    return split_path(data_root(cfg), getattr(cfg.data, key), f"data.{key}")


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The chat-templated prompt ending in the assistant header; the same string rollout sends to vLLM."""
    return tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)


def completion_text(tokenizer: Any, answer: str) -> str:
    """The training target: the answer and the EOS that ends the assistant turn (no trailing newline:
    generation stops at EOS, so nothing after it should carry loss)."""
    return answer + tokenizer.eos_token


def image_tokens(processor: Any, row: GroundingRow) -> int:
    """Image placeholder tokens the processor expands this row's image to, from its header only."""
    from PIL import Image

    try:
        with Image.open(row.image) as im:
            width, height = im.size
    except OSError as e:  # load_split checked the image; it changed or vanished since
        raise DatasetError(f"{row.source}:{row.line}: {row.image}: unreadable image ({e})") from e
    ip = processor.image_processor
    return ip.get_number_of_image_patches(height, width) // ip.merge_size**2


def load_sft_split(cfg: Config, role: Literal["train", "val"], processor: Any) -> SFTSplit:
    """Validated rows of the train or val split (`sft_split_path`) with their token lengths.

    Bad rows (load_split's checks, plus rows longer than model.max_model_len, which would otherwise be
    truncated through the middle of an answer) raise DatasetError naming file:line, or with
    data.on_error=skip are dropped and listed in `skipped`."""
    path = sft_split_path(cfg, role)
    loaded = load_configured_split(cfg, path)
    tokenizer = processor.tokenizer
    rows, lengths, prompt_lengths, skipped = [], [], [], list(loaded.skipped)
    for row in loaded.rows:
        prompt = (len(tokenizer(prompt_text(tokenizer, row.prompt), add_special_tokens=False)["input_ids"])
                  - 1 + image_tokens(processor, row))  # the one <|image_pad|> expands to the image tokens
        n = prompt + len(tokenizer(completion_text(tokenizer, row.answer), add_special_tokens=False)["input_ids"])
        if n > cfg.model.max_model_len:
            reason = f"{row.source}:{row.line}: {n} tokens > model.max_model_len ({cfg.model.max_model_len})"
            if cfg.data.on_error == "raise":
                raise DatasetError(reason)
            skipped.append(reason)
            continue
        rows.append(row)
        lengths.append(n)
        prompt_lengths.append(prompt)
    return SFTSplit(rows=rows, lengths=lengths, prompt_lengths=prompt_lengths, skipped=skipped)


def to_dataset(split: SFTSplit, tokenizer: Any, sampling: str) -> datasets.Dataset:
    """TRL's vision prompt-completion format; images are decoded lazily from their paths per batch. The
    "length" column is what `sft.sampling` sorts by: the whole row within one step (batch_rebalance), the
    prompt and image across steps (group_by_length: grouping by answer length would give batches of one
    answer shape, all "No findings." or all 3-object answers, and the model then ignores the image)."""
    import datasets

    data = {
        "images": [[str(row.image)] for row in split.rows],
        "prompt": [prompt_text(tokenizer, row.prompt) for row in split.rows],
        "completion": [completion_text(tokenizer, row.answer) for row in split.rows],
        "length": split.lengths if sampling == "batch_rebalance" else split.prompt_lengths,
    }
    features = datasets.Features({
        "images": datasets.Sequence(datasets.Image()),
        "prompt": datasets.Value("string"),
        "completion": datasets.Value("string"),
        "length": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict(data, features=features)


def make_collator(processor: Any) -> Any:
    """TRL's vision collator with the loss on completion tokens only (prompt, image and padding -> -100)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    return DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)


def generate_answers(model: torch.nn.Module, processor: Any, rows: Sequence[GroundingRow], *,
                     max_new_tokens: int, batch_size: int, synced: bool = False) -> list[str]:
    """Greedy answers (special tokens stripped, as vLLM returns them) for `rows`, batch by batch.

    `synced`: every process of a ZeRO-3 group must keep calling forward until all are done."""
    import torch

    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            inputs = processor(
                text=[prompt_text(tokenizer, row.prompt) for row in chunk],
                images=[[load_image(row.image)] for row in chunk],
                padding=True, padding_side="left", return_tensors="pt",
            ).to(next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     synced_gpus=synced, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def report_skipped(skipped: Sequence[str], split: str, limit: int = 10) -> None:
    """Print skipped rows (data.on_error=skip) with their file:line, so nothing disappears silently."""
    if not skipped:
        return
    print(f"sft: skipped {len(skipped)} bad {split} rows:")
    for reason in skipped[:limit]:
        print(f"  {reason}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more")
