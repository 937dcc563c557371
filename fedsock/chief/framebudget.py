"""Waiting for room to buffer a large frame: partly received frames share a byte budget.

A frame other than a chunk's data (which goes straight into the staging pool)
is buffered whole before it is decoded. Each is capped on its header
(``limits.MAX_WORKER_MESSAGE_BYTES`` after Auth), but many connections could
each announce one and send all but its last byte. A frame larger than
``limits.BUFFERED_FRAME_FREE_BYTES`` therefore takes its announced size from
this budget (in all, and per IP address) before its body is read; one that
does not fit stays unread in the kernel (TCP back-pressure) until another
frame completes or its connection ends, within the connection's read
deadline. Small frames (heartbeats, secure aggregation's keys, the Update
header of a model of up to about 1,000 tensors) never wait.
"""

from __future__ import annotations

import asyncio
import time

from fedsock import limits
from fedsock.chief.admission import BufferedFrames


class FrameBudget:
    """``await budget.take(address, n, deadline)`` before buffering a frame's body; ``give`` after."""

    def __init__(self, limit: int = limits.MAX_BUFFERED_FRAME_BYTES,
                 per_address: int = limits.MAX_BUFFERED_FRAME_BYTES_PER_ADDRESS) -> None:
        self.counts = BufferedFrames(limit, per_address)
        self.peak = 0
        self._changed = asyncio.Event()

    async def take(self, address: str, nbytes: int, deadline: float) -> None:
        """Wait until ``nbytes`` fit for ``address``; TimeoutError at ``deadline`` (monotonic)."""
        while not self.counts.fits(address, nbytes):
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise TimeoutError(
                    f"a frame of {nbytes} bytes waited for room among the partly received frames (at most "
                    f"{self.counts.limit} bytes in all, {self.counts.per_address} per address)") from None
        self.counts.take(address, nbytes)
        self.peak = max(self.peak, self.counts.total)

    def give(self, address: str, nbytes: int) -> None:
        self.counts.give(address, nbytes)
        self._changed.set()  # wake every waiter; each checks again
        self._changed = asyncio.Event()
