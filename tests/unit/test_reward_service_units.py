"""actors/reward.py without Ray: chunking, merging, and the service object itself."""

from __future__ import annotations

import numpy as np
import pytest

from actors.reward import RewardService, merge, split_bounds
from rewards import KEYS, RewardConfig, score_batch
from rl.tools.bench_rewards import generate


@pytest.mark.parametrize(("size", "parts"), [(0, 3), (1, 3), (2, 2), (10, 3), (7, 1), (100, 8)])
def test_split_bounds_cover_the_batch_in_order(size: int, parts: int) -> None:
    bounds = split_bounds(size, parts)
    assert len(bounds) == min(size, parts)
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(size))
    lengths = [stop - start for start, stop in bounds]
    assert not lengths or max(lengths) - min(lengths) <= 1


def test_service_chunks_merge_to_score_batch() -> None:
    completions, references = generate(203, 4)
    config = RewardConfig(overlong_max_tokens=60, overlong_buffer=20, overlong_penalty=0.5)
    lengths = np.arange(203)
    service = RewardService("reward-test", config)
    assert service.ping() == "reward-test"
    parts = [service.score(completions[a:b], references[a:b], lengths[a:b]) for a, b in split_bounds(203, 4)]
    merged = merge(parts, 203)
    expected = score_batch(completions, references, config, lengths)
    assert list(merged.values) == list(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(merged.values[key], expected[key])
        assert merged.values[key].mean() == pytest.approx(expected[key].mean())


def test_merge_of_an_empty_batch() -> None:
    batch = merge([], 0)
    assert set(batch.values) == set(KEYS) and all(v.shape == (0,) for v in batch.values.values())


def test_merge_checks_sizes() -> None:
    with pytest.raises(ValueError, match="values for a batch of 3"):
        merge([score_batch(["a"], ["b"])], 3)
