"""rl/core/atomic.py: a folder appears whole or not at all, and the one it replaces survives a failure."""

from __future__ import annotations

import os

import pytest

from rl.core.atomic import atomic_dir, replace_dir, temporary_sibling


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("cut short")
    assert (final / "a").read_text() == "1" and os.listdir(tmp_path) == ["out"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    final, tmp = tmp_path / "out", temporary_sibling(tmp_path / "out")
    final.mkdir()
    (final / "a").write_text("old")
    tmp.mkdir()
    rename = os.rename

    def refuse_the_new_one(src, dst):  # noqa: ANN001, ANN202
        if src == tmp:
            raise OSError("disk gone")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse_the_new_one)
    with pytest.raises(OSError, match="disk gone"):
        replace_dir(tmp, final)
    assert (final / "a").read_text() == "old"


def test_a_fixed_temporary_name_is_cleared_of_a_crashed_write_first(tmp_path):
    tmp = tmp_path / ".step-1.tmp"
    tmp.mkdir()
    (tmp / "stale").write_text("x")
    with atomic_dir(tmp_path / "step-1", tmp) as fresh:
        assert fresh == tmp and not any(fresh.iterdir())
    assert sorted(os.listdir(tmp_path)) == ["step-1"]
