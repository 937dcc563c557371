"""The chief's listener: admission before TLS, then the TLS handshake, then a ``Session``.

A fresh TCP connection is held still (no byte read) until admission has
decided: refusing costs one accept() and a close. Admission refuses an
address over its share of the pre-authentication slots or with too many
recent failed authentications, and anyone once all slots are taken. A
connection keeps its slot until it has authenticated; a TLS or handshake
timeout counts as a failed authentication of its address.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from fedsock import limits, tls
from fedsock.chief.admission import FailureLimiter, PreAuthCounts, Refusals
from fedsock.chief.framebudget import FrameBudget
from fedsock.errors import ConfigError
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")
#: Seconds between two log lines about refused connections from one address (or from all, at the global cap).
REFUSAL_LOG_S = 10.0


class Ticket:
    """A connection's pre-authentication slot; its handler says how the handshake went."""

    def __init__(self, listener: Listener, address: str) -> None:
        self._listener, self.address, self._held = listener, address, True

    def authenticated(self) -> None:
        """The slot is free again (the connection now counts as a worker, or is answered and closed)."""
        if self._held:
            self._held = False
            self._listener.preauth.leave(self.address)

    def failed(self) -> None:
        """A failed authentication (or a handshake timeout) of this address."""
        self._listener.failures.failed(self.address, time.monotonic())


Handler = Callable[[Session, Ticket], Awaitable[None]]


def cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    """What to tell the user when ``host:port`` cannot be listened on."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} on {host} is in use (another chief, or another program): stop it, or "
                           "choose another --port (0 = any free port, written to <state-dir>/chief.addr)")
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host "
                       "(an address of this machine, or 0.0.0.0 for all)")


class Listener:
    """Accepts connections and hands each authenticated-to-be ``Session`` to ``handler``.

    Args:
        context: the server TLS context.
        handshake_timeout: seconds for the TLS handshake.
        io: the threads that send weights messages.
        keepalive_s: a held-back message trickles a byte this often (the heartbeat interval).
        handler: runs the connection from Hello on; it must call ``ticket.authenticated()``.
    """

    def __init__(self, context: ssl.SSLContext, handshake_timeout: float, io: concurrent.futures.Executor,
                 keepalive_s: float, handler: Handler) -> None:
        self.context, self.handshake_timeout, self.io = context, handshake_timeout, io
        self.keepalive_s, self.handler = keepalive_s, handler
        self.preauth = PreAuthCounts()
        self.failures = FailureLimiter()
        self.refused = Refusals()
        self.frames = FrameBudget()  # created on the event loop (its waiters are asyncio futures)
        self._refusal_logged: dict[str, float] = {}  # when a refusal was last logged, per address ("" for all)

    async def listen(self, host: str, port: int) -> asyncio.Server:
        """The listening server.

        Raises:
            ConfigError: the port is in use (also when taken since the CLI's early check), or the
                address is not this machine's.
        """
        _raise_open_file_limit()
        try:
            return await asyncio.get_running_loop().create_server(lambda: _Held(self), host, port)
        except OSError as exc:
            raise cannot_listen(host, port, exc) from None

    def refusal(self, address: str, now: float) -> str | None:
        """Why a new connection from ``address`` is closed before TLS (None: it is admitted)."""
        why = self.preauth.refusal(address)
        if why is None and self.failures.blocked(address, now):
            why = f"over {limits.MAX_AUTH_FAILURES_PER_MINUTE} failed authentications a minute"
        return why

    def _log_refusal(self, address: str, why: str, everyone: bool, now: float) -> None:
        """Log a refusal at most every ``REFUSAL_LOG_S`` per address, or for all addresses together
        when the global cap refuses (a flood from many addresses must not flood the log either)."""
        logged = self._refusal_logged
        if len(logged) >= limits.MAX_TRACKED_ADDRESSES:  # memory follows recent refusals, not every address
            logged = self._refusal_logged = {k: t for k, t in logged.items() if now - t <= REFUSAL_LOG_S}
        key = "" if everyone or len(logged) >= limits.MAX_TRACKED_ADDRESSES else address
        if now - logged.get(key, -1e9) <= REFUSAL_LOG_S:
            return
        logged[key] = now
        log.warning("refusing connections%s: %s (so far: %s)", f" from {address}" if key else "", why,
                    self.refused.describe())

    async def accept(self, raw: asyncio.Transport) -> None:
        """One TCP connection: admission, TLS, then the handler."""
        peer = raw.get_extra_info("peername")
        address, label = (peer[0], f"{peer[0]}:{peer[1]}") if peer else ("?", "?")
        now = time.monotonic()
        why = self.refusal(address, now)
        if why is not None:
            over = self.preauth.over(address)
            self.refused.count(over or "failures")
            self._log_refusal(address, why, over == "global", now)
            raw.abort()
            return
        self.preauth.enter(address)
        ticket = Ticket(self, address)
        try:
            try:
                sock = _take_socket(raw)
            except OSError as exc:  # out of file descriptors: this connection goes, the chief stays
                why = f"cannot take its socket ({exc.strerror}; raise the chief's open-file limit, ulimit -n)"
                self._log_refusal(address, why, True, now)
                raw.abort()
                return
            try:
                tsock = await asyncio.wait_for(self._start_tls(sock), self.handshake_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure here is the peer's or the network's
                timeout = isinstance(exc, TimeoutError)
                log.info("%s: TLS handshake failed: %s", label,
                         "no TLS handshake within the time limit" if timeout else tls.describe_tls_failure(exc))
                self.refused.count("tls_failed")
                if timeout:  # holding a slot without a handshake counts as a failed authentication
                    ticket.failed()
                sock.close()  # a TLS alert, if any, went out with the failed handshake
                return
            except asyncio.CancelledError:
                sock.close()
                return
            s = Session(tsock, label, self.io)
            s.keepalive_s, s.frames = self.keepalive_s, self.frames
            await self.handler(s, ticket)
        finally:
            ticket.authenticated()

    async def _start_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """The server side of the TLS handshake on the event loop (the socket is non-blocking)."""
        tsock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    tsock.do_handshake()
                    return tsock
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    write = isinstance(want, ssl.SSLWantWriteError)
                    ready: asyncio.Future[None] = loop.create_future()
                    fd = tsock.fileno()

                    def wake(ready: asyncio.Future[None] = ready) -> None:
                        if not ready.done():
                            ready.set_result(None)

                    (loop.add_writer if write else loop.add_reader)(fd, wake)
                    try:
                        await ready
                    finally:
                        (loop.remove_writer if write else loop.remove_reader)(fd)
        except BaseException:
            tsock.close()
            raise


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: each worker holds a descriptor, and a
    soft limit of 1024 (a common default) is below MAX_WORKERS plus the connections in admission."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _take_socket(transport: asyncio.Transport) -> socket.socket:
    """The admitted connection's socket, taken over from its (paused) transport, non-blocking."""
    ts = transport.get_extra_info("socket")
    sock = socket.socket(ts.family, ts.type, ts.proto, fileno=os.dup(ts.fileno()))
    transport.abort()  # closes the transport's descriptor only; the connection lives on in ours
    sock.setblocking(False)
    return sock


class _Held(asyncio.Protocol):
    """Holds a fresh TCP connection still (no bytes read) until the listener has admitted it and
    starts TLS on it; reading early would swallow the ClientHello."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.listener.accept(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        pass
