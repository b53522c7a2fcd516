"""Front door: `python -m rl.launch [--config conf/X.yaml] key.path=value ...`.

Loads and validates the whole config first (a bad key fails before anything starts), prepares the
model and data (the offline tiny model and synthetic data when configured), then runs the stages of
`pipeline` in order. Under `ray job submit` it joins that cluster (RAY_ADDRESS); alone it starts a
local one where a stage needs Ray.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rl.config import Config, ConfigError, load_config


def prepare(cfg: Config) -> None:
    """Make sure the model checkpoint and the dataset the config names exist."""
    from rl.data import ensure_dataset
    from rl.tiny import ensure_model

    ensure_model(cfg.model)
    ensure_dataset(cfg.data)


def _preview(cfg: Config) -> None:
    from rl.preview import run_preview

    run_preview(cfg)


# Stage name -> runner. Later stages (sft, grpo) register here as they land.
STAGES: dict[str, Callable[[Config], None]] = {"preview": _preview}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rl.launch",
        description="Grounded GRPO for Qwen3-VL: run the configured pipeline (stages: "
        + ", ".join(STAGES) + ").",
        epilog="Example: python -m rl.launch --config conf/default.yaml grpo.group_size=8 rollout.num_workers=2",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: conf/default.yaml)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved, validated config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="omegaconf dotlist overrides, applied after the YAML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: overrides must look like key.path=value, got: {' '.join(bad)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    prepare(cfg)
    for stage in cfg.pipeline:
        STAGES[stage](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
