"""The connection of the attack tests' hostile client: one TLS connection to a chief, driven by hand.

``Hostile`` speaks protocol v1 through ``fedsock.protocol.Connection`` and
``fedsock.tls.auth_mac`` like a worker, one call per step, so a test can
stop anywhere a worker never would: after Hello, after Auth with the
Welcome unread, mid-frame. ``open_tcp`` opens the plain TCP connection under
it from a chosen loopback address and receive buffer size. The attacks
built on these are in attacker.py.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Sequence

import numpy as np

from fedsock import limits, tls
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Chunk,
    Connection,
    ConnectionClosed,
    Done,
    EndOfMessage,
    Error,
    Event,
    Global,
    Heartbeat,
    Hello,
    Kind,
    Role,
    TensorAssembler,
    Update,
    Welcome,
    frames,
    is_valid_name,
    iter_chunks,
    reconnect_proof,
)


def open_tcp(address: str, source: str = "127.0.0.1", rcvbuf: int | None = None,
             timeout: float = 10.0) -> socket.socket:
    """A TCP connection to ``address`` ("host:port") from the local address ``source``.

    Args:
        rcvbuf: receive buffer size to set before connecting (a small one makes
            a peer that stops reading block the sender early).
    """
    host, port = address.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, int(port)))
    except OSError:
        sock.close()
        raise
    return sock


class Hostile:
    """One connection to a chief, driven by hand through the real state machine.

    Args:
        address: the chief's "host:port".
        token: a join token; its fingerprint is checked after TLS. None: TLS
            without a pin check (for attacks that need no token).
        source: local address to connect from.
        rcvbuf: receive buffer size (see ``open_tcp``).
        timeout: seconds any single read or write may block.
        instance: Hello's instance id (default: fresh random bytes per object).
    """

    def __init__(self, address: str, token: str | tls.JoinToken | None = None, source: str = "127.0.0.1",
                 rcvbuf: int | None = None, timeout: float = 10.0, instance: bytes | None = None) -> None:
        raw = open_tcp(address, source, rcvbuf, timeout)
        try:
            self.sock: socket.socket = tls.client_context().wrap_socket(raw)
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        self.token = tls.JoinToken.parse(token) if isinstance(token, str) else token
        if self.token is not None:
            tls.check_pinned(self.sock, self.token.fingerprint)  # type: ignore[arg-type]
        self.conn = Connection(Role.WORKER)
        self.timeout = timeout
        self.instance = instance if instance is not None else os.urandom(limits.INSTANCE_ID_BYTES)
        #: Application bytes received from / sent to the chief on this connection.
        self.received = 0
        self.sent = 0
        self.welcome: Welcome | None = None
        #: Weights of the last Welcome/Global/Done read with ``read_weights``.
        self.weights: list[np.ndarray] = []

    # --- sending ------------------------------------------------------------

    def send(self, msg: Hello | Auth | Update | Heartbeat, arrays: Sequence[np.ndarray] = ()) -> None:
        """Send one message (and the chunks of ``arrays`` for a weights message)."""
        self.send_all([msg], [arrays])

    def send_all(self, msgs: Sequence[Hello | Auth | Update | Heartbeat],
                 arrays: Sequence[Sequence[np.ndarray]] = ()) -> int:
        """Send several messages in one write, without waiting for answers.

        Returns:
            The bytes written.
        """
        parts = []
        for i, msg in enumerate(msgs):
            parts.append(self.conn.send(msg))
            parts.extend(self.conn.send(c) for c in iter_chunks(arrays[i] if i < len(arrays) else ()))
        return self.send_raw(b"".join(parts))

    def send_raw(self, data: bytes) -> int:
        """Write bytes the state machine does not see (crafted frames)."""
        self.sock.sendall(data)
        self.sent += len(data)
        return len(data)

    # --- receiving ----------------------------------------------------------

    def next(self, timeout: float | None = None) -> Event:
        """The next event from the chief; ``ConnectionClosed`` once the connection is gone.

        Raises:
            TimeoutError: nothing complete arrived within ``timeout`` seconds
                (default: the constructor's).
            RemoteProtocolError: the chief broke the protocol.
        """
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev  # type: ignore[return-value]
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise TimeoutError("no complete message from the chief in time") from None
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            self.received += len(data)
            self.conn.receive_data(data)

    def until(self, *kinds: type, timeout: float | None = None) -> Event:
        """Read until an event of one of ``kinds``, an Error or the end of the connection."""
        while True:
            ev = self.next(timeout)
            if isinstance(ev, (*kinds, Error, ConnectionClosed)):
                return ev

    def read_weights(self, head: Welcome | Global | Done, timeout: float | None = None) -> list[np.ndarray]:
        """Read the chunks that follow ``head`` into ``self.weights``."""
        asm = TensorAssembler(head.tensors)
        while True:
            ev = self.next(timeout)
            if isinstance(ev, Chunk):
                asm.add(ev)
            elif isinstance(ev, EndOfMessage):
                self.weights = [a.copy() for a in asm.arrays()]
                return self.weights
            elif isinstance(ev, (Error, ConnectionClosed)):
                raise ConnectionError(f"the chief ended the connection in a weights message: {ev}")

    def hello(self, name: str) -> Challenge | Error | ConnectionClosed:
        """Send Hello under ``name`` (with this object's instance id); return the answer.

        A name the protocol forbids (the state machine refuses to send it) goes
        out as a crafted frame: the state machine records a valid Hello, the
        wire carries ``name``.
        """
        hello = Hello(name=name, instance=self.instance)
        if is_valid_name(name):
            self.send(hello)
        else:
            self.conn.send(Hello(name="x", instance=self.instance))
            body = frames.pack_body({**hello.to_body(), "name": name})
            self.send_raw(frames.encode_header(Kind.HELLO, len(body)) + body)
        return self.until(Challenge)  # type: ignore[return-value]

    def join(self, name: str, reconnect_secret: bytes | None = None,
             resume: bytes | None = None) -> Welcome | Error | ConnectionClosed:
        """Hello, Challenge, Auth with the token's secret; read the Welcome and its weights.

        Args:
            reconnect_secret: a secret from an earlier Welcome: prove it in Auth.resume.
            resume: send these bytes as Auth.resume instead (e.g. a forged proof).

        Returns:
            The Welcome (also in ``self.welcome``), or the chief's Error, or
            ``ConnectionClosed``.
        """
        refused = self.authenticate(name, reconnect_secret, resume)
        if refused is not None:
            return refused
        ev = self.until(Welcome)
        if isinstance(ev, Welcome):
            self.welcome = ev
            if ev.tensors:
                self.read_weights(ev)
            else:
                self.until(EndOfMessage)
        return ev  # type: ignore[return-value]

    def authenticate(self, name: str, reconnect_secret: bytes | None = None,
                     resume: bytes | None = None) -> Error | ConnectionClosed | None:
        """Hello, Challenge, Auth (as ``join``) and nothing more: the Welcome is left unread
        (with a small ``rcvbuf``, the chief's send of it blocks). None once Auth is sent."""
        assert self.token is not None, "joining needs a token"
        ch = self.hello(name)
        if not isinstance(ch, Challenge):
            return ch
        mac = tls.auth_mac(self.token.secret, ch.nonce, self.token.fingerprint, name)
        if resume is None and reconnect_secret is not None:
            resume = reconnect_proof(reconnect_secret, ch.nonce, name)
        self.send(Auth(mac, resume=resume))
        return None

    def announce(self, kind: Kind, nbytes: int, answer_within: float = 2.0) -> Error | None:
        """Announce a ``kind`` frame of ``nbytes`` and, unless the chief refuses the header within
        ``answer_within`` seconds, send all but the last byte of its body (a chief that buffers it
        holds ``nbytes - 1`` bytes for this connection; one that stops reading makes this stop
        after the socket's timeout). Returns the chief's Error (None: it sent none)."""
        self.send_raw(frames.encode_header(kind, nbytes))
        err = self.error(answer_within)
        if err is not None:
            return err
        self.sock.settimeout(self.timeout)  # reading set a shorter one
        piece = bytes(min(limits.CHUNK_BYTES, nbytes))
        left = nbytes - 1
        try:
            while left > 0:
                left -= self.send_raw(piece[:left])
        except (OSError, ssl.SSLError):
            pass
        return self.error(answer_within)

    def answer(self, timeout: float | None = None) -> Global | Done | Error | ConnectionClosed:
        """Read until a Global, Done (its weights read), an Error or the end."""
        ev = self.until(Global, Done, timeout=timeout)
        if isinstance(ev, (Global, Done)):
            self.read_weights(ev, timeout)
        return ev  # type: ignore[return-value]

    def drain(self, quiet: float = 3.0, limit: float = 60.0) -> list[Event]:
        """Read everything the chief has sent or still sends: until ``quiet`` seconds
        pass without anything but Heartbeats, the connection ends, or ``limit`` seconds.

        Returns:
            The events read, without Chunks and Heartbeats.
        """
        out: list[Event] = []
        start = last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() - start < limit:
            try:
                ev = self.next(timeout=0.5)
            except TimeoutError:
                continue
            if isinstance(ev, ConnectionClosed):
                out.append(ev)
                break
            if isinstance(ev, (Chunk, Heartbeat)):
                if isinstance(ev, Chunk):
                    last = time.monotonic()
                continue
            last = time.monotonic()
            out.append(ev)
            if isinstance(ev, Error):
                break
        return out

    def error(self, timeout: float = 10.0) -> Error | None:
        """The chief's Error within ``timeout`` seconds; None if it closed without one or sent nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.next(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(ev, Error):
                return ev
            if isinstance(ev, ConnectionClosed):
                return None
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
