"""Explicit ownership of reusable array buffers: ``BufferPool`` and ``ModelHolds``.

Fresh memory for a model-sized array costs a page fault per page (the kernel
zeroes and maps each one), which for a big model took more of the chief's
time than TLS. So a round's spent buffers are used again, but only through
values that say who owns what:

- ``BufferPool``: arrays that nothing reads any more. Whoever gives an array
  to the pool gives up every use of it; whoever takes one owns it. The pool
  never guesses (no reference counting): an array still held elsewhere must
  simply not be given.
- ``ModelHolds``: the global models still in use by sends or a checkpoint.
  The owner of the rounds asks it whether the current model is free to be
  overwritten, and it hands a replaced model's buffers to the pool once the
  last use has ended.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Key = tuple[tuple[int, ...], str]


def owner(a: np.ndarray) -> int:
    """Identity of the array that owns ``a``'s memory (``a`` itself unless it is a view).

    Two arrays with different owners never share memory; arrays with the same
    owner may (views of one buffer), so callers treat them as overlapping.
    """
    base: object = a
    while True:
        if isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        elif isinstance(base, memoryview) and base.obj is not None:
            base = base.obj
        else:
            return id(base)


def _key(shape: Sequence[int], dtype: npt.DTypeLike) -> Key:
    return tuple(int(s) for s in shape), np.dtype(dtype).str


class BufferPool:
    """Spare arrays, by shape and dtype, that their givers no longer use.

    Args:
        max_bytes: the most bytes the pool keeps; giving more drops the
            oldest spare arrays (None: no bound).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        self.max_bytes = max_bytes
        self._spare: dict[Key, list[np.ndarray]] = {}
        self._order: dict[int, np.ndarray] = {}  # by id, oldest first (for eviction)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, a: object) -> bool:
        return id(a) in self._order

    def give(self, arrays: Iterable[np.ndarray]) -> None:
        """Hand ``arrays`` over: from now on the pool may give them to anyone to overwrite.

        Arrays that do not own their memory (views), read-only or
        non-contiguous ones, and ones already in the pool are ignored: a
        view could overlap memory the giver still uses.
        """
        for a in arrays:
            if (not isinstance(a, np.ndarray) or a.base is not None or not a.flags.writeable
                    or not a.flags.c_contiguous or id(a) in self._order):
                continue
            if self.max_bytes is not None and a.nbytes > self.max_bytes:
                continue
            self._spare.setdefault(_key(a.shape, a.dtype), []).append(a)
            self._order[id(a)] = a
            self.nbytes += a.nbytes
            while self.max_bytes is not None and self.nbytes > self.max_bytes:
                self._remove(next(iter(self._order.values())))

    def take(self, shape: Sequence[int], dtype: npt.DTypeLike, avoid: Container[int] = ()) -> np.ndarray | None:
        """A spare array of ``shape`` and ``dtype``, now the caller's; None if there is none.

        Args:
            avoid: ``owner`` ids of arrays the caller still reads; a spare
                array with one of them is not returned.
        """
        spare = self._spare.get(_key(shape, dtype), [])
        for i in range(len(spare) - 1, -1, -1):  # the newest is likeliest still in the CPU's cache
            if id(spare[i]) not in avoid:
                found: np.ndarray = spare.pop(i)
                del self._order[id(found)]
                self.nbytes -= found.nbytes
                return found
        return None

    def take_or_empty(self, shape: Sequence[int], dtype: npt.DTypeLike) -> np.ndarray:
        """``take(shape, dtype)``, or a new uninitialised array when the pool has none."""
        a = self.take(shape, dtype)
        return a if a is not None else np.empty(tuple(shape), dtype)

    def _remove(self, a: np.ndarray) -> None:
        bucket = self._spare[_key(a.shape, a.dtype)]
        del bucket[next(i for i, b in enumerate(bucket) if b is a)]
        del self._order[id(a)]
        self.nbytes -= a.nbytes


def _model_key(weights: Sequence[np.ndarray]) -> tuple[int, ...]:
    return tuple(id(a) for a in weights)


@dataclass
class _Held:
    weights: list[np.ndarray]
    uses: int = 0
    retired: list[np.ndarray] | None = None  # set once the model is replaced


@dataclass
class ModelHolds:
    """Which global models are still in use, and when their buffers may go to the pool.

    The owner of the rounds calls ``acquire`` when a send (or a checkpoint)
    of the current model starts and ``release`` when it has ended, whatever
    its outcome. ``current_free`` says whether the current model may be
    overwritten in place (``finish_round(reuse_weights=...)``); ``replace``
    installs the next model and gives the old one's retired buffers to the
    pool, now or at the release of its last use.
    """

    pool: BufferPool
    _models: dict[tuple[int, ...], _Held] = field(default_factory=dict)
    _current: tuple[int, ...] | None = None

    def adopt(self, weights: Sequence[np.ndarray]) -> None:
        """Make ``weights`` the current model (initial, restored, or adopted from upstream).

        A model it replaces is forgotten once its uses end; its buffers are
        not pooled (only ``replace`` knows which of them nothing else holds).
        """
        old, self._current = self._current, _model_key(weights)
        self._models.setdefault(self._current, _Held(list(weights)))
        if old is not None and old != self._current and old in self._models:
            self._settle(old)

    @property
    def current_free(self) -> bool:
        """No use of the current model is under way."""
        held = self._models.get(self._current) if self._current is not None else None
        return held is None or held.uses == 0

    def acquire(self, weights: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """A use of ``weights`` starts (the same arrays as a model given to ``adopt`` or ``replace``,
        in any list); returns them."""
        held = self._models.setdefault(_model_key(weights), _Held(list(weights)))
        held.uses += 1
        return weights

    def release(self, weights: Sequence[np.ndarray]) -> None:
        """A use that ``acquire`` started has ended.

        Raises:
            ValueError: ``weights`` has no use under way (a release without acquire).
        """
        key = _model_key(weights)
        held = self._models.get(key)
        if held is None or held.uses == 0:
            raise ValueError("release of a model with no use under way")
        held.uses -= 1
        self._settle(key)

    def replace(self, weights: Sequence[np.ndarray], retired: Sequence[np.ndarray]) -> None:
        """``weights`` (``finish_round``'s) become the current model.

        Args:
            retired: the old model's arrays that ``finish_round`` reports as
                no longer held by the new model or transform state.

        Raises:
            ValueError: there is no current model (``adopt`` one first).
        """
        if self._current is None:
            raise ValueError("there is no current model to replace: adopt the first one")
        self._models[self._current].retired = list(retired)
        self._settle(self._current)
        self.adopt(weights)

    def _settle(self, key: tuple[int, ...]) -> None:
        held = self._models[key]
        if held.uses == 0 and held.retired is not None:
            del self._models[key]
            self.pool.give(held.retired)
        elif held.uses == 0 and key != self._current:
            del self._models[key]
