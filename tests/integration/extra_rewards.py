"""Rewards used by tests through `rewards.extra` (registered by import path, as users register theirs)."""


def response_length(completion: str, reference: str) -> float:
    """Longer answers score higher, up to 40 characters: gives a random model's groups reward variance,
    so GRPO updates happen before any SFT."""
    return min(len(completion), 40) / 40


def not_a_number(completion: str, reference: str) -> float:
    """A broken reward (a division by zero upstream): NaN for every answer."""
    return float("nan")
