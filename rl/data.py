"""`python -m rl.data check FILE.jsonl ...` and `python -m rl.data convert FORMAT SRC --out OUT.jsonl`:
the data command line, above the library it drives (rl/core/data.py reads and validates rows, rl/core/convert.py
converts foreign datasets)."""

from __future__ import annotations

import argparse
import string
from collections.abc import Sequence
from pathlib import Path

from rl.core.convert import (
    ORIGINAL_PIXELS,
    REC_PROMPT,
    ConvertError,
    Options,
    PixelKeys,
    Report,
    convert_coco,
    convert_pixels,
    convert_rec,
    write_jsonl,
)
from rl.core.data import MAX_IMAGE_PIXELS, answer_instruction, load_split, make_prompt
from rl.core.frames import (
    QWEN25_MAX_PIXELS,
    QWEN25_MERGE_SIZE,
    QWEN25_MIN_PIXELS,
    QWEN25_PATCH_SIZE,
    CoordFrame,
    Resize,
    add_frame_arguments,
    frame_from_arguments,
)


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



# ---------------------------------------------------------------- the command


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """`convert FORMAT SRC ...`: one sub-command per format, each with its own --help."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", type=Path, help="the source file")
    common.add_argument("--out", type=Path, required=True, help="the JSONL to write (kept if it exists)")
    common.add_argument("--images", type=Path, help="folder the source's image paths are relative to (default: SRC's)")
    add_frame_arguments(common, "to write")
    common.add_argument("--out-of-bounds", choices=("clip", "reject"), default="clip",
                        help="boxes reaching outside the image: clip them (counted) or reject the record")
    common.add_argument("--force", action="store_true", help="replace OUT if it exists")
    common.add_argument("--strict", action="store_true", help="write nothing and exit 1 if any record fails")
    resized = argparse.ArgumentParser(add_help=False)
    resized.add_argument("--pixel-frame", choices=("original", "qwen25-resized"), default="original",
                         help="boxes count pixels of the original image, or of the image as a Qwen2.5-VL "
                              "processor resized it (smart_resize)")
    resized.add_argument("--min-pixels", type=int, default=QWEN25_MIN_PIXELS, help="the processor's min_pixels")
    resized.add_argument("--max-pixels", type=int, default=QWEN25_MAX_PIXELS, help="the processor's max_pixels")
    resized.add_argument("--patch-size", type=int, default=QWEN25_PATCH_SIZE, help="the processor's patch_size")
    resized.add_argument("--merge-size", type=int, default=QWEN25_MERGE_SIZE, help="the processor's merge_size")
    convert = sub.add_parser("convert", help="turn COCO, RefCOCO/VLM-R1 or pixel-box data into JSONL rows")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    coco = formats.add_parser("coco", parents=[common], help="COCO detection json (+ image folder)")
    coco.add_argument("--prompt", help="prompt of every row (default: the synthetic data's, in --frame)")
    coco.add_argument("--crowd", choices=("skip", "keep"), default="skip",
                      help="iscrowd=1 boxes: leave them out (counted) or keep them as boxes")
    rec = formats.add_parser("refcoco", parents=[common, resized], help="RefCOCO / VLM-R1 REC or OVD jsonl")
    rec.add_argument("--prompt", help=f"prompt template; {{phrase}} and {{frame}} (relative frames) are filled "
                                      f"in (default: {REC_PROMPT!r}; 'coordinates in pixels.' for qwen25_pixels)")
    pixels = formats.add_parser("pixels", parents=[common, resized], help="jsonl or csv, one pixel box a record")
    pixels.add_argument("--prompt", help="prompt of every row (default: the synthetic data's, in --frame)")
    pixels.add_argument("--box-format", choices=("xyxy", "xywh"), default="xyxy", help="how the 4 numbers read")
    pixels.add_argument("--image-key", default="image", help="key / column of the image path")
    pixels.add_argument("--label-key", default="label", help="key / column of the label")
    pixels.add_argument("--box-key", default="bbox", help="jsonl: key of the [4 numbers] box")
    pixels.add_argument("--box-columns", default="x1,y1,x2,y2", help="csv: the 4 box columns, comma-separated")


def run_convert(args: argparse.Namespace) -> int:
    """Convert, print every record not converted and a summary; exit 1 when nothing converted, or with
    --strict when anything failed (then nothing is written)."""
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; pass --force to replace it")
        return 1
    frame = frame_from_arguments(args)
    prompt = args.prompt or (_rec_prompt(frame) if args.format == "refcoco" else make_prompt(frame))
    pixels = ORIGINAL_PIXELS
    if getattr(args, "pixel_frame", "original") == "qwen25-resized":
        pixels = CoordFrame(None, Resize(args.patch_size * args.merge_size, args.min_pixels, args.max_pixels))
    opts = Options(images=args.images or args.src.parent, out_dir=args.out.parent, frame=frame,
                   prompt=prompt, pixels=pixels, clip=args.out_of_bounds == "clip")
    report = Report()
    try:
        if args.format == "refcoco":
            _check_template(prompt, frame)
        if args.format == "coco":
            convert_coco(args.src, opts, report, crowd=args.crowd)
        elif args.format == "refcoco":
            convert_rec(args.src, opts, report)
        else:
            keys = PixelKeys(args.image_key, args.label_key, args.box_key, tuple(args.box_columns.split(",")),
                             args.box_format == "xywh")
            if len(keys.columns) != 4:
                raise ConvertError(f"--box-columns needs 4 names, got {args.box_columns!r}")
            convert_pixels(args.src, opts, report, keys)
    except ConvertError as e:
        print(e)
        return 1
    for line in (*report.problems, *report.clipped, *report.notes):
        print(line)
    failed = not report.rows or (args.strict and report.problems)
    if not failed:
        write_jsonl(report.rows, args.out, args.force)
    print(_summary(report, args, written=not failed, opts=opts))
    return 1 if failed else 0


def _rec_prompt(frame: CoordFrame) -> str:
    """The default REC template: REC_PROMPT, whose {frame} a relative frame fills with its N."""
    return REC_PROMPT if frame.relative else "Find {phrase} in the image. " + answer_instruction(frame)


def _check_template(prompt: str, frame: CoordFrame) -> None:
    try:
        prompt.format(phrase="", frame=0)
    except (KeyError, IndexError, ValueError) as e:
        raise ConvertError(f"--prompt {prompt!r}: only {{phrase}} and {{frame}} may be filled in ({e!r})") from e
    if frame.per_image and "frame" in {name for _, name, _, _ in string.Formatter().parse(prompt)}:
        raise ConvertError(f"--prompt {prompt!r}: {{frame}} has no one value in the {frame.name} frame (each image "
                           "has its own size); write the words, e.g. 'coordinates in pixels'")


def _summary(report: Report, args: argparse.Namespace, written: bool, opts: Options) -> str:
    where = f"wrote {args.out}" if written else "wrote nothing"
    text = (f"{len(report.rows)} rows converted ({report.negatives} without objects), {len(report.problems)} "
            f"not converted, {len(report.clipped)} box(es) clipped, {len(report.notes)} box(es) left out; {where}")
    if written and any(Path(r["image"]).is_absolute() for r in report.rows):
        text += (f"\nimages lie outside {opts.out_dir}: their paths are absolute; train with "
                 f"data.image_roots=[{opts.images.resolve()}]")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
