"""Extra reward functions registered by import path in tests of `RewardConfig.extra`."""

import os  # reachable as "tests.unit.rewards_extra:os.system", which must be refused


def length_bonus(completion: str, reference: str) -> float:
    return len(completion) / 10


def not_finite(completion: str, reference: str) -> float:
    return float("nan")


NOT_CALLABLE = 3


def one_argument(completion: str) -> float:
    return 0.0


def keyword_reference(completion: str, *, reference: str) -> float:
    return 0.0


reexported_join = "/".join  # callables that are not this package's code
OS_SYSTEM = os.system
