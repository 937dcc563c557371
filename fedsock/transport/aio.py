"""The chief's asyncio channel: one worker connection, a TLS socket around a ``Connection``.

The event loop runs the conversation (handshake messages, heartbeats, round
logic, timeouts), reads everything the worker sends, updates included, and
waits for the socket without a thread. What the chief sends in bulk, the
chunks of the Welcome, Global and Done (the same model to every worker),
moves on I/O threads: ``ssl`` releases the GIL while it encrypts and calls
the kernel, so those sends spread over every core. Updates are read on the
loop because a trip to a thread and back cost more than the decryption
(thread wake-ups and GIL hand-overs on every TLS record; see
docs/performance.md). The socket stays non-blocking; every call into its
TLS object holds a per-connection lock (an OpenSSL object is not safe to
use from two threads at once), never while waiting for the socket to be
ready. The read path is ``Receiving`` (aio_receive.py); this module holds
the connection's state, the sends, the waits for the socket and closing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from fedsock import limits
from fedsock.protocol import Chunk, Connection, Error, Message, Role, iter_chunks
from fedsock.transport.aio_receive import (
    READ_BYTES,
    WANT_READ,
    WANT_WRITE,
    FrameReservations,
    Receiving,
)

__all__ = ["FrameReservations", "Session"]

T = TypeVar("T")
#: Largest piece handed to one TLS write (one chunk's data: fewer, larger writes cost less
#: than 256 KiB slices did), so the TLS lock is held for a millisecond at most.
SEND_SLICE = limits.CHUNK_BYTES
#: How often an I/O thread waiting for the socket checks whether the connection was aborted.
_POLL_S = 0.25
#: What a weights message sent with ``release`` keeps back until then: its last
#: bytes, as the end of its last chunk (all of a 1 MiB chunk took a while to
#: follow once released, and workers got the model one after another).
HELD_BYTES = 4096


class Session(Receiving):
    """Reads events from and writes messages to one peer (the read methods: ``Receiving``).

    Args:
        sock: the TLS socket, handshake done, non-blocking.
        peer: ``host:port`` of the peer, for logs.
        io: the threads that move weights messages.

    Byte counters feed the chief's per-round ``bytes_in`` / ``bytes_out``.
    Writes are serialized by a lock so that a heartbeat never lands between
    the chunks of a weights message.
    """

    def __init__(self, sock: ssl.SSLSocket, peer: str, io: concurrent.futures.Executor) -> None:
        self.sock, self.peer, self._io = sock, peer, io
        self.address = peer.rsplit(":", 1)[0]  # the IP address, for per-address limits
        self.conn = Connection(Role.CHIEF)
        self.bytes_in = self.bytes_out = 0
        self.last_sent = self.last_received = time.monotonic()
        self.worker_id: int | None = None
        self.conn_id, self.name = 0, "?"
        self.reconnect_secret, self.replaced = b"", False  # issued in its Welcome; a newer connection took over
        self._lock = asyncio.Lock()  # one message written at a time
        self._tls_lock = threading.Lock()  # one call into the TLS object at a time
        self._closed = False  # aborted or closing: no more calls into TLS
        self._busy = 0  # I/O threads and loop waiters still using the socket
        self._rbuf = memoryview(bytearray(READ_BYTES))
        #: Longest silence while the end of a message is held back (see ``send``).
        self.keepalive_s = 10.0
        #: Room for frames over ``limits.BUFFERED_FRAME_FREE_BYTES`` (None: not limited).
        self.frames: FrameReservations | None = None
        self._reserved = 0  # bytes taken from ``frames`` for the frame being received

    @property
    def label(self) -> str:
        """How logs name this peer."""
        return f"worker {self.worker_id} ({self.name})" if self.worker_id else self.peer

    # --- sending ----------------------------------------------------------

    async def send(self, msg: Message, arrays: Sequence[np.ndarray] = (),
                   release: threading.Event | None = None, *, timeout: float | None) -> int:
        """Send a message and, for weights messages, its chunks. Returns bytes sent.

        Chunks go out from an I/O thread, straight from ``arrays`` (no copy);
        if cancelled midway, or past ``timeout`` (TimeoutError; waiting for an
        earlier message included), the connection is aborted: a half-sent
        message leaves it unusable. ``timeout`` None: the caller bounds the
        send (the wait for ``release`` is not the peer's time). With
        ``release``, the last bytes wait until it is set (the peer has the
        message only then), trickling a byte every ``keepalive_s``.
        """
        if timeout is None:
            return await self._send(msg, arrays, release)
        try:
            return await asyncio.wait_for(self._send(msg, arrays, release), timeout)
        except TimeoutError:
            raise TimeoutError(f"{type(msg).__name__} not sent within the send timeout ({timeout:g} s): "
                               "the peer does not read") from None

    async def _send(self, msg: Message, arrays: Sequence[np.ndarray], release: threading.Event | None) -> int:
        async with self._lock:
            if any(np.asarray(a).size for a in arrays):
                return await self._in_thread(self._send_blocking, msg, arrays, release)
            while release is not None and not release.is_set():  # no chunks to hold back: hold it all
                await asyncio.sleep(0.01)
            data = self.conn.send(msg)  # no chunks follow (none, or only empty tensors)
            view, sent = memoryview(data), 0
            try:
                while sent < len(view):
                    n = self._send_some(view[sent:])
                    if n < 0:
                        await self._ready(n == WANT_WRITE, None)
                    else:
                        sent += n
            except asyncio.CancelledError:
                if sent:
                    self.abort()
                raise
            return len(view)

    def _send_blocking(self, msg: Message, arrays: Sequence[np.ndarray], release: threading.Event | None) -> int:
        n = self._write_blocking(self.conn.send(msg))
        last: Chunk | None = None
        for chunk in iter_chunks(arrays):
            if last is not None:
                n += self._write_chunk(last)
            last = chunk
        if last is not None and release is not None:
            if len(last.data) > HELD_BYTES:  # all but its very end goes out now
                cut = len(last.data) - HELD_BYTES
                n += self._write_chunk(Chunk(last.tensor, last.offset, last.data[:cut]))
                last = Chunk(last.tensor, last.offset + cut, last.data[cut:])
            while not release.wait(_POLL_S):
                if self._closed:
                    raise ConnectionResetError("connection closed")
                if time.monotonic() - self.last_sent >= self.keepalive_s and len(last.data) > 1:
                    n += self._write_chunk(Chunk(last.tensor, last.offset, last.data[:1]))
                    last = Chunk(last.tensor, last.offset + 1, last.data[1:])
        if last is not None:
            n += self._write_chunk(last)
        return n

    def _write_chunk(self, chunk: Chunk) -> int:
        return sum(self._write_blocking(part) for part in self.conn.send_parts(chunk))  # no copy of the data

    def _write_blocking(self, data: bytes | memoryview) -> int:
        view, sent = memoryview(data), 0
        while sent < len(view):
            n = self._send_some(view[sent:])
            if n < 0:
                self._wait_blocking(n == WANT_WRITE)
            else:
                sent += n
        return sent

    def _send_some(self, view: memoryview) -> int:
        """One TLS write of at most SEND_SLICE bytes: bytes written, or WANT_READ / WANT_WRITE."""
        with self._tls_lock:
            if self._closed:
                raise ConnectionResetError("connection closed")
            try:
                n = self.sock.send(view[:SEND_SLICE])
            except ssl.SSLWantWriteError:
                return WANT_WRITE
            except ssl.SSLWantReadError:
                return WANT_READ
        self.bytes_out += n
        self.last_sent = time.monotonic()
        return n

    async def send_error(self, code: str, message: str, timeout: float = limits.ERROR_SEND_TIMEOUT_S,
                         retry_after_ms: int | None = None) -> None:
        """Send ``Error`` (with ``retry_after_ms``, if given) if still allowed, within ``timeout``
        (queueing included); never raises."""
        if self.conn.we_finished:
            return
        try:
            await self.send(Error(code=code, message=message, retry_after_ms=retry_after_ms), timeout=timeout)
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass

    # --- waiting, threads, closing -----------------------------------------

    async def _ready(self, write: bool, deadline: float | None) -> None:
        """Wait on the event loop until the socket is readable (writable); TimeoutError at ``deadline``."""
        if not write and self.sock.pending():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()
        if fd < 0:
            return  # closed: the next call says so

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self._busy += 1
        (loop.add_writer if write else loop.add_reader)(fd, wake)
        try:
            await asyncio.wait_for(fut, None if deadline is None else max(deadline - time.monotonic(), 0.0))
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)
            self._busy -= 1

    def _wait_blocking(self, write: bool) -> None:
        """On an I/O thread: wait until the socket is readable (writable) or the connection
        is aborted (the caller's time limit is the send's, on the event loop)."""
        if not write and self.sock.pending():
            return
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT if write else select.POLLIN)
        while not self._closed:
            if poller.poll(_POLL_S * 1000):
                return

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on an I/O thread; on cancellation, abort and let it stop first."""
        self._busy += 1
        try:
            cf = self._io.submit(fn, *args)
            try:
                return await asyncio.wrap_future(cf)
            except asyncio.CancelledError:
                self.abort()
                deadline = time.monotonic() + 10.0
                while not cf.done() and time.monotonic() < deadline:  # it stops within _POLL_S
                    try:
                        await asyncio.sleep(0.01)
                    except asyncio.CancelledError:
                        pass
                raise
        finally:
            self._busy -= 1

    def abort(self) -> None:
        """Drop the connection now: pending and later reads see its end, writes fail."""
        with self._tls_lock:
            self._closed = True
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # wakes every waiter; TLS state untouched
        except OSError:
            pass

    async def close(self) -> None:
        """Close the connection, bounded in time even if the peer is stuck.

        What we sent is not lost to a reset: our side is shut down first and
        whatever the peer still sends is read and dropped until it closes
        too (at most 2 s).
        """
        graceful = not self._closed
        with self._tls_lock:
            self._closed = True
        try:
            if graceful:
                socket.socket.shutdown(self.sock, socket.SHUT_WR)
                deadline = time.monotonic() + 2.0
                while True:
                    try:
                        if not socket.socket.recv(self.sock, 65536):  # raw bytes, dropped
                            break
                    except BlockingIOError:
                        await self._ready(False, deadline)
        except Exception:  # noqa: BLE001 - closing a broken or stuck connection
            pass
        finally:
            self.abort()
            self._settle(force=True)
            deadline = time.monotonic() + 2.0
            while self._busy and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.sock.close()
