"""A running weighted sum of worker weights: memory independent of worker count.

The chief folds each accepted update into one buffer per tensor (float64 by
default) as it arrives, so it never holds more than one sum however many
workers take part. Folding works in blocks of ``BLOCK`` elements through one
small scratch buffer, so it never allocates a temporary the size of a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

#: Elements folded per step (a 64 K-element scratch: 512 KiB in float64, which stays in
#: the CPU's cache; 1 M elements took 40% longer).
BLOCK = 1 << 16


class WeightedSum(NamedTuple):
    """Sum of ``n_k * w_k``, total weight ``sum n_k`` and number of updates.

    While ``updates`` is 0 the buffers' contents do not count: the first
    ``fold`` writes them rather than adding to them, so a reused sum needs no
    zeroing pass.
    """

    total: tuple[np.ndarray, ...]
    weight: float
    updates: int


def empty_sum(shapes: Sequence[tuple[int, ...]], dtype: npt.DTypeLike = np.float64) -> WeightedSum:
    """A zero sum for tensors of the given shapes (``dtype``: the accumulator's, float64 by default)."""
    return WeightedSum(tuple(np.zeros(s, dtype) for s in shapes), 0.0, 0)


def fold_into(buf: np.ndarray, values: np.ndarray, weight: float, scratch: np.ndarray | None = None,
              *, first: bool = False) -> None:
    """``buf += weight * values`` in place, block by block, computed in ``buf``'s dtype.

    ``values`` may have any numeric dtype and must have ``buf``'s number of
    elements. No temporary larger than one block is allocated. With
    ``first``, ``buf = weight * values`` (one pass, no addition).
    """
    flat_out = buf.reshape(-1)
    flat_in = np.asarray(values).reshape(-1)
    if first:
        np.multiply(flat_in, weight, out=flat_out, dtype=buf.dtype, casting="unsafe")
        return
    n = flat_out.size
    step = min(BLOCK, max(n, 1))
    if scratch is None or scratch.size < step or scratch.dtype != buf.dtype:
        scratch = np.empty(step, buf.dtype)
    for start in range(0, n, step):
        stop = min(start + step, n)
        tmp = scratch[: stop - start]
        np.multiply(flat_in[start:stop], weight, out=tmp, dtype=buf.dtype, casting="unsafe")
        np.add(flat_out[start:stop], tmp, out=flat_out[start:stop])


def fold(acc: WeightedSum, weights: Sequence[np.ndarray], num_examples: float) -> WeightedSum:
    """Add ``num_examples * weights`` to the sum.

    The sum's buffers are updated in place (that is the point: no copy per
    worker), or simply written by the first update; the returned tuple is the
    new sum. Do not keep the old one.

    Raises:
        ValueError: ``num_examples`` is not positive or the shapes differ.
    """
    if not num_examples > 0:
        raise ValueError("an update must weigh more than 0 examples")
    if len(weights) != len(acc.total):
        raise ValueError(f"{len(weights)} tensors, sum has {len(acc.total)}")
    # A lazily decoded update (protocol.compression.DecodedUpdate) states its shapes up front.
    shapes = getattr(weights, "shapes", None) or [np.shape(w) for w in weights]
    for buf, shape in zip(acc.total, shapes):
        if buf.shape != tuple(shape):
            raise ValueError(f"tensor of shape {tuple(shape)}, sum has {buf.shape}")
    scratch = np.empty(min(BLOCK, max((b.size for b in acc.total), default=1)), acc.total[0].dtype) \
        if acc.total else None
    for buf, w in zip(acc.total, weights):
        fold_into(buf, np.asarray(w), float(num_examples), scratch, first=acc.updates == 0)
    return WeightedSum(acc.total, acc.weight + float(num_examples), acc.updates + 1)


def mean(acc: WeightedSum) -> list[np.ndarray]:
    """The weighted mean ``sum(n_k w_k) / sum(n_k)``, in the accumulator's dtype.

    Divides the sum's buffers in place and returns them: the sum is used up.

    Raises:
        ValueError: the sum is empty.
    """
    if acc.updates == 0:
        raise ValueError("no updates to average")
    for t in acc.total:
        np.divide(t, acc.weight, out=t)
    return list(acc.total)
