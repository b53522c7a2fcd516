"""Front door: `python -m rl.launch [--config conf/X.yaml] key.path=value ...`.

Loads and validates the whole config first (a bad key fails before anything starts), prepares the
model and data (the offline tiny model and synthetic data when configured), then runs the stages of
`pipeline` in order. Under `ray job submit` it joins that cluster (RAY_ADDRESS); alone it starts a
local one where a stage needs Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rl.core.config import Config, ConfigError, load_config


def prepare(cfg: Config, stages: Sequence[str] = ()) -> None:
    """Make sure the model checkpoint, the dataset and every split file `stages` read exist, before Ray or
    any actor starts: a bad model.path is a ConfigError, a missing split a DatasetError naming the file."""
    from rl.core.data import split_path
    from rl.core.model_path import check_frame
    from rl.core.progress import quiet_library_bars
    from rl.core.synthetic import ensure_dataset
    from rl.sft_data import sft_split_path
    from rl.tiny import ensure_model

    quiet_library_bars()  # the tiny model's save, and every later stage of this process
    ensure_model(cfg.model)
    if cfg.model.tiny is None:
        check_frame(Path(cfg.model.path), cfg.frame())
    ensure_dataset(cfg.data)  # data.split: what rl.evaluate answers, what GRPO trains on
    if "sft" in stages:
        sft_split_path(cfg, "train")
        sft_split_path(cfg, "val")
    if "preview" in stages or ("grpo" in stages and cfg.grpo.eval_rows):
        split_path(cfg.data.path, cfg.data.val_split, "data.val_split")


def _stage(target: str) -> Callable[[Config], Config | None]:
    """The runner `module:function`, imported when it runs: the stage modules sit above this front door (each
    offers its own `python -m` through it), so naming them here by string keeps the imports one-way, and
    `--help` pulls in no torch."""
    module, function = target.split(":")

    def run(cfg: Config) -> Config | None:
        return getattr(importlib.import_module(module), function)(cfg)

    return run


# Stage name -> runner. A runner may return an updated Config for the stages after it (sft does: they
# start from its checkpoint, model.path = sft.output_dir); None keeps the config as it was.
STAGES: dict[str, Callable[[Config], Config | None]] = {
    "preview": _stage("rl.preview:run_preview"), "sft": _stage("rl.sft:run_sft"), "grpo": _stage("rl.trainer:run_grpo")}


def build_parser(prog: str = "python -m rl.launch", description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or "Grounded GRPO for Qwen3-VL: run the configured pipeline (stages: "
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


def parse_config(argv: list[str] | None, prog: str, description: str | None = None
                 ) -> tuple[argparse.Namespace, Config | None]:
    """The command line and its validated config; None (after printing the error) when it is bad.
    Shared by every `python -m rl.X [--config Y] key=value` entry point."""
    args = build_parser(prog, description).parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: overrides must look like key.path=value, got: {' '.join(bad)}", file=sys.stderr)
        return args, None
    try:
        return args, load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return args, None


def main(argv: list[str] | None = None, *, stages: list[str] | None = None, prog: str = "python -m rl.launch") -> int:
    """Run `stages` (default: the config's pipeline); `python -m rl.sft` is this with stages=["sft"]."""
    args, cfg = parse_config(argv, prog)
    if cfg is None:
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from actors.placement import PlacementError
    from rl.core.data import DatasetError

    try:
        stages = stages or cfg.pipeline
        if "grpo" in stages:  # a layout this machine cannot hold fails before SFT's hours
            from rl.cluster import check_local_layout
            from rl.core.platform import get_platform

            check_local_layout(cfg, get_platform(cfg.cluster.platform))
        prepare(cfg, stages)
        for stage in stages:
            cfg = STAGES[stage](cfg) or cfg
    except (ConfigError, PlacementError) as exc:  # found once a stage looks (sft.resume names nothing, a layout)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:  # a bad row (file:line) or an image that does not load (its path)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
