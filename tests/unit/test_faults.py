"""The driver's fault policy (rl/faults.py) without engines: restart budget, non-finite guard, chaos picks."""

from __future__ import annotations

import math

import pytest

from rl.core.config import ChaosConfig, ReliabilityConfig, load_config
from rl.faults import Chaos, NonFiniteGuard, RestartBudget, RunStopped, nonfinite


def test_restart_budget_counts_replacements_in_a_sliding_window():
    now = [0.0]
    budget = RestartBudget(ReliabilityConfig(max_restarts=2, restart_window_s=100), clock=lambda: now[0])
    with pytest.warns(UserWarning, match=r"replacing rollout-0 on 10.0.0.3 \(pid 7\) \(restart 1\): died"):
        budget.charge("rollout-0 on 10.0.0.3 (pid 7)", RuntimeError("died"))
    now[0] = 50.0
    with pytest.warns(UserWarning, match="restart 2"):
        budget.charge("reward-1", RuntimeError("died"))
    now[0] = 99.0  # both within the last 100 s: the third is one too many
    with pytest.raises(RunStopped, match=r"rollout-0 lost \(hung\); 2 workers were already replaced within 100 s "
                                         r"\(reliability.max_restarts=2\): stopping"):
        budget.charge("rollout-0", RuntimeError("hung"))
    now[0] = 120.0  # the first fell out of the window
    with pytest.warns(UserWarning, match="restart 3"):
        budget.charge("rollout-0", RuntimeError("died"))
    assert budget.total == 3


def test_nonfinite_guard_stops_after_k_skipped_updates_in_a_row():
    guard = NonFiniteGuard(max_in_row=2)
    with pytest.warns(UserWarning, match="step 1: update skipped: 1 non-finite rewards of 3"):
        guard.record(1, nonfinite("rewards", [0.5, math.nan, 1.0]))
    guard.record(2, nonfinite("rewards", [0.5, 0.0, 1.0]))  # a good step resets the run of skips
    with pytest.warns(UserWarning):
        guard.record(3, nonfinite("advantages", [math.inf]))
    with pytest.warns(UserWarning), pytest.raises(RunStopped, match=r"2 updates in a row .*step 4: 2 non-finite "
                                                                    r"advantages of 2.*max_nonfinite_steps=2"):
        guard.record(4, nonfinite("advantages", [-math.inf, math.nan]))
    assert guard.total == 3


def test_chaos_picks_are_a_function_of_seed_and_step_only():
    workers = {"rollout": [("rollout-0", "h0"), ("rollout-1", "h1")], "reward": [("reward-0", "h2")]}
    chaos = Chaos(ChaosConfig(kill_every=3, seed=5))
    picks = [chaos.pick(step, workers) for step in range(1, 13)]
    assert [p is not None for p in picks] == [False, False, True] * 4
    assert picks == [Chaos(ChaosConfig(kill_every=3, seed=5)).pick(step, workers) for step in range(1, 13)]
    victims = {p[0] for p in picks if p}
    assert victims <= {"rollout-0", "rollout-1", "reward-0"} and all(0 <= p[2] < 1 for p in picks if p)
    only_reward = Chaos(ChaosConfig(kill_every=1, targets=["reward"]))
    assert {only_reward.pick(s, workers)[0] for s in range(1, 20)} == {"reward-0"}
    assert Chaos(ChaosConfig()).pick(3, workers) is None  # off by default


def test_reliability_and_chaos_keys_are_validated():
    with pytest.raises(ValueError, match="chaos.targets"):
        load_config(overrides=["chaos.targets=[learner]"])
    with pytest.raises(ValueError, match="reliability.max_nonfinite_steps"):
        load_config(overrides=["reliability.max_nonfinite_steps=0"])
    with pytest.raises(ValueError, match="reliability.restart_budget"):
        load_config(overrides=["reliability.restart_budget=3"])
