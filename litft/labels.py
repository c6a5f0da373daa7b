"""The label convention shared by the data pipeline and the loss."""

from __future__ import annotations

from typing import Sequence

IGNORE_INDEX = -100
"""Label of a position that is not trained (prompt, padding, a packed sequence's first token): torch's and
transformers' default ``ignore_index``."""


def count_targets(labels: Sequence[int]) -> int:
    """Trained positions of one row as the loss sees them after the causal shift: ``labels[1:] != IGNORE_INDEX``
    (a list, or a tensor's last dimension summed over all rows)."""
    if hasattr(labels, "ndim"):  # a tensor
        return int((labels[..., 1:] != IGNORE_INDEX).sum())
    rest = labels[1:]
    if isinstance(rest, list):
        return len(rest) - rest.count(IGNORE_INDEX)
    return sum(1 for x in rest if x != IGNORE_INDEX)
