"""Cut `count` items into `parts` contiguous runs whose sizes differ by at most one (larger first): rows over
rollout workers, completions over reward actors, a batch into mini-batches and those over learners."""

from __future__ import annotations


def balanced_sizes(count: int, parts: int) -> list[int]:
    """The size of each of the `parts` runs, in order; some are 0 when count < parts."""
    base, extra = divmod(count, parts)
    return [base + (i < extra) for i in range(parts)]


def balanced_ranges(count: int, parts: int) -> list[range]:
    """The runs themselves, as ranges of range(count), one per part (empty ones included)."""
    ranges, start = [], 0
    for size in balanced_sizes(count, parts):
        ranges.append(range(start, start + size))
        start += size
    return ranges
