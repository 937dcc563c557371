"""fedsock's exceptions, split by blame.

Every fedsock error derives from :class:`FedsockError` and carries a message a
user can act on.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``Error`` message (protocol.md section 8).

    A ``str`` enum: each member equals its wire string, so code that compares
    or passes plain strings keeps working.
    """

    BAD_FRAME = "bad_frame"  # undecodable frame or body
    FRAME_TOO_LARGE = "frame_too_large"  # header announced more than the frame limit
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version not spoken here
    OUT_OF_ORDER = "out_of_order"  # message not allowed in the current state
    BAD_MESSAGE = "bad_message"  # well-formed msgpack, wrong fields or types
    LIMIT_EXCEEDED = "limit_exceeded"  # too many tensors, elements, bytes, ...
    AUTH_FAILED = "auth_failed"  # wrong token / HMAC
    SIGNATURE_MISMATCH = "signature_mismatch"  # tensor count, shapes or dtypes differ from the model
    INVALID_WEIGHTS = "invalid_weights"  # NaN or Inf in an update
    TIMEOUT = "timeout"  # peer too slow (handshake, idle)
    BUSY = "busy"  # chief at capacity
    SHUTDOWN = "shutdown"  # chief is stopping
    INTERNAL = "internal"  # a bug on the sender's side
    NAME_IN_USE = "name_in_use"  # the name is held by another running worker
    POLICY_REFUSED = "policy_refused"  # the worker's own policy refuses the chief's plan
    UNSUPPORTED_FEATURE = "unsupported_feature"  # the plan needs a feature the worker does not implement


class FedsockError(Exception):
    """Base class of every error fedsock raises on purpose."""


class LocalProtocolError(FedsockError):
    """Our caller misused the protocol API (e.g. sent a message out of order)."""


class RemoteProtocolError(FedsockError):
    """The peer sent something malformed, oversized or out of order.

    Attributes:
        code: the wire error code to send back in an ``Error`` message.

    Raises:
        ValueError: ``code`` is not one of ``ErrorCode`` (a bug of the caller).
    """

    def __init__(self, message: str, code: ErrorCode | str = ErrorCode.BAD_MESSAGE) -> None:
        super().__init__(message)
        self.code: ErrorCode = ErrorCode(code)


class ConnectionTruncated(RemoteProtocolError):
    """The peer's stream ended inside a frame or a weights message (a cut
    connection or a killed peer, rather than a malformed message)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.BAD_FRAME)


class PeerError(FedsockError):
    """The peer sent us an ``Error`` message (its code and text are kept)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.text = message


class NameInUse(PeerError):
    """The chief refused our name: another running worker holds it (Error ``name_in_use``)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NAME_IN_USE, message)


class AuthenticationError(FedsockError):
    """Authentication failed: wrong token, wrong chief certificate."""


class ConnectionLost(FedsockError):
    """The connection to the chief broke (EOF, reset, silence, or the chief stopping)."""


class ChiefStopping(ConnectionLost):
    """The chief said it is stopping (Error ``shutdown``): it resumes once restarted, so a worker
    goes on reconnecting for its whole ``--reconnect-timeout``."""


class ClientClosed(FedsockError):
    """``Client.close()`` was called (from another thread, say) while a join or sync waited, or
    before it: this Client no longer talks to the chief."""


class ConnectError(FedsockError):
    """The chief could not be reached within the retry budget (or nothing has listened at its
    address for ``--gone-timeout`` since the connection was lost)."""


class StateWriteError(FedsockError):
    """The chief could not write its state dir (disk full, quota, I/O error). It stops; the
    checkpoint before the failed write stays loadable, and a restarted chief resumes from it.

    Attributes:
        reason: the system's words for the failure (e.g. "No space left on device").
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(FedsockError):
    """Invalid command-line options, token, data or model for this run."""


class PolicyRefused(ConfigError):
    """The worker's own policy refuses the chief's plan (the message names the setting)."""


class AggregationError(FedsockError):
    """A round's updates do not meet the aggregation rule's precondition.

    For example Krum with ``f`` Byzantine workers needs at least ``2f + 3``
    updates. Nothing is consumed when this is raised: the round's updates
    are still there once more arrive.
    """


class TooFewWorkers(FedsockError):
    """A secure-aggregation attempt cannot go on: fewer workers than it needs are left."""


class PeerMisbehaved(FedsockError):
    """A secure-aggregation attempt cannot go on because of what some workers sent.

    ``workers`` are the ones to leave out of the round's further attempts.
    """

    def __init__(self, message: str, workers: frozenset[int]) -> None:
        super().__init__(message)
        self.workers = workers


class CryptoError(FedsockError, ValueError):
    """A secure-aggregation key or ciphertext that does not check out."""


class ShamirError(FedsockError, ValueError):
    """Not enough or inconsistent Shamir shares."""


class RangeError(FedsockError, ValueError):
    """An update too large (or not finite) for secure aggregation's fixed-point range."""


class VectorMismatch(FedsockError):
    """A chief answered a conformance vector otherwise than recorded (``skipped``: the vector
    needs a chief set up differently, e.g. without compression)."""

    def __init__(self, message: str, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped
