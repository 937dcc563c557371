"""``finish_round``: from a round's combined weights to the next global model, with buffer reuse.

The chief's round controller and ``fedsock.sim`` both finish a round with
this one function::

    delta = combined - weights                     (in combined's dtype)
    out, state = transform.update(delta, state, weights)
    new = weights + out                            (in float64, then each weight's dtype)

bit for bit what that numpy computes (for a pass-through transform, plain
FedAvg: ``new = combined`` in each weight's dtype, one pass, no delta), but
without fresh model-sized memory where it can avoid it: the delta is
computed in the spent combined buffers, the new weights are written into a
buffer this call owns (a spent delta in
the model's dtype, the old weights when the caller says nothing else reads
them, or a ``BufferPool`` array), and spent buffers it no longer needs go to
the pool. Ownership is only ever what the caller declares; the call never
writes into an array that the transform's state, its output or an input it
still reads shares memory with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedsock.aggregation.buffers import BufferPool, ModelHolds, owner
from fedsock.aggregation.transforms import State, Transform, apply_delta


class Finished(NamedTuple):
    """What ``finish_round`` produced.

    Attributes:
        weights: the new global model, one array per tensor in the old
            weights' dtypes (some may be the old arrays, overwritten).
        state: the server transform's new state.
        retired: the old weights' arrays that neither ``weights`` nor
            ``state`` holds: give them to the pool (``BufferPool.give`` or
            ``ModelHolds.replace``) once the caller's own uses of them
            (sends, a checkpoint) have ended.
    """

    weights: list[np.ndarray]
    state: State
    retired: list[np.ndarray]


def arrays_in(value: Any) -> Iterator[np.ndarray]:
    """Every numpy array inside ``value`` (nested tuples, lists, dicts, dataclasses)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from arrays_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from arrays_in(item)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from arrays_in(getattr(value, name))


def _delta(c: np.ndarray, w: np.ndarray, in_place: bool) -> np.ndarray:
    """``c - w``; in ``c``'s buffer when allowed and numpy's result dtype is ``c``'s."""
    if in_place and c.dtype.kind == "f" and c.flags.writeable and np.result_type(c, w) == c.dtype:
        np.subtract(c, w, out=c)
        return c
    d: np.ndarray = np.subtract(c, w)
    return d


def finish_round(weights: Sequence[np.ndarray], combined: Sequence[np.ndarray], transform: Transform,
                 state: State, pool: BufferPool, *, spent: bool = False,
                 reuse_weights: bool = False) -> Finished:
    """Apply the server transform to ``combined - weights`` and add the result to ``weights``.

    Args:
        weights: the current global model.
        combined: the round's combined weights, one array per tensor of the
            same shape: a reducer's ``result``, or an average combined
            outside (secure aggregation's).
        transform: the server transform; ``state`` its current state.
        pool: spare buffers the new weights may be written into; the spent
            buffers this call no longer needs are given to it.
        spent: ``combined``'s arrays are this call's: nothing reads them
            afterwards (a used-up accumulator's result, a freshly decoded
            average). The delta is then computed in them.
        reuse_weights: nothing but this call reads ``weights`` from now on
            (no send, checkpoint or evaluation of them under way): the new
            weights may be written into them.

    Returns:
        ``Finished(weights, state, retired)``.

    Raises:
        ValueError: ``combined`` does not match ``weights`` in count or shapes.
    """
    olds = [np.asarray(w) for w in weights]
    if len(combined) != len(olds):
        raise ValueError(f"{len(combined)} combined tensors, the model has {len(olds)}")
    inputs = [np.asarray(c) for c in combined]
    for i, (c, w) in enumerate(zip(inputs, olds)):
        if c.shape != w.shape:
            raise ValueError(f"combined tensor {i} has shape {c.shape}, the model's is {w.shape}")
    weight_owners = {owner(w) for w in olds}
    if transform.passthrough:  # the new model is ``combined`` itself: no delta, no transform
        delta, outs, new_state = [], inputs, state
    else:
        delta = [_delta(c, w, spent and owner(c) not in weight_owners) for c, w in zip(inputs, olds)]
        out, new_state = transform.update(delta, state, olds)
        outs = [np.asarray(d) for d in out]
    # Arrays this call owns: the spent inputs and any delta it allocated.
    ours = {id(a): a for a in (*(inputs if spent else ()), *delta)}
    # Every array still read, or kept by the result, counted by the memory it lives in.
    busy = Counter(owner(a) for a in (*olds, *outs, *arrays_in(state), *arrays_in(new_state),
                                      *(() if spent else inputs)))
    new = []
    for w, d in zip(olds, outs):
        target: np.ndarray | None = None
        if (id(d) in ours and d.dtype == w.dtype and d.shape == w.shape and d.flags.c_contiguous
                and busy[owner(d)] == 1):
            target = d  # read and written element by element: in place is exact
        elif reuse_weights and w.flags.writeable and w.flags.c_contiguous and busy[owner(w)] == 1:
            target = w
        else:
            target = pool.take(w.shape, w.dtype, avoid=busy)
        if not transform.passthrough:
            res = apply_delta([w], [d], [target])[0]
        elif target is d:  # a spent buffer of the model's dtype (a float32 sum): already the new model
            res = d
        else:
            res = target if target is not None else np.empty(w.shape, w.dtype)  # the pool had none
            np.copyto(res, d, casting="unsafe")
        busy[owner(res)] += 1
        new.append(res)
    # The transform's output is used up: what this call owns goes to the pool unless the result keeps it
    # (new weights, new state) or something may still read it (the old model, the old state, inputs not spent).
    kept = {owner(a) for a in (*olds, *new, *arrays_in(state), *arrays_in(new_state), *(() if spent else inputs))}
    pool.give(a for a in ours.values() if owner(a) not in kept)
    retired = [w for w in olds if busy[owner(w)] == 1]  # only the old model itself refers to it
    return Finished(new, new_state, retired)


def finish_round_with_holds(holds: ModelHolds, weights: Sequence[np.ndarray], combined: Sequence[np.ndarray],
                            transform: Transform, state: State, *, spent: bool) -> Finished:
    """``finish_round`` for an owner that tracks the model's uses in ``holds``.

    The current model is overwritten only if ``holds`` has no use of it
    under way; the result becomes ``holds``' current model, and the old
    one's retired buffers go to ``holds.pool`` now or when its last use
    ends. ``weights`` must be ``holds``' current model.

    Returns:
        ``finish_round``'s ``Finished``; its ``retired`` are already taken care of.
    """
    done = finish_round(weights, combined, transform, state, holds.pool, spent=spent,
                        reuse_weights=holds.current_free)
    holds.replace(done.weights, done.retired)
    return done
