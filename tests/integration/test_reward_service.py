"""RewardPool through a real local Ray: two actors score a batch exactly like `rewards.score_batch`, and
failures name the actor."""

from __future__ import annotations

import numpy as np
import pytest

from actors.reward import RewardPool, RewardServiceError
from rewards import KEYS, RewardConfig, score_batch
from rl.core.config import ClusterConfig, Config
from rl.tools.bench_rewards import generate

pytestmark = pytest.mark.slow


def _cfg(rewards: RewardConfig, actors: int) -> Config:
    return Config(rewards=rewards, cluster=ClusterConfig(reward_workers=actors, call_timeout_s=120))


@pytest.fixture(scope="module")
def pool(ray_session):  # noqa: ANN001
    config = RewardConfig(overlong_max_tokens=60, overlong_buffer=20, overlong_penalty=0.5)
    pool = RewardPool(_cfg(config, 2), name_prefix="reward-test")
    yield pool
    pool.shutdown()


def test_two_actors_score_like_score_batch(pool: RewardPool) -> None:
    completions, references = generate(1001, 11)
    lengths = np.arange(1001) % 90
    batch = pool.score(completions, references, lengths)
    expected = score_batch(
        completions, references, RewardConfig(overlong_max_tokens=60, overlong_buffer=20, overlong_penalty=0.5), lengths
    )
    assert set(batch.values) == set(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(batch.values[key], expected[key])
        assert float(batch.values[key].mean()) == pytest.approx(float(expected[key].mean()))


def test_small_and_empty_batches(pool: RewardPool) -> None:
    one = pool.score(["Nodule <box>[1,2,3,4]</box>"], ["Nodule <box>[1,2,3,4]</box>"])
    assert one.values["total"].tolist() == [2.5] and float(one.values["giou"].mean()) == 1.0
    empty = pool.score([], [])
    assert empty.values["total"].shape == (0,)


def test_a_failing_actor_is_named(pool: RewardPool) -> None:
    with pytest.raises(RewardServiceError, match="reward-test-0"):
        pool.score([None, "x"], ["r", "r"])  # type: ignore[list-item]  # the actor raises TypeError


def test_a_late_answer_is_named(pool: RewardPool) -> None:
    completions, references = generate(8000, 3)
    pool.timeout_s, saved = 1e-4, pool.timeout_s
    try:
        with pytest.raises(RewardServiceError, match="reward-test-.*no answer to score within"):
            pool.score(completions, references)
    finally:
        pool.timeout_s = saved
    assert pool.score(completions, references).values["total"].shape == (8000,)  # the actors still answer


def test_extra_rewards_are_imported_by_the_actors(ray_session) -> None:  # noqa: ANN001
    path = "tests.integration.extra_rewards:response_length"
    pool = RewardPool(_cfg(RewardConfig(extra={path: 2.0}), 1), name_prefix="reward-extra")
    try:
        batch = pool.score(["x" * 10, "x" * 80], ["r", "r"])
    finally:
        pool.shutdown()
    np.testing.assert_allclose(batch.values[path], [0.25, 1.0])
    base = score_batch(["x" * 10, "x" * 80], ["r", "r"])["total"]
    np.testing.assert_allclose(batch.values["total"], base + 2.0 * np.array([0.25, 1.0]))
    bad = "tests.unit.rewards_extra:one_argument"  # a valid name; only the import shows it is no reward
    refusal = r"(?s)reward-bad-0 died during start.*must be callable as function\(completion, reference\)"
    with pytest.raises(RewardServiceError, match=refusal):
        RewardPool(_cfg(RewardConfig(extra={bad: 1.0}), 1), name_prefix="reward-bad")
