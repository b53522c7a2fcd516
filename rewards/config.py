"""`RewardConfig`: the weights and knobs of the grounding reward, plus extra rewards by import path.

A plain (frozen) dataclass so that `rewards/` stays free of pydantic while the trainer's pydantic tree
embeds it as `cfg.rewards`; `RewardConfig.from_dict` is the strict constructor for YAML/dict input.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The components every score carries, in the order they are reported.
COMPONENTS: tuple[str, ...] = (
    "label_accuracy",
    "giou",
    "tag_count",
    "overlap_penalty",
    "overlong_penalty",
)
KEYS: tuple[str, ...] = (*COMPONENTS, "total")

ExtraReward = Callable[[str, str], float]


@dataclass(frozen=True)
class RewardConfig:
    """Weights per component (total = sum of weight x component) and the contract's parameters.

    `extra` maps "package.module:function" to a weight. The function is called per sample as
    `function(completion, reference) -> float`; its value is reported under the path as key and
    added to `total` with that weight (for reward ablations).
    """

    label_accuracy: float = 1.0
    giou: float = 1.0
    tag_count: float = 0.5
    overlap_penalty: float = 1.0
    overlong_penalty: float = 0.0
    overlap_threshold: float = 0.5
    max_boxes: int = 100
    overlong_max_tokens: int | None = None
    overlong_buffer: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            _check_finite(name, getattr(self, name))
        _check_finite("overlap_threshold", self.overlap_threshold)
        if not 0.0 <= self.overlap_threshold < 1.0:
            # t = 1 would divide by zero in (IoU - t) / (1 - t).
            raise ValueError(f"rewards.overlap_threshold must be in [0, 1), got {self.overlap_threshold}")
        if not _is_int(self.max_boxes) or self.max_boxes < 1:
            raise ValueError(f"rewards.max_boxes must be an integer >= 1, got {self.max_boxes!r}")
        self._check_overlong()
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"rewards.extra must map 'module:function' to a weight, got {self.extra!r}")
        for path, weight in self.extra.items():
            _check_finite(f"extra[{path!r}]", weight)
            resolve_extra(path)  # fail at config time, not mid-run

    def _check_overlong(self) -> None:
        max_tokens, buffer = self.overlong_max_tokens, self.overlong_buffer
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise ValueError(f"rewards.overlong_max_tokens must be an integer >= 1 or None, got {max_tokens!r}")
        if buffer is None:
            return
        if not _is_int(buffer) or buffer < 0:
            raise ValueError(f"rewards.overlong_buffer must be an integer >= 0 or None, got {buffer!r}")
        if max_tokens is not None and buffer > max_tokens:
            raise ValueError(
                f"rewards.overlong_buffer ({buffer}) must not exceed rewards.overlong_max_tokens ({max_tokens})"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardConfig:
        """Strict constructor: unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown rewards key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(data)
        if values.get("extra") is not None:
            values["extra"] = {str(k): v for k, v in dict(values["extra"]).items()}
        return cls(**values)

    def weights(self) -> dict[str, float]:
        """Weight of every reported component, extras included, keyed as in the score dicts."""
        out = {name: float(getattr(self, name)) for name in COMPONENTS}
        out.update((path, float(w)) for path, w in self.extra.items())
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"rewards.{name} must be a finite number, got {value!r}")


@functools.lru_cache(maxsize=256)
def resolve_extra(path: str) -> ExtraReward:
    """Import "package.module:function"; every failure names the path."""
    module_name, sep, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ValueError(f"rewards.extra key {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is a config error about this path
        raise ValueError(f"rewards.extra {path!r}: cannot import module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"rewards.extra {path!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"rewards.extra {path!r} is not callable")
    return target
