"""The worker side of the handshake, the one implementation: Hello, Challenge, Auth -> Welcome or Status.

``Client`` (and through it a relay's upstream link) and ``fedsock status``
use it; it turns the chief's refusals into the exceptions a user can act on.
"""

from __future__ import annotations

from fedsock.errors import AuthenticationError, ConnectError, PeerError, RemoteProtocolError
from fedsock.protocol import (
    ACK_CAPABILITY,
    EVAL_CAPABILITY,
    FEATURES,
    STATUS_CAPABILITY,
    Auth,
    Challenge,
    ConnectionClosed,
    Error,
    Event,
    Hello,
    Status,
    Welcome,
    reconnect_proof,
)
from fedsock.transport.channel import BlockingChannel
from fedsock.transport.credentials import Credentials
from fedsock.transport.errors import TRANSIENT_CODES, ConnectionLost, NameInUse


def handshake(channel: BlockingChannel, name: str, credentials: Credentials, instance: bytes, *,
              reconnect_secret: bytes | None = None, status: bool = False,
              evaluations: bool = False) -> Welcome | Status:
    """Authenticate on a fresh ``channel``; returns the chief's ``Welcome`` (its weights, if
    any, are still to be read with ``channel.read_weights``) or, with ``status``, its ``Status``.

    Args:
        channel: a channel on a fresh connection.
        name: the worker's name.
        credentials: token or mutual-TLS credentials.
        instance: this worker's instance id (``INSTANCE_ID_BYTES`` random bytes, fixed for its lifetime).
        reconnect_secret: the secret of this chief's last Welcome to us, if any: ``Auth``
            then carries the proof that we are the worker the chief admitted under ``name``.
        status: ask for a ``Status`` instead of joining.
        evaluations: say (capability ``"eval"``) that this worker answers EvalRequest and sends a
            final EvalResult when Done asks for one.

    Raises:
        AuthenticationError: the chief rejected the credentials.
        NameInUse: another running worker holds ``name``.
        ConnectionLost: the chief hung up or went silent (worth retrying); for a status
            query a ``ConnectError`` instead.
        PeerError: the chief refused with another Error.
        RemoteProtocolError: the answer broke the protocol.
    """
    # a worker asks what became of its updates
    caps = (STATUS_CAPABILITY,) if status else (ACK_CAPABILITY, *((EVAL_CAPABILITY,) if evaluations else ()))
    channel.send(Hello(name=name, capabilities=caps, instance=instance, features=None if status else FEATURES))
    challenge = _expect(channel, Challenge, status)
    assert isinstance(challenge, Challenge)
    resume = reconnect_proof(reconnect_secret, challenge.nonce, name) if reconnect_secret else None
    channel.send(Auth(credentials.mac(challenge.nonce, name), resume=resume))
    answer = _expect(channel, Status if status else Welcome, status)
    assert isinstance(answer, (Welcome, Status))
    return answer


def _expect(channel: BlockingChannel, kind: type, status: bool) -> Event:
    try:
        ev = channel.next_event()
    except RemoteProtocolError as exc:
        if status and exc.code == "out_of_order":
            raise RemoteProtocolError(f"{exc}; does this chief answer status queries?", exc.code) from None
        raise
    if isinstance(ev, kind):
        return ev
    if isinstance(ev, Error):
        if ev.code == "auth_failed":
            raise AuthenticationError(f"authentication failed: the chief rejected the join token ({ev.message})")
        if ev.code == "name_in_use":
            raise NameInUse(ev.message)
        if ev.code in TRANSIENT_CODES and not status:
            raise ConnectionLost(f"the chief hung up: {ev.message}")
        raise PeerError(ev.code, ev.message)
    if isinstance(ev, ConnectionClosed):
        if status:
            raise ConnectError("the chief closed the connection without answering")
        raise ConnectionLost("the chief closed the connection during the handshake")
    raise RemoteProtocolError(f"expected {kind.__name__}, got {type(ev).__name__}")
