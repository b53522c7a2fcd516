"""Sweep files: what `python -m rl.sweep` runs. A YAML file validated by pydantic (a typo in a field is an
error naming it), expanded into runs = variants x seeds, each run's config validated by `load_config`
before any run starts (an override naming an unknown key fails the sweep, naming variant and key).

    name: reward_ablation
    base: conf/default.yaml          # the config every run starts from
    overrides: [pipeline=[grpo]]     # applied to every run
    variants:                        # name -> its overrides (or `grid:` key -> values, every combination)
      all_rewards: []
      no_giou: [rewards.giou=0]
    seeds: [0, 1]                    # each sets every key of `seed_keys`
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rl.core.config import Config, ConfigError, SplitName, load_config

NAME = re.compile(r"^[A-Za-z0-9_.,=+-]+$")  # variant names become folder names


class SweepError(ValueError):
    """A sweep that cannot start; the message names the sweep file field or the variant and config key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepEvaluation(_Strict):
    """How every run's final checkpoint is evaluated (greedy, `rl.evaluate`), with the base config's rewards
    so that `total_reward` means the same for every variant."""

    split: SplitName = "test"
    max_rows: int = Field(default=0, ge=0)  # 0: the whole split
    gallery_rows: int = Field(default=8, ge=0)
    samples: int = Field(default=0, ge=0)  # also N sampled answers per row: the `sampled/*` table
    include_start: bool = True  # also evaluate the checkpoint the runs start from (a `start` row)


class SweepSpec(_Strict):
    name: str = Field(pattern=NAME.pattern)
    base: str | None = None  # config YAML; None: conf/default.yaml
    overrides: list[str] = Field(default_factory=list)
    variants: dict[str, list[str]] | None = None
    grid: dict[str, list[Any]] | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    seed_keys: list[str] = Field(default_factory=lambda: ["seed", "rollout.seed"], min_length=1)
    output_dir: str | None = None  # None: runs/sweeps/<name>
    mode: Literal["local", "ray_job"] = "local"  # ray_job: each run its own Ray job (job_address or RAY_ADDRESS)
    job_address: str | None = None
    evaluation: SweepEvaluation = Field(default_factory=SweepEvaluation)

    @field_validator("overrides")
    @classmethod
    def _dotlist(cls, value: list[str]) -> list[str]:
        _check_dotlist(value, "overrides")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for name, overrides in (value or {}).items():
            if not NAME.match(name):
                raise ValueError(f"variant name {name!r} must match {NAME.pattern} (it names a folder)")
            _check_dotlist(overrides, f"variants.{name}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> SweepSpec:
        if (self.variants is None) == (self.grid is None):
            raise ValueError("give exactly one of `variants` (name -> overrides) and `grid` (key -> values)")
        if self.grid is not None and (not self.grid or not all(self.grid.values())):
            raise ValueError("grid: every key needs at least one value")
        if self.evaluation.include_start and "start" in self.variant_overrides():
            raise ValueError("variant name 'start' is the report's row for the start checkpoint: rename it")
        return self

    def variant_overrides(self) -> dict[str, list[str]]:
        """Variant name -> its overrides; grid points are named `key=value,key=value`."""
        if self.variants is not None:
            return dict(self.variants)
        keys = list(self.grid or {})
        out = {}
        for values in itertools.product(*(self.grid or {}).values()):
            pairs = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, values, strict=True)]
            out[re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(pairs))] = pairs
        return out

    def root(self) -> Path:
        return Path(self.output_dir or f"runs/sweeps/{self.name}").resolve()


def _check_dotlist(overrides: list[str], where: str) -> None:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"{where}: overrides must look like key.path=value, got {bad}")


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@dataclass(frozen=True)
class Run:
    """One training run of the sweep: a variant at a seed, in its own folder."""

    variant: str
    seed: int
    overrides: tuple[str, ...]  # everything after the base config, in order
    dir: Path

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "ckpt"


def load_spec(path: str | Path, extra_overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep file; `extra_overrides` (e.g. from the command line) apply to every run."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: {exc}") from exc
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors()]
        raise SweepError(f"{path}: invalid sweep file:\n  " + "\n  ".join(lines)) from None
    if extra_overrides:
        spec = spec.model_copy(update={"overrides": [*spec.overrides, *extra_overrides]})
    return spec


def expand(spec: SweepSpec) -> list[Run]:
    """Every (variant, seed) run, variants in file order, seeds inner."""
    runs = []
    for variant, overrides in spec.variant_overrides().items():
        for seed in spec.seeds:
            folder = spec.root() / "runs" / variant / f"seed-{seed}"
            paths = (f"logging.dir={folder / 'logs'}", f"checkpoint.dir={folder / 'ckpt'}")
            seeded = tuple(f"{k}={seed}" for k in spec.seed_keys)
            runs.append(Run(variant, seed, (*spec.overrides, *overrides, *seeded, *paths), folder))
    return runs


def run_config(spec: SweepSpec, run: Run) -> Config:
    return load_config(spec.base, list(run.overrides))


def eval_overrides(spec: SweepSpec) -> list[str]:
    e = spec.evaluation
    return [f"data.split={e.split}", f"evaluation.max_rows={e.max_rows}", f"evaluation.gallery_rows={e.gallery_rows}",
            f"evaluation.samples={e.samples}"]


def validate(spec: SweepSpec, runs: list[Run]) -> dict[Run, Config]:
    """Every run's config, or a SweepError naming each variant whose overrides do not make a valid config
    (an unknown key, a wrong type) or whose pipeline trains nothing to evaluate."""
    configs, errors = {}, []
    for run in runs:
        try:
            cfg = run_config(spec, run)
            load_config(spec.base, [*run.overrides, *eval_overrides(spec)])
        except ConfigError as exc:
            errors.append(f"variant {run.variant!r}: {exc}")
            continue
        if "grpo" not in cfg.pipeline:
            errors.append(f"variant {run.variant!r}: pipeline {cfg.pipeline} has no grpo stage to evaluate")
        configs[run] = cfg
    if errors:
        raise SweepError("sweep not started:\n" + "\n".join(dict.fromkeys(errors)))
    return configs
