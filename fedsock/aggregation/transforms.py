"""Server-side transforms on the averaged update, composable like optax.

A ``Transform`` is a pair of pure functions::

    init(params) -> state
    update(delta, state, params) -> (delta, state)

``delta`` is the weighted mean of the workers' weights minus the current
global weights (FedOpt's negative pseudo-gradient); the new global model is
``params + delta`` after the chain. State is an explicit tuple, never hidden
on an object, so a checkpoint is simply the state (see ``flatten_state``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

Arrays = list[np.ndarray]
State = Any


class Transform(NamedTuple):
    """A pure server transform: ``init`` and ``update``.

    ``passthrough``: ``update`` returns the delta and the state unchanged
    (plain FedAvg), so the new model is the round's combined weights
    themselves and ``finish_round`` skips the delta.
    """

    init: Callable[[Sequence[np.ndarray]], State]
    update: Callable[[Arrays, State, Sequence[np.ndarray]], tuple[Arrays, State]]
    passthrough: bool = False


class EmptyState(NamedTuple):
    """State of a stateless transform."""


def identity() -> Transform:
    """Pass the averaged delta through unchanged (plain FedAvg)."""

    def init(params: Sequence[np.ndarray]) -> EmptyState:
        return EmptyState()

    def update(delta: Arrays, state: State, params: Sequence[np.ndarray]) -> tuple[Arrays, State]:
        return delta, state

    return Transform(init, update, passthrough=True)


def scale(factor: float) -> Transform:
    """Multiply the delta by ``factor`` (a server learning rate)."""

    def init(params: Sequence[np.ndarray]) -> EmptyState:
        return EmptyState()

    def update(delta: Arrays, state: State, params: Sequence[np.ndarray]) -> tuple[Arrays, State]:
        return [d * factor for d in delta], state

    return Transform(init, update)


class TraceState(NamedTuple):
    """Momentum buffers, one per tensor."""

    trace: tuple[np.ndarray, ...]


def trace(momentum: float) -> Transform:
    """Heavy-ball momentum on the delta: ``v = momentum * v + delta``."""

    def init(params: Sequence[np.ndarray]) -> TraceState:
        return TraceState(tuple(np.zeros(np.shape(p), np.float64) for p in params))

    def update(delta: Arrays, state: State, params: Sequence[np.ndarray]) -> tuple[Arrays, State]:
        new = tuple(momentum * v + d for v, d in zip(state.trace, delta))
        return list(new), TraceState(new)

    return Transform(init, update)


class ChainState(NamedTuple):
    """States of the chained transforms, in order."""

    inner: tuple[State, ...]


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` one after the other; their states form a tuple."""

    def init(params: Sequence[np.ndarray]) -> ChainState:
        return ChainState(tuple(t.init(params) for t in transforms))

    def update(delta: Arrays, state: State, params: Sequence[np.ndarray]) -> tuple[Arrays, State]:
        states = []
        for t, s in zip(transforms, state.inner):
            delta, s = t.update(delta, s, params)
            states.append(s)
        return delta, ChainState(tuple(states))

    return Transform(init, update, passthrough=all(t.passthrough for t in transforms))


def fedavg() -> Transform:
    """FedAvg (McMahan et al. 2017): the new model is the weighted mean."""
    return chain(identity())


def fedavgm(server_lr: float = 1.0, momentum: float = 0.3) -> Transform:
    """FedAvgM (Hsu et al. 2019): server momentum on the averaged delta (defaults: ``--strategy fedavgm``'s)."""
    return chain(trace(momentum), scale(server_lr))


def apply_delta(params: Sequence[np.ndarray], delta: Sequence[np.ndarray],
                into: Sequence[np.ndarray | None] = ()) -> Arrays:
    """``params + delta``, computed in float64, returned in each param's dtype.

    Works block by block: new arrays of the params' size (or ``into[i]``, when
    given and not None: an array of the param's shape and dtype, which may be
    the param itself), no float64 copy of a whole tensor.
    """
    block = 1 << 16  # the float64 scratch stays in the CPU's cache
    out = []
    for i, (p, d) in enumerate(zip(params, delta)):
        p = np.asarray(p)
        target = into[i] if i < len(into) else None
        res = target if target is not None else np.empty(p.shape, p.dtype)
        fp, fd, fr = p.reshape(-1), np.asarray(d).reshape(-1), res.reshape(-1)
        tmp = np.empty(min(block, max(fp.size, 1)), np.float64)
        for start in range(0, fp.size, block):
            stop = min(start + block, fp.size)
            t = tmp[: stop - start]
            np.add(fp[start:stop], fd[start:stop], out=t, dtype=np.float64)
            fr[start:stop] = t
        out.append(res)
    return out


def flatten_state(state: State) -> Arrays:
    """The arrays of a (nested tuple/NamedTuple) state, depth first."""
    if isinstance(state, np.ndarray):
        return [state]
    if isinstance(state, tuple):
        return [a for item in state for a in flatten_state(item)]
    raise TypeError(f"cannot flatten state item of type {type(state).__name__}")


def unflatten_state(template: State, arrays: Sequence[np.ndarray]) -> State:
    """Rebuild a state shaped like ``template`` from ``flatten_state`` output.

    Raises:
        ValueError: the arrays do not fit the template (count or shapes).
    """
    it = iter(arrays)

    def build(t: State) -> State:
        if isinstance(t, np.ndarray):
            try:
                a = next(it)
            except StopIteration:
                raise ValueError("checkpointed state has too few arrays") from None
            if a.shape != t.shape:
                raise ValueError(f"checkpointed state array of shape {a.shape}, expected {t.shape}")
            return np.array(a, dtype=t.dtype)
        items = [build(x) for x in t]
        return type(t)(*items) if hasattr(t, "_fields") else tuple(items)

    out = build(template)
    if next(it, None) is not None:
        raise ValueError("checkpointed state has too many arrays")
    return out
