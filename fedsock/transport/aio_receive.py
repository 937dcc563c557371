"""The receive path of the chief's ``Session`` (aio.py): events and updates read on the event loop.

Everything the worker sends is read here, updates included: chunk data is
decrypted straight into its place in the staging buffer, without a trip to
an I/O thread (see aio.py and docs/performance.md). Frames too large for
the free allowance take room in the chief's frame budget before their body
is buffered. ``Receiving`` holds only methods; the state it uses is set up
by ``Session.__init__``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedsock import limits
from fedsock.protocol import (
    NEED_DATA,
    Chunk,
    Connection,
    ConnectionClosed,
    EndOfMessage,
    Error,
    Event,
    TensorAssembler,
    TensorSpec,
)

READ_BYTES = limits.READ_BYTES
YIELD_BYTES = limits.YIELD_BYTES
#: What one non-blocking TLS call returns when the socket is not ready (not a byte count).
WANT_READ, WANT_WRITE = -1, -2


class FrameReservations(Protocol):
    """Where a session takes room for a large frame before buffering its body (the chief's
    ``FrameBudget``)."""

    async def take(self, address: str, nbytes: int, deadline: float) -> None: ...

    def give(self, address: str, nbytes: int) -> None: ...


class Receiving:
    """The read methods of ``Session``: its events, and the chunks of updates."""

    sock: ssl.SSLSocket
    address: str
    conn: Connection
    bytes_in: int
    last_received: float
    frames: FrameReservations | None
    _reserved: int
    _rbuf: memoryview
    _tls_lock: threading.Lock
    _closed: bool

    if TYPE_CHECKING:  # defined by Session (aio.py), which sends and closes with it too
        async def _ready(self, write: bool, deadline: float | None) -> None: ...

        def abort(self) -> None: ...

    async def next_event(self, timeout: float) -> Event:
        """The next event; raises TimeoutError if the peer is silent for ``timeout``."""
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                self._settle()
                return ev  # type: ignore[return-value]
            deadline = time.monotonic() + timeout
            await self._reserve(deadline)
            while True:
                n = self._recv(self._rbuf)
                if n >= 0:
                    break
                await self._ready(n == WANT_WRITE, deadline)
            self._received(n)

    async def read_weights(self, specs: Sequence[TensorSpec], timeout: float,
                           buffer: np.ndarray | None = None) -> tuple[list[np.ndarray], int]:
        """Collect the chunks following a weights message into arrays (in ``buffer`` if given).

        Chunk data is decrypted straight into place, on the event loop. Other
        tasks run whenever the socket has nothing more yet, and at least every
        ``YIELD_BYTES``: a message that has fully arrived is read in one go, so
        updates complete (and are folded) one after another rather than all at
        the end. If this is cancelled, the connection is aborted (it is
        mid-message) and nothing more is written into ``buffer``.

        Returns:
            The arrays and the bytes of their chunk frames.
        """
        asm = TensorAssembler(specs, buffer)
        nbytes = unyielded = 0
        # All of it within the idle timeout plus its size at the slowest rate allowed: a peer that
        # trickles a byte just inside the idle timeout holds its staging room only that long.
        total = sum(s.wire_nbytes for s in specs)
        allowed = timeout + total / limits.MIN_UPLOAD_BYTES_PER_S
        until = time.monotonic() + allowed
        try:
            while True:
                if time.monotonic() >= until:
                    raise TimeoutError(
                        f"an update of {total} bytes must arrive within {allowed:.0f} s (the idle timeout plus its "
                        f"size at {limits.MIN_UPLOAD_BYTES_PER_S // 1024} KiB/s, MIN_UPLOAD_BYTES_PER_S); "
                        f"{nbytes} bytes had arrived. For a link this slow, run the chief with --compress "
                        "(fp16, int8 or topk:R)")
                direct = self.conn.direct_chunk()
                if isinstance(direct, tuple):  # the chunk's data is decrypted straight into place
                    await self._read_into(asm.target(*direct), timeout, until)
                    nbytes += self.conn.last_frame_bytes
                    unyielded += self.conn.last_frame_bytes
                    if unyielded >= YIELD_BYTES:  # the data kept coming: let other tasks in
                        unyielded = 0
                        await asyncio.sleep(0)
                    continue
                ev = self.conn.next_event()
                if ev is NEED_DATA:
                    await self._fill(timeout, direct or READ_BYTES, until)
                elif isinstance(ev, Chunk):
                    asm.add(ev)
                    nbytes += self.conn.last_frame_bytes
                elif isinstance(ev, EndOfMessage):
                    self._settle()
                    return asm.arrays(), nbytes
                elif isinstance(ev, Error):
                    raise ConnectionAbortedError(f"peer aborted: {ev.message} [{ev.code}]")
                elif isinstance(ev, ConnectionClosed):
                    raise ConnectionResetError("peer closed during a weights message")
        except asyncio.CancelledError:
            self.abort()
            raise

    async def _read_into(self, dest: memoryview, timeout: float, until: float) -> None:
        """The data of a chunk started with ``direct_chunk``, read into ``dest``: each byte within
        ``timeout`` of the one before, all of them by ``until`` (monotonic; then it returns short)."""
        got = self.conn.take_chunk_data(dest)
        deadline = min(time.monotonic() + timeout, until)
        while got < len(dest):
            n = self._recv(dest[got:])
            if n > 0:
                got += n
                self.conn.chunk_data_received(n)
                self.bytes_in += n
                self.last_received = time.monotonic()
                deadline = min(self.last_received + timeout, until)
            elif n == 0:
                self.conn.receive_data(b"")  # next_event reports the truncation
                return
            elif await self._ready_by(n == WANT_WRITE, deadline, until):
                return  # past ``until``: read_weights says so

    async def _fill(self, timeout: float, limit: int, until: float) -> None:
        """Read what has arrived, up to ``limit`` bytes (at least one byte, or the end of
        the stream), and feed it to the Connection; at ``until`` (monotonic), return with nothing."""
        deadline = min(time.monotonic() + timeout, until)
        await self._reserve(deadline)
        limit, got = min(limit, READ_BYTES), 0
        while got < limit:
            n = self._recv(self._rbuf[got:limit])
            if n > 0:
                got += n
                continue
            if got:  # deliver what we have; an end of stream shows at the next read
                break
            if n == 0:
                self._received(0)
                return
            if await self._ready_by(n == WANT_WRITE, deadline, until):
                return
        self._received(got)

    async def _ready_by(self, write: bool, deadline: float, until: float) -> bool:
        """``_ready`` until ``deadline``; True (rather than TimeoutError) if that is ``until``."""
        try:
            await self._ready(write, deadline)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            if deadline >= until:
                return True
            raise
        return False

    async def _reserve(self, deadline: float) -> None:
        """Before buffering more of a frame: hold room for all of it if it is large (see ``frames``)."""
        need = self.conn.buffering
        if need == self._reserved:
            return
        self._settle(force=True)
        if need > limits.BUFFERED_FRAME_FREE_BYTES and self.frames is not None:
            await self.frames.take(self.address, need, deadline)
            self._reserved = need

    def _settle(self, force: bool = False) -> None:
        """Give back the room of a frame that is no longer being received."""
        if self._reserved and (force or self.conn.buffering != self._reserved):
            assert self.frames is not None
            self.frames.give(self.address, self._reserved)
            self._reserved = 0

    def _recv(self, view: memoryview) -> int:
        """One TLS read into ``view``: bytes read, 0 at end of stream,
        or WANT_READ / WANT_WRITE if the socket is not ready."""
        with self._tls_lock:
            if self._closed:
                return 0  # aborted: the peer is gone, as far as we care
            try:
                return self.sock.recv_into(view)
            except ssl.SSLWantReadError:
                return WANT_READ
            except ssl.SSLWantWriteError:
                return WANT_WRITE

    def _received(self, n: int) -> None:
        self.bytes_in += n
        self.last_received = time.monotonic()
        self.conn.receive_data(self._rbuf[:n] if n else b"")
