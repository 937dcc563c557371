"""fedsock's exceptions, split by blame.

Every fedsock error derives from :class:`FedsockError` and carries a message a
user can act on.
"""

from __future__ import annotations


class FedsockError(Exception):
    """Base class of every error fedsock raises on purpose."""


class LocalProtocolError(FedsockError):
    """Our caller misused the protocol API (e.g. sent a message out of order)."""


class RemoteProtocolError(FedsockError):
    """The peer sent something malformed, oversized or out of order.

    Attributes:
        code: the wire error code to send back in an ``Error`` message.
    """

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


class ConnectionTruncated(RemoteProtocolError):
    """The peer's stream ended inside a frame or a weights message (a cut
    connection or a killed peer, rather than a malformed message)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_frame")


class PeerError(FedsockError):
    """The peer sent us an ``Error`` message (its code and text are kept)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.text = message


class AuthenticationError(FedsockError):
    """Authentication failed: wrong token, wrong chief certificate."""


class ConnectError(FedsockError):
    """The chief could not be reached within the retry budget."""


class ConfigError(FedsockError):
    """Invalid command-line options, token, data or model for this run."""


class AggregationError(FedsockError):
    """A round's updates do not meet the aggregation rule's precondition.

    For example Krum with ``f`` Byzantine workers needs at least ``2f + 3``
    updates. Nothing is consumed when this is raised: the round's updates
    are still there once more arrive.
    """
