"""Reducers: how the chief combines the workers' weights within one round.

A ``Reducer`` is three pure functions over an explicit accumulator::

    init(shapes) -> acc
    add(acc, weights, num_examples) -> acc
    result(acc) -> list[np.ndarray]      # the combined weights (may reuse acc's buffers)

plus what it needs, declared so that the chief can tell what it combines
with (``fedsock.aggregation.check_compatible``) without knowing its name.

``weighted_mean`` streams: its accumulator is one running sum, so memory does
not grow with the number of workers, and it can take that sum's buffers from
a ``BufferPool`` (``init_accumulator``). The robust reducers in
``fedsock.aggregation.robust`` (median, trimmed mean, Krum) keep every update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fedsock.aggregation.buffers import BufferPool
from fedsock.aggregation.weighted_sum import WeightedSum, empty_sum, fold, mean

Shapes = Sequence[tuple[int, ...]]


class Reducer(NamedTuple):
    """Pure functions that combine one round's updates, and what they need.

    Attributes:
        init, add, result: the accumulator's functions (see the module).
        min_updates: the fewest updates ``result`` accepts (e.g. ``2f + 3``
            for Krum); the chief refuses a ``--min-workers`` below it, so a
            round never closes with too few.
        needs_individual: ``result`` must see each update itself (median,
            trimmed mean, Krum): secure aggregation, which shows the chief
            only the sum, cannot run it, and differential privacy's noised
            sum cannot replace it.
        weighted_by_examples: updates weigh their ``num_examples``;
            otherwise every update weighs the same.
        linear: ``result`` is the mean of the updates (weighted by examples
            or equally, as ``weighted_by_examples`` says): a linear function
            of their sum, which is what secure aggregation computes and what
            differential privacy's noised mean (``dp_mean``) stands in for.
        init_pooled: like ``init``, taking the accumulator's buffers from a
            ``BufferPool`` where it can (None: the reducer does not reuse
            buffers).
        label: what it is, for messages (never used to decide anything).

    The declarations default to the cautious side, so a hand-made reducer
    that declares nothing is refused with secure aggregation and DP.
    """

    init: Callable[[Shapes], Any]
    add: Callable[[Any, Sequence[np.ndarray], float], Any]
    result: Callable[[Any], list[np.ndarray]]
    min_updates: int = 1
    needs_individual: bool = True
    weighted_by_examples: bool = False
    linear: bool = False
    init_pooled: Callable[[Shapes, BufferPool], Any] | None = None
    label: str = "a custom reducer"


def init_accumulator(reducer: Reducer, shapes: Shapes, pool: BufferPool | None = None) -> Any:
    """``reducer``'s empty accumulator for tensors of ``shapes``, reusing ``pool``'s buffers if it can."""
    if pool is not None and reducer.init_pooled is not None:
        return reducer.init_pooled(shapes, pool)
    return reducer.init(shapes)


def pooled_sum(shapes: Shapes, dtype: npt.DTypeLike, pool: BufferPool) -> WeightedSum:
    """An empty ``WeightedSum`` whose buffers come from ``pool`` (new ones where it has none).

    A reused buffer needs no zeroing: the first update of a round is written
    into it (see ``WeightedSum``).
    """
    return WeightedSum(tuple(pool.take_or_empty(s, dtype) for s in shapes), 0.0, 0)


def weighted_mean(dtype: npt.DTypeLike = np.float64) -> Reducer:
    """FedAvg's ``sum(n_k w_k) / sum(n_k)``, as one running sum (``dtype``: the accumulator's).

    float64 (the default) keeps the average exact to float32 precision for any
    number of workers; float32 halves the chief's memory for huge models.
    """

    def init(shapes: Shapes) -> WeightedSum:
        return empty_sum(shapes, dtype)

    def init_pooled(shapes: Shapes, pool: BufferPool) -> WeightedSum:
        return pooled_sum(shapes, dtype, pool)

    return Reducer(init, fold, mean, 1, needs_individual=False, weighted_by_examples=True, linear=True,
                   init_pooled=init_pooled, label="the weighted mean")
