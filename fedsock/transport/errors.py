"""What the transport reports: a lost connection and a name held by another worker (both
defined in ``fedsock.errors``, named here too), and which refusals of the chief pass with time
(so they are worth retrying)."""

from __future__ import annotations

__all__ = ["TRANSIENT_CODES", "ConnectionLost", "NameInUse"]

from fedsock.errors import ConnectionLost, NameInUse

#: Error codes with which a chief hangs up for a reason that passes (it stops, is busy, timed us out).
TRANSIENT_CODES = frozenset({"shutdown", "timeout", "busy"})
