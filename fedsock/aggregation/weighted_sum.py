"""A running weighted sum of worker weights: memory independent of worker count.

The chief folds each accepted update into one float64 buffer per tensor as it
arrives, so it never holds more than one sum however many workers take part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class WeightedSum(NamedTuple):
    """Sum of ``n_k * w_k``, total weight ``sum n_k`` and number of updates."""

    total: tuple[np.ndarray, ...]
    weight: float
    updates: int


def empty_sum(shapes: Sequence[tuple[int, ...]]) -> WeightedSum:
    """A zero sum for tensors of the given shapes."""
    return WeightedSum(tuple(np.zeros(s, np.float64) for s in shapes), 0.0, 0)


def fold(acc: WeightedSum, weights: Sequence[np.ndarray], num_examples: float) -> WeightedSum:
    """Add ``num_examples * weights`` to the sum.

    The sum's buffers are updated in place (that is the point: no copy per
    worker); the returned tuple is the new sum. Do not keep the old one.

    Raises:
        ValueError: ``num_examples`` is not positive or the shapes differ.
    """
    if not num_examples > 0:
        raise ValueError("an update must weigh more than 0 examples")
    if len(weights) != len(acc.total):
        raise ValueError(f"{len(weights)} tensors, sum has {len(acc.total)}")
    for buf, w in zip(acc.total, weights):
        if buf.shape != np.shape(w):
            raise ValueError(f"tensor of shape {np.shape(w)}, sum has {buf.shape}")
        buf += np.asarray(w, np.float64) * num_examples
    return WeightedSum(acc.total, acc.weight + float(num_examples), acc.updates + 1)


def mean(acc: WeightedSum) -> list[np.ndarray]:
    """The weighted mean ``sum(n_k w_k) / sum(n_k)`` in float64.

    Raises:
        ValueError: the sum is empty.
    """
    if acc.updates == 0:
        raise ValueError("no updates to average")
    return [t / acc.weight for t in acc.total]
