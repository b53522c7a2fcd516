"""rewards.labels: label ids from the bytes of the joined text agree with slicing every label."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.labels import block_label_ids, label_ids
from rewards.scan import Joined

_PIECES = ["Nodule", " nodule.", "MASS:", "a" * 31, "a" * 32, "a" * 33, "b" * 40 + "x", "b" * 40 + "y", "Σ lés", "\n"]


def names(texts: list[str], fast: bool) -> list[str]:
    """Each label's normalised name, labels being whole texts of the joined batch."""
    joined = Joined.of(texts)
    assert joined is not None
    start, end = joined.bounds[:-1] + 1, joined.bounds[1:]
    vocab: dict[str, int] = {}
    ids = block_label_ids(joined, start, end, vocab) if fast else label_ids(joined.slices(start, end), vocab)
    table = list(vocab)
    return [table[k] for k in ids.tolist()]


@pytest.mark.parametrize("texts", [[], [""], _PIECES, _PIECES[::-1] * 3, ["x" * 100, "x" * 99 + "y"]])
def test_block_label_ids_match_slicing(texts: list[str]) -> None:
    assert names(texts, fast=True) == names(texts, fast=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="aAbB .,;:\n\tΣ", max_size=40), max_size=30))
def test_block_label_ids_match_slicing_on_random_labels(texts: list[str]) -> None:
    assert names(texts, fast=True) == names(texts, fast=False)


def test_hash_collisions_fall_back_to_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rewards.labels._MIX", np.zeros(4, dtype=np.uint64))  # every same-length label collides
    texts = ["ab", "cd", "AB", "abc", "x" * 40]
    assert names(texts, fast=True) == ["ab", "cd", "ab", "abc", "x" * 40]
