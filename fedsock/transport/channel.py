"""A blocking channel: one TLS socket and its protocol ``Connection``.

Every write has a deadline (``send_timeout`` for each part written); every
wait for the peer has one too (``idle_timeout`` of silence), and while a wait
goes on a ``Heartbeat`` goes out every ``heartbeat_interval``, so a peer that
trains or aggregates for long never looks dead. The one weights reader of the
blocking side, ``read_weights``, decrypts chunk data straight into the
caller's buffer (``Connection.direct_chunk``).

The channel is not thread-safe: its owner serialises calls (``Client`` holds
one lock around every use).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence

import numpy as np

from fedsock import limits
from fedsock.errors import ConnectError, ConnectionTruncated, FedsockError, RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    Chunk,
    Connection,
    EndOfMessage,
    Error,
    Event,
    Heartbeat,
    Phase,
    Role,
    TensorAssembler,
    TensorSpec,
    iter_chunks,
)
from fedsock.protocol.connection import AnyMessage
from fedsock.transport import tls
from fedsock.transport.errors import ConnectionLost

READ_BYTES = limits.READ_BYTES


def open_tls(ctx: ssl.SSLContext, host: str, port: int, timeout: float,
             pin: bytes | None = None) -> ssl.SSLSocket:
    """A connected TLS socket to ``host:port``; with ``pin``, the peer's certificate is checked
    against that SHA-256 fingerprint before anything else is sent.

    Raises:
        OSError, ssl.SSLError: not reachable, or the TLS handshake failed.
        AuthenticationError: the certificate is not the pinned one.
    """
    raw = socket.create_connection((host, port), timeout=min(limits.CONNECT_ATTEMPT_S, max(timeout, 1.0)))
    try:
        sock = ctx.wrap_socket(raw, server_hostname=host)
        if pin is not None:
            tls.check_pinned(sock, pin)
    except BaseException:
        raw.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class BlockingChannel:
    """A worker's end of one connection: messages out, events in, with deadlines.

    Args:
        sock: a connected (TLS) socket.
        idle_timeout: seconds of silence from the peer before ``ConnectionLost``.
        heartbeat_interval: seconds between heartbeats while waiting.
        send_timeout: seconds each write may take.
        mutual_tls: the socket presents a client certificate (a refusal of it
            is reported as such).
    """

    def __init__(self, sock: ssl.SSLSocket | socket.socket, *, idle_timeout: float = limits.IDLE_TIMEOUT_S,
                 heartbeat_interval: float = limits.HEARTBEAT_INTERVAL_S,
                 send_timeout: float = limits.SEND_TIMEOUT_S, mutual_tls: bool = False) -> None:
        self.sock = sock
        self.conn = Connection(Role.WORKER)
        self.idle_timeout = idle_timeout
        self.heartbeat_interval = heartbeat_interval
        self.send_timeout = send_timeout
        self.mutual_tls = mutual_tls
        self.last_sent = time.monotonic()
        self._rbuf = memoryview(bytearray(READ_BYTES))

    # --- sending ----------------------------------------------------------

    def send(self, msg: AnyMessage, arrays: Sequence[np.ndarray] = ()) -> None:
        """Send ``msg`` followed by the chunks of ``arrays`` (the tensor bytes without a copy).

        Raises:
            OSError: the write failed or missed its deadline (``TimeoutError``).
        """
        self._write(self.conn.send(msg))
        for chunk in iter_chunks(arrays):
            for part in self.conn.send_parts(chunk):
                self._write(part)
        self.last_sent = time.monotonic()

    def send_quietly(self, msg: AnyMessage) -> None:
        """Send ``msg`` if the connection still allows it; failures are ignored (we are leaving)."""
        try:
            self.send(msg)
        except (OSError, FedsockError):
            pass

    def heartbeat(self) -> None:
        """A Heartbeat, if one may go out now (established, not inside a weights message)."""
        if self.conn.phase is Phase.ESTABLISHED and not self.conn.we_finished and not self.conn.sending_weights():
            self.send_quietly(Heartbeat())

    def _write(self, data: bytes | memoryview) -> None:
        deadline = time.monotonic() + self.send_timeout
        view = memoryview(data).cast("B")
        while view:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
                n = self.sock.send(view)
            except TimeoutError:
                raise TimeoutError(f"the chief took more than {self.send_timeout:g} s to take what we sent") from None
            view = view[n:]

    # --- receiving --------------------------------------------------------

    def next_event(self) -> Event:
        """The next event from the peer; heartbeats go out while we wait.

        Raises:
            ConnectionLost: end of stream inside a frame, a reset, or ``idle_timeout`` of silence.
            RemoteProtocolError: the peer broke the protocol (an Error is sent back first).
            ConnectError: the peer ended the TLS session for good (e.g. refused our certificate).
        """
        silent_since = time.monotonic()
        while True:
            try:
                ev = self.conn.next_event()
            except ConnectionTruncated as exc:  # a cut link or a killed peer
                raise ConnectionLost(str(exc)) from None
            except RemoteProtocolError as exc:
                self.send_quietly(Error(code=exc.code, message=str(exc)))
                raise
            if ev is not NEED_DATA:
                return ev
            silent_since = self._feed(self._rbuf, silent_since)

    def read_weights(self, specs: Sequence[TensorSpec], buf: np.ndarray) -> list[np.ndarray]:
        """The arrays of the weights message just received, placed in ``buf`` (uint8, at least
        ``sum(wire_nbytes)`` long); they are views of it.

        Raises:
            ConnectionLost, RemoteProtocolError: as ``next_event``; ``buf`` is then partly written.
            FedsockError: something other than the message's chunks arrived.
        """
        asm = TensorAssembler(specs, buf)
        silent_since = time.monotonic()
        while True:
            direct = self.conn.direct_chunk()
            if isinstance(direct, tuple):  # the chunk's data is decrypted straight into place
                self._read_into(asm.target(*direct))
                silent_since = time.monotonic()
                continue
            if direct is not None:  # a chunk's header may follow: read no further than it
                silent_since = self._feed(self._rbuf[:direct], silent_since)
                continue
            ev = self.next_event()
            if isinstance(ev, Chunk):
                asm.add(ev)
            elif isinstance(ev, EndOfMessage):
                return asm.arrays()
            else:
                raise FedsockError(f"unexpected {type(ev).__name__} inside a weights message")

    def _read_into(self, dest: memoryview) -> None:
        got = self.conn.take_chunk_data(dest)
        silent_since = time.monotonic()
        while got < len(dest):
            n = self._recv_into(dest[got:], silent_since)
            if n is None:
                continue
            if n == 0:
                self.conn.receive_data(b"")  # the next event reports the truncation
                return
            got += n
            self.conn.chunk_data_received(n)
            silent_since = time.monotonic()

    def _feed(self, view: memoryview, silent_since: float) -> float:
        """One read (into ``view``) fed to the Connection; returns when the peer was last heard."""
        n = self._recv_into(view, silent_since)
        if n is None:
            return silent_since
        self.conn.receive_data(view[:n] if n else b"")
        return time.monotonic()

    def _recv_into(self, view: memoryview, silent_since: float) -> int | None:
        """One read: bytes read (0: end of stream), or None after a heartbeat interval of silence."""
        self.sock.settimeout(self.heartbeat_interval)
        try:
            return self.sock.recv_into(view)
        except TimeoutError:
            if time.monotonic() - silent_since > self.idle_timeout:
                raise ConnectionLost(f"the chief has been silent for {self.idle_timeout:g} s") from None
            self.heartbeat()
            return None
        except ssl.SSLError as exc:
            if not tls.is_fatal_tls_error(exc):
                raise ConnectionLost(f"connection to the chief lost: {exc}") from None
            # TLS 1.3 reports a rejected client certificate only at the first read.
            why = tls.describe_tls_failure(exc)
            if self.mutual_tls and "certificate" in why:
                raise ConnectError(f"the chief refused this worker's certificate: {why}") from None
            raise ConnectError(f"the chief ended the TLS session: {why}") from None
        except OSError as exc:
            raise ConnectionLost(f"connection to the chief lost: {exc}") from None

    def interrupt(self) -> None:
        """From another thread: shut the connection down under a read or write blocked on it, which
        then returns or fails at once. The socket stays open (the thread using it closes it): only
        the TCP connection is shut down, with the plain socket's call, which leaves TLS state alone."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
