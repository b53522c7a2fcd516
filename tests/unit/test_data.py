"""rl/core/data.py: the synthetic generator is deterministic and its boxes match the pixels; the loader
names the file and line of every bad row, or skips and counts it."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rl.core.data import (
    NO_FINDINGS,
    DatasetError,
    format_answer,
    load_image,
    load_split,
    parse_reference_boxes,
)
from rl.core.synthetic import BACKGROUND, CLASSES, MANIFEST, SYNTHETIC_PROMPT, generate_synthetic, palette

SMALL = {"num_train": 12, "num_val": 4, "num_test": 4}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", **SMALL, seed=7)
    generate_synthetic(tmp_path / "b", **SMALL, seed=7)
    generate_synthetic(tmp_path / "c", **SMALL, seed=8)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b  # JSONL, PNG bytes and manifest alike
    assert a["train.jsonl"] != c["train.jsonl"]
    pixels = {n: [np.asarray(Image.open(p)) for p in sorted((tmp_path / n / "images/train").glob("*"))]
              for n in "ac"}
    assert sum(not np.array_equal(x, y) for x, y in zip(pixels["a"], pixels["c"], strict=True)) > 6


def test_an_image_does_not_depend_on_split_sizes(tmp_path: Path) -> None:
    small = generate_synthetic(tmp_path / "s", num_train=3, num_val=1, num_test=1, seed=3)
    big = generate_synthetic(tmp_path / "b", num_train=9, num_val=2, num_test=2, seed=3)
    for split in ("train", "val", "test"):
        first = small[split].read_text().splitlines()
        assert big[split].read_text().splitlines()[: len(first)] == first
    image = "images/train/000002.png"
    assert (tmp_path / "s" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


def _check_boxes_against_pixels(image: np.ndarray, answer: str, frame: int) -> None:
    size = image.shape[0]
    colours = palette(CLASSES)
    covered = {label: np.zeros(image.shape[:2], dtype=bool) for label in CLASSES}
    for label, boxes in parse_reference_boxes(answer):
        for box in boxes:
            # Exact inverse of x = round(px / size * frame) while frame > size; then check the forward way.
            x1, y1, x2, y2 = pixel_box = [round(v * size / frame) for v in box]
            assert box == [int(np.floor(p / size * frame + 0.5)) for p in pixel_box]
            inside = np.all(image[y1:y2, x1:x2] == colours[label], axis=-1)
            # The object's colour touches every edge of its box: the box is tight.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), box
            covered[label][y1:y2, x1:x2] = True
    any_box = np.logical_or.reduce(list(covered.values()))
    assert np.all(image[~any_box] == BACKGROUND)  # outside all boxes: only background
    for label, colour in colours.items():  # every pixel of a class lies in a box of that class
        assert not (np.all(image == colour, axis=-1) & ~covered[label]).any(), label
    packed = image.astype(np.int32) @ [65536, 256, 1]  # one int per RGB triple
    allowed = np.array([BACKGROUND, *colours.values()]) @ [65536, 256, 1]
    assert np.isin(packed, allowed).all()  # no stray colours


@pytest.mark.parametrize(("image_size", "frame", "count"),
                         [(128, 1000, 150), (256, 1000, 60), (160, 500, 60)])
def test_boxes_are_the_drawn_objects(tmp_path: Path, image_size: int, frame: int, count: int) -> None:
    paths = generate_synthetic(tmp_path, num_train=count, num_val=0, num_test=0, image_size=image_size,
                               frame=frame, seed=1)
    rows = load_split(paths["train"], frame=frame).rows
    counts, multi_box_groups, overlaps = Counter(), 0, 0
    for row in rows:
        assert row.prompt == SYNTHETIC_PROMPT
        _check_boxes_against_pixels(np.asarray(load_image(row.image)), row.answer, frame)
        groups = parse_reference_boxes(row.answer)
        boxes = np.array([b for _, bs in groups for b in bs]).reshape(-1, 4)
        counts[len(boxes)] += 1
        multi_box_groups += any(len(bs) > 1 for _, bs in groups)
        for i in range(len(boxes)):
            for j in range(i):
                lo, hi = np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(boxes[i, 2:], boxes[j, 2:])
                overlaps += bool(np.all(hi > lo))
    assert set(counts) == {0, 1, 2, 3}  # 0-3 objects per image
    assert multi_box_groups > 0 and overlaps > 0  # same-class repeats and overlapping objects occur
    assert {label for row in rows for label, _ in parse_reference_boxes(row.answer)} == set(CLASSES)


def test_crowded_images_keep_every_object_visible(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path, num_train=40, num_val=0, num_test=0, image_size=96, max_objects=8)
    rows = load_split(paths["train"]).rows
    assert max(sum(len(b) for _, b in parse_reference_boxes(r.answer)) for r in rows) >= 6
    for row in rows:
        _check_boxes_against_pixels(np.asarray(load_image(row.image)), row.answer, 1000)


def test_min_objects_gives_exactly_one_object_per_image(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path, num_train=30, num_val=0, num_test=0, min_objects=1, max_objects=1)
    counts = [sum(len(b) for _, b in parse_reference_boxes(r.answer)) for r in load_split(paths["train"]).rows]
    assert counts == [1] * 30
    # The default range (0) draws the same images as before the key existed: the first answers of seed 0.
    default = generate_synthetic(tmp_path / "default", num_train=3, num_val=0, num_test=0)
    assert [r.answer for r in load_split(default["train"]).rows] == [
        "Nodule <box>[[719, 547, 836, 711]]</box> Fracture <box>[[227, 31, 484, 219], [680, 203, 953, 477]]</box>",
        "Nodule <box>[[289, 86, 453, 234]]</box> Mass <box>[[680, 445, 797, 672]]</box> Fracture <box>[[125, 86, 320, "
        "477]]</box>",
        "No findings."]


def test_splits_hold_different_images(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, num_train=20, num_val=20, num_test=20)
    contents = [p.read_bytes() for p in (tmp_path / "images").rglob("*.png")]
    assert len(contents) == 60
    assert len(set(contents)) > 45  # only empty images may repeat across splits


@pytest.mark.parametrize("bad", [{"image_size": 128, "frame": 100}, {"image_size": 8}, {"max_objects": -1},
                                 {"min_objects": 2, "max_objects": 1}, {"min_objects": -1},
                                 {"classes": ()}, {"classes": ("A", "A")}, {"classes": tuple("ABCDEFGHI")}])
def test_generator_rejects_bad_parameters(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x", **SMALL, **bad)
    assert not (tmp_path / "x").exists()


def test_generation_is_idempotent_and_replaces_only_its_own_data(tmp_path: Path) -> None:
    out = tmp_path / "data"
    paths = generate_synthetic(out, **SMALL)
    assert set(paths) == {"train", "val", "test"} and all(p.parent == out for p in paths.values())
    assert json.loads((out / MANIFEST).read_text())["seed"] == 0
    def stamp() -> tuple[int, int]:
        return (out / "train.jsonl").stat().st_mtime_ns, (out / "images/train/000000.png").stat().st_ino

    before = stamp()
    generate_synthetic(out, **SMALL)
    assert stamp() == before  # not rewritten
    generate_synthetic(out, **{**SMALL, "num_train": 5}, seed=0)  # other parameters: regenerated
    assert len((out / "train.jsonl").read_text().splitlines()) == 5
    assert len(list((out / "images/train").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp folders left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_synthetic(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_format_answer_groups_by_label_in_first_appearance_order() -> None:
    objects = [("Mass", [10, 20, 30, 40]), ("Nodule", [1.4, 2.5, 3.6, 4]), ("Mass", [0, 0, 1000, 1000])]
    text = format_answer(objects, (1000, 1000))
    assert text == "Mass <box>[[10, 20, 30, 40], [0, 0, 1000, 1000]]</box> Nodule <box>[[1, 3, 4, 4]]</box>"
    assert parse_reference_boxes(text) == [
        ("Mass", [[10, 20, 30, 40], [0, 0, 1000, 1000]]), ("Nodule", [[1, 3, 4, 4]])]
    assert format_answer([], (1000, 1000)) == NO_FINDINGS and parse_reference_boxes(NO_FINDINGS) == []
    for bad in ([5, 0, 5, 10], [0, 0, 1001, 10], [1, 2, 3]):
        with pytest.raises(ValueError):
            format_answer([("Mass", bad)], (1000, 1000))


def test_parser_accepts_user_spellings() -> None:
    text = " Pleural effusion <box>[[1.5, 2, 3e2, 4] ,[5,6,7,8]]</box>\nMass<box>[[0, 0, 9, 9]]</box> "
    assert parse_reference_boxes(text) == [
        ("Pleural effusion", [[1.5, 2, 300, 4], [5, 6, 7, 8]]), ("Mass", [[0, 0, 9, 9]])]


@pytest.mark.parametrize("bad", [
    "", "Nodule", "Nodule <box>[[1, 2, 3, 4]]", "Nodule <box>[1, 2, 3, 4]</box>",
    "Nodule <box>[[1, 2, 3, 4]]</box> trailing", "<box>[[1, 2, 3, 4]]</box>",
    "Nodule <box>[[1, nan, 3, 4]]</box>", "Nodule <box>[[1, 2, 3, 4],]</box>", "Nodule <box>[]</box>",
    "Nodule <box>[[1, 2, 3, 4]]</box> No findings.",
])
def test_parser_rejects_malformed_answers(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_reference_boxes(bad)


@pytest.fixture
def good_image(tmp_path: Path) -> str:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    return "ok.png"


def _write_rows(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = {"image": "ok.png", "prompt": "p", "answer": "Mass <box>[[0, 0, 10, 10]]</box>"}
BAD_ROWS = {
    "missing file": ({**GOOD, "image": "nope.png"}, "image not found"),
    "unreadable image": ({**GOOD, "image": "junk.png"}, "unreadable image"),
    "box out of range": ({**GOOD, "answer": "Mass <box>[[0, 0, 10, 1001]]</box>"},
                         "box [0, 0, 10, 1001] outside 0..1000 (label 'Mass')"),
    "negative coordinate": ({**GOOD, "answer": "Mass <box>[[-1, 0, 10, 10]]</box>"}, "outside 0..1000"),
    "x2 <= x1": ({**GOOD, "answer": "Mass <box>[[10, 0, 10, 10]]</box>"}, "x2 <= x1"),
    "y2 <= y1": ({**GOOD, "answer": "Mass <box>[[0, 9, 10, 3]]</box>"}, "y2 <= y1"),
    "three numbers": ({**GOOD, "answer": "Mass <box>[[0, 0, 10]]</box>"}, "has 3 numbers, need 4"),
    "missing image key": ({k: v for k, v in GOOD.items() if k != "image"}, "missing key 'image'"),
    "missing prompt key": ({k: v for k, v in GOOD.items() if k != "prompt"}, "missing key 'prompt'"),
    "missing answer key": ({k: v for k, v in GOOD.items() if k != "answer"}, "missing key 'answer'"),
    "answer not a string": ({**GOOD, "answer": 3}, "'answer' must be a string"),
    "unparseable answer": ({**GOOD, "answer": "Mass [0, 0, 10, 10]"}, "bad answer"),
    "invalid json": ('{"image": "ok.png", ', "invalid JSON"),
    "not an object": ("[1, 2]", "not a JSON object"),
    "image path with ..": ({**GOOD, "image": "../../etc/passwd"},
                           "image path escapes the dataset folder: ../../etc/passwd"),
    "absolute image path": ({**GOOD, "image": "/etc/passwd"}, "image path escapes the dataset folder: /etc/passwd"),
    "NUL in image path": ({**GOOD, "image": "ok\u0000.png"}, "bad image path 'ok\\x00.png'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_names_file_and_line(tmp_path: Path, good_image: str, kind: str) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    row, reason = BAD_ROWS[kind]
    path = _write_rows(tmp_path / "split.jsonl", [GOOD, "", row, GOOD])  # the bad row is on line 3
    with pytest.raises(DatasetError) as err:
        load_split(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)


def test_skip_mode_counts_bad_rows(tmp_path: Path, good_image: str) -> None:
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = [row for row, _ in BAD_ROWS.values()]
    path = _write_rows(tmp_path / "split.jsonl", [GOOD, *bad, GOOD])
    loaded = load_split(path, on_error="skip")
    assert [r.line for r in loaded.rows] == [1, len(bad) + 2]
    assert all(r.source == path and r.image == tmp_path / "ok.png" for r in loaded.rows)
    assert len(loaded.skipped) == len(bad)
    for line, (message, (_, reason)) in enumerate(zip(loaded.skipped, BAD_ROWS.values(), strict=True), 2):
        assert message.startswith(f"{path}:{line}: ") and reason in message


def test_relative_images_resolve_against_the_jsonl_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    folder = tmp_path / "deep/set"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "img/a.png")
    (tmp_path / "shared").mkdir()
    absolute = tmp_path / "shared/abs.png"
    Image.new("L", (8, 8), 200).save(absolute)
    rows = [{**GOOD, "image": "img/a.png"}, {**GOOD, "image": "img/../img/a.png"}, {**GOOD, "image": str(absolute)},
            {**GOOD, "image": "../../shared/abs.png"}]
    path = _write_rows(folder / "val.jsonl", rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}:3: image path escapes the dataset folder: "
                                                            f"{absolute}") + "$"):
        load_split(path)
    rows = load_split(path, image_roots=["../shared"]).rows  # a relative root resolves against the working folder
    assert [r.image for r in rows] == [folder / "img/a.png", folder / "img/../img/a.png", absolute,
                                       folder / "../../shared/abs.png"]
    grey = load_image(rows[2].image)
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (200, 200, 200)


def test_symlinks_are_followed_before_the_folder_check(tmp_path: Path) -> None:
    folder, shared = tmp_path / "set", tmp_path / "shared"
    (shared / "dir").mkdir(parents=True)
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    Image.new("RGB", (8, 8)).save(shared / "dir/b.png")
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    (folder / "out.png").symlink_to(tmp_path / "secret.png")  # a link inside the folder to a file outside
    (folder / "outdir").symlink_to(shared / "dir")  # a linked folder
    (folder / "in.png").symlink_to(folder / "ok.png")  # a link that stays inside
    path = _write_rows(folder / "s.jsonl", [{**GOOD, "image": name} for name in ("out.png", "outdir/b.png", "in.png")])
    loaded = load_split(path, on_error="skip", check_images=False)  # the path check runs without image checks too
    assert loaded.skipped == [f"{path}:1: image path escapes the dataset folder: out.png",
                              f"{path}:2: image path escapes the dataset folder: outdir/b.png"]
    assert [r.image for r in loaded.rows] == [folder / "in.png"]
    assert [r.line for r in load_split(path, on_error="skip", image_roots=[shared]).rows] == [2, 3]
    loop = folder / "loop.png"
    loop.symlink_to(loop)
    assert "bad image path 'loop.png'" in load_split(_write_rows(folder / "l.jsonl", [{**GOOD, "image": "loop.png"}]),
                                                     on_error="skip").skipped[0]


def test_check_images_off_and_load_image_errors(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "t.jsonl", [{**GOOD, "image": "gone.png"}])
    assert load_split(path, check_images=False).rows[0].image == tmp_path / "gone.png"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte-order mark is not a bad row
    assert len(load_split(path, check_images=False).rows) == 1
    with pytest.raises(DatasetError, match="^" + re.escape(f"{tmp_path / 'gone.png'}: image not found")):
        load_image(tmp_path / "gone.png")
    (tmp_path / "junk.png").write_bytes(os.urandom(64))
    with pytest.raises(DatasetError, match="unreadable image"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="on_error"):
        load_split(path, on_error="ignore")  # type: ignore[arg-type]


def test_check_command_lists_every_bad_row_and_exits_1(tmp_path: Path, capsys) -> None:
    from rl.data import main

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    whole = tmp_path / "whole.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(whole, quality=95)
    (tmp_path / "cut.jpg").write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])  # truncated JPEG
    (tmp_path / "text.png").write_text("not an image")
    path = _write_rows(tmp_path / "set.jsonl", [
        GOOD, "{not json", {**GOOD, "image": "big.png"}, {"image": "ok.png", "prompt": "p"},
        {**GOOD, "image": "cut.jpg"}, {**GOOD, "image": "text.png"},
        {**GOOD, "answer": "Mass <box>[[5, 0, 5, 9]]</box>"}, {**GOOD, "answer": "Mass <box>oops</box>"}, GOOD,
    ])
    assert main(["check", str(path), "--max-pixels", "1000"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines[:-1]] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert "invalid JSON" in lines[0] and "40x40 pixels, more than the limit of 1000" in lines[1]
    assert "missing key 'answer'" in lines[2] and "unreadable image" in lines[3] and "unreadable image" in lines[4]
    assert "bad answer" in lines[6]
    assert lines[-1] == "9 rows, 7 bad"


def test_check_command_rejects_image_paths_outside_the_folder(tmp_path: Path, capsys) -> None:
    from rl.data import main

    folder, shared = tmp_path / "set", tmp_path / "shared"
    folder.mkdir()
    shared.mkdir()
    for image in (folder / "ok.png", tmp_path / "secret.png", shared / "b.png"):
        Image.new("RGB", (8, 8)).save(image)
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    path = _write_rows(folder / "set.jsonl", [
        GOOD, {**GOOD, "image": "../secret.png"}, {**GOOD, "image": str(tmp_path / "secret.png")},
        {**GOOD, "image": "link.png"}, {**GOOD, "image": str(shared / "b.png")}, {**GOOD, "image": "../shared/b.png"},
    ])
    escapes = [f"{path}:{n}: image path escapes the dataset folder: {image}"
               for n, image in ((2, "../secret.png"), (3, tmp_path / "secret.png"), (4, "link.png"),
                                (5, shared / "b.png"), (6, "../shared/b.png"))]
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [*escapes, "6 rows, 5 bad"]
    assert main(["check", str(path), "--image-root", str(shared)]) == 1  # absolute and relative paths into it pass
    assert capsys.readouterr().out.splitlines() == [*escapes[:3], "6 rows, 3 bad"]


def test_check_command_passes_a_clean_set(tmp_path: Path, capsys) -> None:
    from rl.data import main

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    path = _write_rows(tmp_path / "set.jsonl", [GOOD, GOOD])
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["2 rows, 0 bad"]
