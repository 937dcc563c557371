"""What the transport reports besides ``fedsock.errors``: a lost connection, and which
refusals of the chief pass with time (so they are worth retrying)."""

from __future__ import annotations

from fedsock.errors import FedsockError, PeerError

#: Error codes with which a chief hangs up for a reason that passes (it stops, is busy, timed us out).
TRANSIENT_CODES = frozenset({"shutdown", "timeout", "busy"})


class ConnectionLost(FedsockError):
    """The connection to the chief broke (EOF, reset, silence, or the chief hanging up)."""


class NameInUse(PeerError):
    """The chief refused our name: another running worker holds it (Error ``name_in_use``)."""

    def __init__(self, message: str) -> None:
        super().__init__("name_in_use", message)
