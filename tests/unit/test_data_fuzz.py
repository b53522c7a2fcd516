"""rl/core/data.py under hostile input: thousands of generated bad lines (random bytes, deep nesting, huge numbers,
wrong types at every key, NUL bytes, 1 MB strings, inf/nan) interleaved with good ones. Nothing but
DatasetError may escape, every bad line is named by its number, and every good line still loads."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from rl.core.data import DatasetError, load_split
from rl.data import main

GOOD = {"image": "ok.png", "prompt": "p", "answer": "Mass <box>[[0, 0, 10, 10]]</box>"}
KEYS = ("image", "prompt", "answer")
MB = 1 << 20


def _row(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _random_bytes(rng: random.Random) -> bytes:
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
    return b"\x80" + raw  # a leading non-UTF-8, non-space byte: never blank, never valid


def _with_raw(key: str, raw: str) -> bytes:
    """A good row whose `key` holds the JSON text `raw` as written (json.dumps would not write it)."""
    fields = {**GOOD, key: None}
    return ("{" + ", ".join(f'"{k}": {raw if k == key else json.dumps(v)}' for k, v in fields.items()) + "}").encode()


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice((2_000, 20_000, 200_000))
    nest = rng.choice(("[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth))
    where = rng.choice(("line", "extra", *KEYS))
    return nest.encode() if where == "line" else _with_raw(where, nest)


def _huge_number(rng: random.Random) -> bytes:
    number = rng.choice(("", "-")) + "1" + "7" * rng.randrange(4_300, 6_000)
    return _with_raw(rng.choice(("extra", *KEYS)), number)


def _wrong_type(rng: random.Random) -> bytes:
    value = rng.choice((None, 1, 1.5, True, [], {}, ["ok.png"], {"a": "b"}, float("nan"), float("inf")))
    return json.dumps({**GOOD, rng.choice(KEYS): value}).encode()  # NaN / Infinity: Python's JSON extension


def _missing_key(rng: random.Random) -> bytes:
    missing = rng.choice(KEYS)
    return json.dumps({k: v for k, v in GOOD.items() if k != missing}).encode()


def _nul(rng: random.Random) -> bytes:
    return rng.choice((
        _row()[:-1] + b"\x00}",  # a raw NUL byte in the JSON
        _row(image="ok\u0000.png"),
        _row(answer="Mass <box>[[0, \u00000, 10, 10]]</box>"),
        b"\x00" * rng.randrange(1, 50),
    ))


def _megabyte(rng: random.Random) -> bytes:
    return rng.choice((
        _row(image="a" * MB),  # a path too long for the file system
        _row(image="d/" * (MB // 2)),
        _row(answer="Mass" + " " * MB + "x"),  # would backtrack quadratically in a lazy regex
        _row(answer="Mass <box>[[" + " " * MB + "]]</box>"),
        _row(answer="Mass <box>[[0, 0, 10, 10]]</box> " * (MB // 33) + "x"),
        json.dumps({"image": "ok.png", "prompt": "p" * MB}).encode(),  # no answer
    ))


def _inf_nan(rng: random.Random) -> bytes:
    value = rng.choice(("inf", "nan", "-inf", "1e400", "Infinity", "NaN", "1" * 5000))
    return _row(answer=f"Mass <box>[[0, 0, {value}, 10]]</box>")


def _other(rng: random.Random) -> bytes:
    return rng.choice((
        "[1, 2]", '"just a string"', "null", "3", '{"image": "ok.png", ', "\ufeff" + json.dumps(GOOD),  # BOM mid-file
        json.dumps({**GOOD, "image": "\udc80.png"}), json.dumps({**GOOD, "image": "\x1b[31m.png"}),
        json.dumps({**GOOD, "image": "../" * 30 + "etc/passwd"}), json.dumps({**GOOD, "image": ""}),
        json.dumps({**GOOD, "answer": " <box>[[0, 0, 10, 10]]</box>"}),  # no label
    )).encode("utf-8", "surrogatepass") + rng.choice((b"", b"\xc0\xaf", b"\xed\xa0\x80"))  # overlong, surrogate


KINDS: tuple[Callable[[random.Random], bytes], ...] = (
    _random_bytes, _deep, _huge_number, _wrong_type, _missing_key, _nul, _inf_nan, _other)


def _hostile_file(folder: Path, seed: int, count: int) -> tuple[Path, set[int], set[int]]:
    """A JSONL file of `count` hostile lines, each followed by a good one (or a blank one); the bad and
    good line numbers."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    bad: set[int] = set()
    good: set[int] = set()
    for i in range(count):
        make = _megabyte if i % 500 == 7 else rng.choice(KINDS)  # a few 1 MB lines: they dominate the time
        lines.append(make(rng))
        bad.add(len(lines))
        follower = rng.choice((_row(), _row(), b"", b"  \r"))
        lines.append(follower)
        if follower.strip():
            good.add(len(lines))
    path = folder / f"hostile-{seed}.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    return path, bad, good


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    return tmp_path


@pytest.mark.parametrize("seed", [0, 1])
def test_only_dataset_errors_escape_and_every_bad_line_is_named(folder: Path, seed: int) -> None:
    path, bad, good = _hostile_file(folder, seed, 1500)
    start = time.perf_counter()
    loaded = load_split(path, on_error="skip")
    assert time.perf_counter() - start < 60  # ~1 s; a quadratic parse of its 1 MB lines takes minutes
    assert [row.line for row in loaded.rows] == sorted(good)
    named = [int(message.split(":")[1]) for message in loaded.skipped]
    assert named == sorted(bad)
    for message in loaded.skipped:
        assert message.startswith(f"{path}:") and len(message) < len(str(path)) + 600
        assert message.isprintable()  # no terminal escapes, no lone surrogates: printable to any log


def test_raise_names_the_first_bad_line_of_each_kind(folder: Path) -> None:
    rng = random.Random(2)
    for kind in (*KINDS, _megabyte):
        for _ in range(5):
            path = folder / "one.jsonl"
            path.write_bytes(b"\n".join([_row(), kind(rng), _row()]) + b"\n")
            with pytest.raises(DatasetError) as err:
                load_split(path)
            assert str(err.value).startswith(f"{path}:2: "), (kind.__name__, str(err.value)[:200])


def test_the_three_rows_that_crashed_the_checker(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "three.jsonl"
    path.write_bytes(b"\n".join([
        _row(), _with_raw("n", "9" * 5000),
        b'{"image": "ok.png", "prompt": "\xff\xfe", "answer": "No findings."}', b"[" * 100_000 + b"]" * 100_000,
        _row(),
    ]) + b"\n")
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:2: invalid JSON (Exceeds the limit (4300 digits) for integer string conversion)",
        f"{path}:3: not UTF-8 (byte 0xff at column 32)",
        f"{path}:4: invalid JSON (nested too deeply)",
        "5 rows, 3 bad",
    ]
