"""One worker connection on the chief: asyncio I/O around a ``Connection``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from fedsock.protocol import (
    NEED_DATA,
    Chunk,
    Connection,
    ConnectionClosed,
    EndOfMessage,
    Error,
    Event,
    Message,
    Role,
    TensorAssembler,
    TensorSpec,
    iter_chunks,
)

READ_BYTES = 256 * 1024


class Session:
    """Reads events from and writes messages to one peer.

    Byte counters feed the chief's per-round ``bytes_in`` / ``bytes_out``.
    Writes are serialized by a lock so that a heartbeat never lands between
    the chunks of a weights message.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self.reader, self.writer, self.peer = reader, writer, peer
        self.conn = Connection(Role.CHIEF)
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_sent = time.monotonic()
        self.last_received = time.monotonic()
        self.worker_id: int | None = None
        self.conn_id = 0
        self.name = "?"
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        """How logs name this peer."""
        return f"worker {self.worker_id} ({self.name})" if self.worker_id else self.peer

    async def next_event(self, timeout: float) -> Event:
        """The next event; raises TimeoutError if the peer is silent for ``timeout``."""
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev  # type: ignore[return-value]
            data = await asyncio.wait_for(self.reader.read(READ_BYTES), timeout)
            self.bytes_in += len(data)
            self.last_received = time.monotonic()
            self.conn.receive_data(data)

    async def read_weights(self, specs: Sequence[TensorSpec], timeout: float,
                           buffer: np.ndarray | None = None) -> tuple[list[np.ndarray], int]:
        """Collect the chunks following a weights message into arrays (in ``buffer`` if given).

        Returns:
            The arrays and the bytes of their chunk frames.
        """
        asm = TensorAssembler(specs, buffer)
        nbytes = 0
        while True:
            ev = await self.next_event(timeout)
            if isinstance(ev, Chunk):
                asm.add(ev)
                nbytes += self.conn.last_frame_bytes
            elif isinstance(ev, EndOfMessage):
                return asm.arrays(), nbytes
            elif isinstance(ev, Error):
                raise ConnectionAbortedError(f"peer aborted: {ev.message} [{ev.code}]")
            elif isinstance(ev, ConnectionClosed):
                raise ConnectionResetError("peer closed during a weights message")

    async def send(self, msg: Message, arrays: Sequence[np.ndarray] = ()) -> int:
        """Send a message and, for weights messages, its chunks. Returns bytes sent."""
        async with self._lock:
            n = self._write(self.conn.send(msg))
            for chunk in iter_chunks(arrays):
                for part in self.conn.send_parts(chunk):  # the tensor bytes are not copied
                    n += self._write(part)
                await self.writer.drain()
            await self.writer.drain()
            return n

    def _write(self, data: bytes | memoryview) -> int:
        self.writer.write(data)
        self.bytes_out += len(data)
        self.last_sent = time.monotonic()
        return len(data)

    async def send_error(self, code: str, message: str) -> None:
        """Send ``Error`` if still allowed; never raises."""
        if self.conn.we_finished:
            return
        try:
            await asyncio.wait_for(self.send(Error(code=code, message=message)), 5.0)
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass

    async def close(self) -> None:
        """Close the connection, bounded in time even if the peer is stuck."""
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass
