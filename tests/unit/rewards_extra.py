"""Extra reward functions registered by import path in tests of `RewardConfig.extra`."""


def length_bonus(completion: str, reference: str) -> float:
    return len(completion) / 10


def not_finite(completion: str, reference: str) -> float:
    return float("nan")


NOT_CALLABLE = 3
