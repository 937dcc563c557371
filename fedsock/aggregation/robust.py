"""Byzantine-robust reducers: coordinate-wise median, trimmed mean, Krum, multi-Krum.

Unlike ``weighted_mean``, these cannot stream: each needs all of a round's
updates at once, so their accumulator **keeps every update** until the round
closes (memory = number of updates x model size, plus one float64 copy of
one tensor stack while combining). For the same reason they cannot be
combined with secure aggregation, where the chief only ever sees the sum.

They ignore the workers' ``num_examples``: a Byzantine worker could claim
any count, so every update weighs the same (as in Yin et al. 2018 and
Blanchard et al. 2017). Each checks its precondition when the round is
combined and raises ``AggregationError`` (nothing is consumed) if it fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fedsock.aggregation.reducers import Reducer
from fedsock.errors import AggregationError


class Stack(NamedTuple):
    """Every update of the round, in arrival order, and their example counts."""

    shapes: tuple[tuple[int, ...], ...]
    updates: tuple[tuple[np.ndarray, ...], ...]
    examples: tuple[float, ...]


def empty_stack(shapes: Sequence[tuple[int, ...]]) -> Stack:
    """An empty stack for tensors of the given shapes."""
    return Stack(tuple(tuple(s) for s in shapes), (), ())


def push(acc: Stack, weights: Sequence[np.ndarray], num_examples: float) -> Stack:
    """Keep a copy of ``weights``.

    Raises:
        ValueError: ``num_examples`` is not positive or the shapes differ.
    """
    if not num_examples > 0:
        raise ValueError("an update must weigh more than 0 examples")
    if len(weights) != len(acc.shapes):
        raise ValueError(f"{len(weights)} tensors, expected {len(acc.shapes)}")
    for shape, w in zip(acc.shapes, weights):
        if shape != np.shape(w):
            raise ValueError(f"tensor of shape {np.shape(w)}, expected {shape}")
    kept = tuple(np.array(w, copy=True) for w in weights)
    return Stack(acc.shapes, (*acc.updates, kept), (*acc.examples, float(num_examples)))


def _stacked(acc: Stack, t: int) -> np.ndarray:
    """Tensor ``t`` of every update, stacked on a new first axis, float64."""
    return np.stack([u[t] for u in acc.updates]).astype(np.float64, copy=False)


def _require(acc: Stack, needed: int, rule: str, why: str) -> int:
    n = len(acc.updates)
    if n < needed:
        raise AggregationError(
            f"{rule} needs at least {needed} updates per round ({why}); this round has {n}. "
            f"Run the chief with --min-workers {needed} or more."
        )
    return n


def _reducer(result: Callable[[Stack], list[np.ndarray]], min_updates: int, label: str) -> Reducer:
    # Each needs the updates one by one and weighs them equally (see the module).
    return Reducer(empty_stack, push, result, min_updates, needs_individual=True, weighted_by_examples=False,
                   linear=False, label=label)


def median() -> Reducer:
    """Coordinate-wise median (Yin et al. 2018); keeps every update.

    For an even number of updates each coordinate is the mean of the two
    middle values (``numpy.median``).
    """

    def result(acc: Stack) -> list[np.ndarray]:
        _require(acc, 1, "median", "there must be something to combine")
        return [np.median(_stacked(acc, t), axis=0) for t in range(len(acc.shapes))]

    return _reducer(result, 1, "the coordinate-wise median")


def trimmed_count(beta: float, n: int) -> int:
    """Updates dropped from *each* end of every coordinate: ``floor(beta * n)``."""
    return math.floor(beta * n)


def trimmed_mean(beta: float) -> Reducer:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018); keeps every update.

    For each coordinate, sort the ``n`` values, drop the ``k = floor(beta n)``
    smallest and ``k`` largest, average the remaining ``n - 2k``. It tolerates
    up to ``k`` Byzantine workers, so choose beta >= their share.

    Args:
        beta: share trimmed from each end, ``0 < beta < 0.5``.

    Raises:
        ValueError: beta out of range.

    The reducer's ``min_updates`` is the smallest ``n`` with ``k >= 1``: with
    fewer, nothing would be trimmed and the result would silently be the
    plain mean, so ``result`` raises ``AggregationError`` instead.
    """
    if not 0 < beta < 0.5:
        raise ValueError(f"trimmed mean needs 0 < beta < 0.5, got {beta}")
    least = 1
    while trimmed_count(beta, least) < 1:
        least += 1

    def result(acc: Stack) -> list[np.ndarray]:
        n = _require(acc, least, f"trimmed mean with beta={beta:g}",
                     f"floor({beta:g} n) >= 1 update must be trimmed from each end")
        k = trimmed_count(beta, n)
        out = []
        for t in range(len(acc.shapes)):
            s = np.sort(_stacked(acc, t), axis=0)
            out.append(s[k : n - k].mean(axis=0))
        return out

    return _reducer(result, least, f"the trimmed mean (beta {beta:g})")


