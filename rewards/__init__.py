"""Verifiable grounding rewards: parsing, box geometry, the components and their weighted total.

Pure functions on strings and numpy arrays (numpy and scipy only: no torch, no Ray), so they are
unit-tested alone and run unchanged inside the Ray reward actors. The contract is docs/rewards.md.
"""

from rewards.batch import parse_answer
from rewards.config import COMPONENTS, KEYS, RewardConfig
from rewards.geometry import giou_matrix, iou_matrix
from rewards.references import clear_reference_cache
from rewards.score import score, score_batch

__all__ = [
    "COMPONENTS",
    "KEYS",
    "RewardConfig",
    "clear_reference_cache",
    "giou_matrix",
    "iou_matrix",
    "parse_answer",
    "score",
    "score_batch",
]
