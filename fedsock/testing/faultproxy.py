"""A userspace TCP relay that injects faults (``tc netem`` is not always available).

It listens on ``listen`` (127.0.0.1 by default) and relays every connection
to a target, optionally:

* delaying each forwarded piece by ``delay`` seconds;
* cutting a connection (RST both ways) after ``cut_after`` bytes from the
  client, or after ``cut_down_after`` bytes from the server, for the first
  ``faulty`` connections;
* stalling (forwarding nothing more either way, keeping both sockets open)
  after ``stall_after`` client bytes, for the first ``faulty`` connections;
* dropping each connection with probability ``drop_rate`` at a random byte
  within the first ``drop_window`` client bytes.

Faults can also be injected while it runs, from any thread: ``inject("cut_up",
n)`` cuts whichever connection next forwards its ``n``-th byte upstream from
now (``cut_down``: downstream; ``stall``: either way, then it holds that
connection silent for ``hold`` seconds before cutting it), and ``slow(d, s)``
delays every piece by ``d`` more seconds for the next ``s`` seconds.

TLS passes through untouched: the proxy sees only ciphertext, like a real
network fault would.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from dataclasses import dataclass, field

FAULT_KINDS = ("cut_up", "cut_down", "stall")


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0  # every cut, both directions, static and injected
    cuts_up: int = 0
    cuts_down: int = 0
    stalls: int = 0
    delayed: int = 0  # pieces held back by ``slow``
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class _Fault:
    kind: str
    after: int  # bytes still to forward (in its direction) before it strikes
    hold: float


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
    listen: str = "127.0.0.1"
    stats: ProxyStats = field(default_factory=ProxyStats)
    address: tuple[str, int] = ("127.0.0.1", 0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._faults: list[_Fault] = []  # injected, not yet struck (touched on the loop only)
        self._slow_until = 0.0
        self._slow_delay = 0.0

    def start(self) -> tuple[str, int]:
        """Start listening; returns the (host, port) to connect to."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.address = fut.result(10)
        return self.address

    @property
    def url(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def inject(self, kind: str, after: int, hold: float = math.inf) -> None:
        """Arm a fault (thread-safe): ``kind`` in ``FAULT_KINDS`` strikes after ``after`` more bytes."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        self._loop.call_soon_threadsafe(self._faults.append, _Fault(kind, max(1, int(after)), hold))

    def pending(self) -> int:
        """Injected faults that have not struck yet."""
        return len(self._faults)

    def slow(self, delay: float, seconds: float) -> None:
        """Delay every forwarded piece by ``delay`` more seconds for the next ``seconds`` (thread-safe)."""
        def arm() -> None:
            self._slow_until, self._slow_delay = time.monotonic() + seconds, delay
        self._loop.call_soon_threadsafe(arm)

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        async def _stop() -> None:
            self._closing.set()
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in relays:
                t.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

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
        self._server = await asyncio.start_server(self._relay, self.listen, 0)
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

    def _strike(self, upstream: bool, size: int) -> tuple[int, _Fault] | None:
        """The injected fault that strikes within the next ``size`` bytes of this direction, if any
        (and where); the others that apply count those bytes."""
        for f in list(self._faults):
            if f.kind == ("cut_down" if upstream else "cut_up"):
                continue
            if f.after <= size:
                self._faults.remove(f)
                return f.after, f
            f.after -= size
        return None

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
        hold: list[float] = []  # set when this connection stalls: how long it stays silent

        def cut(upstream: bool) -> None:
            self.stats.cuts += 1
            if upstream:
                self.stats.cuts_up += 1
            else:
                self.stats.cuts_down += 1
            c_writer.transport.abort()
            s_writer.transport.abort()
            stop.set()

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
            sent = 0
            try:
                while not stop.is_set():
                    data = await reader.read(65536)
                    if stop.is_set():
                        return
                    if not data:
                        writer.write_eof() if writer.can_write_eof() else writer.close()
                        return
                    static = limit if upstream else down_limit
                    if static is not None and sent + len(data) >= static:
                        writer.write(data[: static - sent])
                        await writer.drain()
                        if upstream and action == "stall":
                            self.stats.stalls += 1
                            hold.append(math.inf)
                            stop.set()
                        else:
                            cut(upstream)
                        return
                    if (struck := self._strike(upstream, len(data))) is not None:
                        at, fault = struck
                        writer.write(data[:at])
                        await writer.drain()
                        if fault.kind == "stall":
                            self.stats.stalls += 1
                            hold.append(fault.hold)
                            stop.set()
                        else:
                            cut(upstream)
                        return
                    wait = self.delay
                    if time.monotonic() < self._slow_until:
                        wait += self._slow_delay
                        self.stats.delayed += 1
                    if wait:
                        await asyncio.sleep(wait)
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
                stop.set()

        up = asyncio.ensure_future(pump(c_reader, s_writer, True))
        down = asyncio.ensure_future(pump(s_reader, c_writer, False))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if hold:  # stalled: both sockets held open and silent, then cut (or until the proxy stops)
            try:
                await asyncio.wait_for(self._closing.wait(), None if hold[0] == math.inf else hold[0])
            except TimeoutError:
                pass
            for w in (c_writer, s_writer):
                w.transport.abort()
        await asyncio.gather(up, down, return_exceptions=True)
        for w in (c_writer, s_writer):
            w.close()
        self._writers -= {c_writer, s_writer}
