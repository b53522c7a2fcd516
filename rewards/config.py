"""`RewardConfig`: the weights and knobs of the grounding reward, plus extra rewards by import path.

A plain (frozen) dataclass so that `rewards/` stays free of pydantic while the trainer's pydantic tree
embeds it as `cfg.rewards`; `RewardConfig.from_dict` is the strict constructor for YAML/dict input.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import math
import re
import sys
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
    added to `total` with that weight (for reward ablations). Validation checks the names without
    importing anything (`check_extra_path`); the module is imported where rewards are computed
    (`resolve_extra`).
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
            check_extra_path(path)  # fail at config time, not mid-run; importing is left to the scorers

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


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _split_extra(path: Any) -> tuple[str, str]:
    module_name, sep, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not (sep and _DOTTED.fullmatch(module_name) and _DOTTED.fullmatch(attr)):
        raise ValueError(f"rewards.extra key {path!r} must look like 'package.module:function'")
    return module_name, attr


def _module_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where `name` would be imported from, without running any code: importlib.util.find_spec on a
    submodule would import (run) its parent packages, so below the top level the packages' folders are
    searched directly, as the import system does for a package that does not change its __path__."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # ValueError: imported already, without a spec (__main__)
        return None
    for i in range(len(rest)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join([top, *rest[: i + 1]]),
                                                        list(spec.submodule_search_locations))
    return spec


def check_extra_path(path: str) -> None:
    """Vet an extra reward's name without importing it: the syntax, a module that exists, and one that is
    not Python's standard library. A reward is the user's own code or an installed package; a stdlib
    module (`os:system`, `subprocess:run`, `builtins:exec`) never is, and a config must not be able to
    point the scorers at one."""
    module_name, _ = _split_extra(path)
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ValueError(f"rewards.extra {path!r}: {top!r} is Python's standard library, not a reward module "
                         "(an extra reward comes from your own code or an installed package)")
    if _module_spec(module_name) is None:
        raise ValueError(f"rewards.extra {path!r}: no module {module_name!r} on the import path")


@functools.lru_cache(maxsize=256)
def resolve_extra(path: str) -> ExtraReward:
    """Import "package.module:function" (where rewards are computed, never while a config is validated)
    and check that it is a reward: defined in the package it is named by (not `mine:os.system` re-exported
    from elsewhere) and callable as `function(completion, reference)`. Every failure names the path."""
    check_extra_path(path)
    module_name, attr = _split_extra(path)
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
    owner = getattr(target, "__module__", None)
    if not isinstance(owner, str) or owner.split(".")[0] != module_name.split(".")[0]:
        raise ValueError(f"rewards.extra {path!r} is defined in module {owner!r}, outside package "
                         f"{module_name.split('.')[0]!r}: a reward must be defined in the package it is named by")
    try:
        inspect.signature(target).bind("completion", "reference")
    except (TypeError, ValueError) as exc:  # ValueError: a builtin without an inspectable signature
        raise ValueError(f"rewards.extra {path!r} must be callable as function(completion, reference) -> float: "
                         f"{exc}") from exc
    return target
