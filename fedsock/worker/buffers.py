"""The memory a worker reads models into, and when it may be written again.

Every model ``Client.join`` or ``Client.sync`` returns is a list of views of
one flat buffer. The list is the caller's: the Client never writes into it on
its own. A caller that is done with it hands it back, ``sync(..., reuse=old)``,
and the next model is read into that memory instead of fresh memory (which
costs a page fault per page; for a large model more than decrypting it, see
docs/performance.md). ``ModelMemory`` decides whether a handed-back list can
be taken: all of it must be views of one buffer this Client allocated, large
enough, and sharing no memory with what may still have to be sent.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np


class ModelMemory:
    """Allocates model buffers and takes handed-back ones for reuse."""

    def __init__(self) -> None:
        # buffers we allocated and that still exist (the arrays of a model keep theirs alive)
        self._ours: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._scratch: np.ndarray | None = None

    def scratch(self, nbytes: int) -> np.ndarray:
        """Memory of at least ``nbytes`` bytes for a model that is only looked at (an evaluation
        request): the same buffer every time, so the previous one is overwritten; never a model's."""
        if self._scratch is None or self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        return self._scratch

    def allocate(self, nbytes: int) -> np.ndarray:
        """A fresh buffer of ``nbytes`` bytes."""
        buf = np.empty(nbytes, np.uint8)
        self._ours[id(buf)] = buf
        return buf

    def buffer_for(self, nbytes: int, reuse: Sequence[np.ndarray] | None = None,
                   keep: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Memory for a model of ``nbytes`` bytes: that of ``reuse`` if it can be taken, else fresh."""
        buf = self.reclaim(reuse, nbytes, keep)
        return buf if buf is not None else self.allocate(nbytes)

    def reclaim(self, reuse: Sequence[np.ndarray] | None, nbytes: int,
                keep: Sequence[np.ndarray] = ()) -> np.ndarray | None:
        """The buffer behind ``reuse``, if it is one of ours of at least ``nbytes`` bytes, every
        array of ``reuse`` is a view of it, and none of ``keep`` shares its memory; else None."""
        if not reuse:
            return None
        base = reuse[0].base
        if not isinstance(base, np.ndarray) or self._ours.get(id(base)) is not base:
            return None
        if base.nbytes < nbytes or any(a.base is not base for a in reuse):
            return None
        if any(np.may_share_memory(base, k) for k in keep):
            return None
        return base

    @staticmethod
    def shares(model: Sequence[np.ndarray] | None, buf: np.ndarray) -> bool:
        """Whether ``model`` lives in ``buf``."""
        return bool(model) and any(a.base is buf for a in model or ())
