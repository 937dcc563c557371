"""The chief's side of Hello -> Challenge -> Auth, to a value: admitted, refused or a status query.

The handshake only establishes *who* is speaking (join token, per-worker
token or client certificate, and whether the peer proved the reconnect
secret of its name); whether that identity may join now is the registry's
decision. Nothing here keeps state between connections.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fedsock import limits, tls
from fedsock.chief.tokens import TokenStore
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol import (
    Auth,
    Challenge,
    ConnectionClosed,
    Error,
    Hello,
    check_name,
    loggable,
    verify_reconnect_proof,
)
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")
T = TypeVar("T")


@dataclass(frozen=True)
class Admitted:
    """Authenticated as ``name``; ``proven``: it proved the reconnect secret the chief holds for it."""

    name: str
    instance: bytes
    proven: bool


@dataclass(frozen=True)
class Refused:
    """Not admitted. ``code`` None: the peer hung up or gave up.

    ``why`` (an authentication failure, which counts against the address): what the log says.
    """

    code: ErrorCode | None
    message: str
    why: str | None = None


@dataclass(frozen=True)
class StatusQuery:
    """An authenticated read-only status query: answer it and hang up.

    ``full``: it proved a read-only status token (names and traffic); else counts only.
    """

    name: str
    full: bool = False


Outcome = Admitted | Refused | StatusQuery


class Authenticator:
    """Decides whether an Auth proves a name: mutual TLS, per-worker tokens or the shared join secret.

    Args:
        token: the chief's join token (fingerprint and shared secret).
        ca: with mutual TLS, the client CA (identity = certificate common name).
        state_dir: where per-worker tokens are kept.
        worker_tokens_only: refuse the shared secret.
    """

    def __init__(self, token: tls.JoinToken, ca: Path | str | None, state_dir: Path,
                 worker_tokens_only: bool) -> None:
        self.token, self.ca, self.worker_tokens_only = token, ca, worker_tokens_only
        self.tokens = TokenStore(state_dir)

    def refusal(self, sock: ssl.SSLSocket, name: str, nonce: bytes, mac: bytes, status: bool = False) -> str | None:
        """Why ``name`` is not proven for a worker (or, with ``status``, a status query); None: it is."""
        if self.ca is not None:
            cn = tls.peer_identity(sock)
            if cn != name:
                return f"the client certificate is for {cn!r}, but the worker calls itself {name!r}"
            return None
        entry = self.tokens.lookup(name)
        if entry is not None:
            if entry.revoked:
                return f"the token of worker {name!r} was revoked"
            if entry.status and not status:
                return f"{name!r} holds a read-only status token, which cannot join as a worker"
            secret = entry.secret
        elif self.worker_tokens_only:
            return (f"this chief admits only per-worker tokens (it runs --worker-tokens-only or --secure-agg), "
                    f"and {name!r} has none: its operator issues one with 'fedsock token create {name}'")
        else:
            secret = self.token.secret
        if not tls.verify_mac(secret, nonce, self.token.fingerprint, name, mac):
            return "wrong join token"
        return None

    def revoked(self) -> set[str]:
        return self.tokens.revoked()

    def is_status_token(self, name: str) -> bool:
        """Whether ``name`` (already proven) holds a read-only status token."""
        entry = self.tokens.lookup(name) if self.ca is None else None
        return entry is not None and entry.status


async def handshake(s: Session, auth: Authenticator, reconnect_secret: Callable[[str], bytes | None],
                    timeout: float) -> Outcome:
    """Run the handshake on ``s`` (the caller bounds it in time as a whole).

    Args:
        reconnect_secret: the secret a reconnect under a name must prove (None: none held).
        timeout: deadline of each message sent.
    """
    hello = await _next(s, Hello, timeout)
    if not isinstance(hello, Hello):
        return hello
    s.name = check_name(hello.name)  # Hello's decoder checked it too: a name reaches logs only checked
    nonce = secrets.token_bytes(limits.NONCE_BYTES)
    await s.send(Challenge(nonce), timeout=timeout)
    msg = await _next(s, Auth, timeout)
    if not isinstance(msg, Auth):
        return msg
    why = auth.refusal(s.sock, s.name, nonce, msg.mac, status=s.conn.status_query)
    if why is not None:
        return Refused(ErrorCode.AUTH_FAILED, f"authentication failed: {why}", why=why)
    if s.conn.status_query:
        return StatusQuery(s.name, auth.is_status_token(s.name))
    secret = reconnect_secret(s.name)
    proven = msg.resume is not None and secret is not None and verify_reconnect_proof(secret, nonce, s.name,
                                                                                        msg.resume)
    return Admitted(s.name, hello.instance, proven)


async def _next(s: Session, kind: type[T], timeout: float) -> T | Refused:
    """The next handshake message, or Refused(None) if the peer hung up or gave up.

    An Auth whose ``mac`` or ``resume`` has the wrong length is a failed
    authentication like a wrong mac (it counts against the address).
    """
    try:
        ev = await s.next_event(timeout)
    except RemoteProtocolError as exc:
        if exc.code != ErrorCode.AUTH_FAILED:
            raise
        return Refused(ErrorCode.AUTH_FAILED, f"authentication failed: {exc}", why=str(exc))
    if isinstance(ev, Error):
        log.info("%s gave up during the handshake: %s [%s]", s.label, loggable(ev.message), loggable(ev.code))
        return Refused(None, ev.message)
    if isinstance(ev, ConnectionClosed):
        return Refused(None, "hung up")
    assert isinstance(ev, kind), ev  # the state table allows nothing else here
    return ev
