"""A byte budget for updates being received: chief memory stays flat in the number of workers.

An update is held in memory (its raw wire bytes, once) from its first chunk
until it has been checked and folded into the round's running sum. A NaN or
Inf may arrive in its last chunk, and an update that contains one must never
be averaged in, so the chief folds an update only once all of it has arrived.
This budget bounds how many such updates are in flight at once: a worker
whose update does not fit waits (TCP back-pressure holds its bytes in the
kernel) until another finishes. One update is always admitted, so a model
larger than the budget still goes through, one upload at a time.

The staging buffers are kept and reused from round to round (up to the
budget, or the one buffer of an update larger than it: that update is staged
every round anyway, and fresh memory costs a page fault per page, for a
multi-GiB model seconds of the event loop's time per update), so receiving an
update neither allocates nor clears memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from fedsock.errors import ErrorCode, RemoteProtocolError

#: Default budget: bytes of updates in flight at once.
DEFAULT_STAGING_BYTES = 128 * 1024 * 1024


class StagingBudget:
    """Admits updates while their bytes fit in ``limit`` (at least one at a time).

    Args:
        limit: bytes of in-flight updates allowed at once.
    """

    def __init__(self, limit: int = DEFAULT_STAGING_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = asyncio.Condition()
        self._free: list[np.ndarray] = []

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[np.ndarray]:
        """Wait until ``nbytes`` fit (or nothing else is held); yields a buffer of at least ``nbytes``.

        The buffer is uninitialised and returns to the pool after the block:
        nothing may keep a view of it.
        """
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            try:
                buf = self._take(nbytes)
            except MemoryError:  # nothing is held: the others go on
                raise RemoteProtocolError(
                    f"the chief cannot allocate {nbytes} bytes to receive this update (out of memory); "
                    "a model this large needs a chief started with it (--model) on a machine with more "
                    "memory", code=ErrorCode.LIMIT_EXCEEDED) from None
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield buf
        finally:
            async with self._cond:
                self.used -= nbytes
                if buf.size + sum(b.size for b in self._free) <= self.limit or not self._free:
                    self._free.append(buf)  # alone, even over the limit: the next update too needs it
                self._cond.notify_all()

    def _take(self, nbytes: int) -> np.ndarray:
        fits = [i for i, b in enumerate(self._free) if nbytes <= b.size <= 2 * nbytes]
        if fits:
            return self._free.pop(min(fits, key=lambda i: self._free[i].size))
        while self._free and self.used + nbytes + sum(b.size for b in self._free) > self.limit:
            # make room: pooled and held memory stay within the budget
            self._free.pop(max(range(len(self._free)), key=lambda i: self._free[i].size))
        return np.empty(nbytes, np.uint8)