def krum_scores(acc: Stack, f: int) -> np.ndarray:
    """Krum score of each update: the sum of squared distances to its ``n - f - 2`` nearest others."""
    n = len(acc.updates)
    flat = np.stack([np.concatenate([np.ravel(np.asarray(w, np.float64)) for w in u]) for u in acc.updates])
    # Row by row rather than through the Gram matrix: no cancellation error
    # when updates are close, which is exactly when the ranking matters.
    dist = np.stack([np.square(flat - row).sum(axis=1) for row in flat])
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : n - f - 2]
    return np.asarray(nearest.sum(axis=1))


def _check_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"Krum's f (Byzantine workers tolerated) must be an int >= 0, got {f!r}")


def krum(f: int) -> Reducer:
    """Krum (Blanchard et al. 2017): the single update closest to its neighbours; keeps every update.

    Each update is scored by the sum of squared L2 distances to its
    ``n - f - 2`` nearest other updates; the one with the lowest score
    becomes the round's result (the first one on a tie).

    Args:
        f: number of Byzantine workers to tolerate.

    Raises:
        ValueError: ``f`` negative. ``result`` raises ``AggregationError``
            with fewer than ``2f + 3`` updates.
    """
    _check_f(f)
    least = 2 * f + 3

    def result(acc: Stack) -> list[np.ndarray]:
        _require(acc, least, f"Krum with f={f}", "n >= 2f + 3")
        best = int(np.argmin(krum_scores(acc, f)))
        return [np.asarray(w, np.float64) for w in acc.updates[best]]

    return _reducer(result, least, f"Krum (f={f})")


def multikrum(f: int, m: int) -> Reducer:
    """Multi-Krum (Blanchard et al. 2017): the mean of the ``m`` best-scored updates; keeps every update.

    Scores as in ``krum``; the ``m`` updates with the lowest scores are
    averaged with equal weights. ``m = 1`` is Krum; ``m = n`` is the plain
    (unweighted) mean.

    Args:
        f: number of Byzantine workers to tolerate.
        m: number of updates averaged.

    Raises:
        ValueError: ``f`` negative or ``m`` < 1. ``result`` raises
            ``AggregationError`` with fewer than ``max(2f + 3, m)`` updates.
    """
    _check_f(f)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"multi-Krum's m (updates averaged) must be an int >= 1, got {m!r}")
    least = max(2 * f + 3, m)

    def result(acc: Stack) -> list[np.ndarray]:
        _require(acc, least, f"multi-Krum with f={f}, m={m}", "n >= 2f + 3 and n >= m")
        chosen = np.argsort(krum_scores(acc, f), kind="stable")[:m]
        return [np.mean([np.asarray(acc.updates[i][t], np.float64) for i in chosen], axis=0)
                for t in range(len(acc.shapes))]

    return _reducer(result, least, f"multi-Krum (f={f}, m={m})")
