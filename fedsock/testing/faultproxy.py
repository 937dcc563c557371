"""A userspace TCP relay that injects faults (``tc netem`` is not always available).

It listens on 127.0.0.1 and relays every connection to a target, optionally:

* delaying each forwarded piece by ``delay`` seconds;
* cutting a connection (RST both ways) after ``cut_after`` bytes from the
  client, or after ``cut_down_after`` bytes from the server, for the first
  ``faulty`` connections;
* stalling (forwarding nothing more either way, keeping both sockets open)
  after ``stall_after`` client bytes, for the first ``faulty`` connections;
* dropping each connection with probability ``drop_rate`` at a random byte
  within the first ``drop_window`` client bytes.

TLS passes through untouched: the proxy sees only ciphertext, like a real
network fault would.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0
    stalls: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class FaultProxy:
    """Run with ``start()`` (in a background thread) and ``stop()``; or as a context manager."""

    target: tuple[str, int]
    delay: float = 0.0
    cut_after: int | None = None
    cut_down_after: int | None = None
    stall_after: int | None = None
    faulty: int = 1
    drop_rate: float = 0.0
    drop_window: int = 1 << 20
    seed: int = 0
    stats: ProxyStats = field(default_factory=ProxyStats)
    address: tuple[str, int] = ("127.0.0.1", 0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> tuple[str, int]:
        """Start listening; returns the (host, port) to connect to."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.address = fut.result(10)
        return self.address

    @property
    def url(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        async def _stop() -> None:
            self._closing.set()
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> tuple[str, int]:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    def _limit_for(self, index: int) -> tuple[int | None, str]:
        if index < self.faulty and self.cut_after is not None:
            return self.cut_after, "cut"
        if index < self.faulty and self.stall_after is not None:
            return self.stall_after, "stall"
        if self.drop_rate and self._rng.random() < self.drop_rate:
            return self._rng.randrange(1, self.drop_window), "cut"
        return None, ""

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        index = self.stats.connections
        self.stats.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            return
        self._writers |= {c_writer, s_writer}
        limit, action = self._limit_for(index)
        down_limit = self.cut_down_after if index < self.faulty else None
        stop = asyncio.Event()

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
            sent = 0
            try:
                while not stop.is_set():
                    data = await reader.read(65536)
                    if not data:
                        writer.write_eof() if writer.can_write_eof() else writer.close()
                        return
                    if not upstream and down_limit is not None and sent + len(data) >= down_limit:
                        writer.write(data[: down_limit - sent])
                        await writer.drain()
                        self.stats.cuts += 1
                        c_writer.transport.abort()
                        s_writer.transport.abort()
                        stop.set()
                        return
                    if upstream and limit is not None and sent + len(data) >= limit:
                        writer.write(data[: limit - sent])
                        await writer.drain()
                        if action == "cut":
                            self.stats.cuts += 1
                            c_writer.transport.abort()
                            s_writer.transport.abort()
                        else:
                            self.stats.stalls += 1
                        stop.set()
                        return
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.write(data)
                    await writer.drain()
                    sent += len(data)
                    if upstream:
                        self.stats.bytes_up += len(data)
                    else:
                        self.stats.bytes_down += len(data)
            except (OSError, asyncio.CancelledError):
                c_writer.transport.abort()
                s_writer.transport.abort()

        await asyncio.gather(pump(c_reader, s_writer, True), pump(s_reader, c_writer, False))
        if action == "stall" and stop.is_set():
            await self._closing.wait()  # hold both sockets open and silent until the proxy stops
        for w in (c_writer, s_writer):
            w.close()
        self._writers -= {c_writer, s_writer}
