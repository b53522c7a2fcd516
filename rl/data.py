"""`python -m rl.data check FILE.jsonl ...` and `python -m rl.data convert FORMAT SRC --out OUT.jsonl`:
the data command line, above the library it drives (rl/core/data.py reads and validates rows, rl/core/convert.py
converts foreign datasets)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rl.core.convert import add_convert_parser, run_convert
from rl.core.data import MAX_IMAGE_PIXELS, load_split
from rl.core.frames import add_frame_arguments, frame_from_arguments


def main(argv: Sequence[str] | None = None) -> int:
    """`check FILE.jsonl ...`: one `FILE:LINE: reason` line per bad row, then `N rows, K bad`; exit 1 if
    any row is bad. The validation training runs (`data.on_error`), plus a full decode of every image.
    `convert FORMAT SRC --out OUT.jsonl`: foreign datasets to our rows (rl/core/convert.py)."""
    parser = argparse.ArgumentParser(prog="python -m rl.data",
                                     description="Validate or convert grounding datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate JSONL files without training")
    check.add_argument("files", nargs="+", type=Path)
    add_frame_arguments(check, "of the boxes")
    check.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS, help="largest image, width x height")
    check.add_argument("--image-root", action="append", default=[], type=Path, metavar="DIR",
                       help="a folder image paths may point into besides the file's own (data.image_roots); "
                            "repeatable")
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "convert":
        return run_convert(args)
    rows = bad = 0
    frame = frame_from_arguments(args)
    for file in args.files:
        try:
            loaded = load_split(file, frame=frame, on_error="skip", max_pixels=args.max_pixels, decode=True,
                                image_roots=args.image_root)
        except OSError as e:
            print(f"{file}: cannot read ({e.strerror or e})")
            bad += 1
            continue
        for line in loaded.skipped:
            print(line)
        rows += len(loaded.rows) + len(loaded.skipped)
        bad += len(loaded.skipped)
    print(f"{rows} rows, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
