"""Waiting for a send slot: weights messages in flight are capped in all, per address and per worker.

Each weights message (Welcome, Global, Done) takes an I/O thread and the
kernel buffers of its connection until it is written or its deadline passes.
Without a per-address and per-worker cap, connections that stop reading
would hold every slot and starve honest workers. The chief keeps two pools:
replies (Welcome, a stale update's Global, Done to a late joiner) are capped
per address; a round's fan-out to the workers that took part is not (16
workers behind one address, a NAT or a benchmark on one host, get their
model at once), and so it never waits behind replies stuck on connections
that stop reading, from any address. Waiters are served in arrival order
among those that fit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from fedsock import limits
from fedsock.chief.admission import SendCounts


class SendSlots:
    """``async with slots.hold(address, worker):`` around each weights message.

    Args:
        limit: most weights messages in flight at once in all.
        per_address: most in flight to the connections of one address (None: no such cap).
    """

    def __init__(self, limit: int, per_address: int | None = limits.MAX_SENDS_PER_ADDRESS) -> None:
        self.counts = SendCounts(limit, per_address)
        self._waiting: deque[tuple[str, int | None, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, address: str, worker: int | None) -> AsyncIterator[None]:
        if not self.counts.fits(address, worker):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (address, worker, fut)
            self._waiting.append(entry)
            try:
                await fut  # the slot is taken for us when this resolves
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._finish(address, worker)  # granted just as we were cancelled: give it back
                else:
                    self._waiting.remove(entry)
                raise
        else:
            self.counts.start(address, worker)
        try:
            yield
        finally:
            self._finish(address, worker)

    def _finish(self, address: str, worker: int | None) -> None:
        self.counts.finish(address, worker)
        for entry in list(self._waiting):
            if self.counts.total >= self.counts.limit:
                break
            a, w, fut = entry
            if self.counts.fits(a, w):
                self._waiting.remove(entry)
                self.counts.start(a, w)
                fut.set_result(None)
