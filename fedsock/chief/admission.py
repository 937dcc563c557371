"""Admission control without I/O: failed authentications per address per minute."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fedsock import limits


@dataclass
class FailureLimiter:
    """Counts failed authentications per address in a sliding window.

    An address with ``limit`` failures in the last ``window`` seconds is
    refused until the oldest of them leaves the window.
    """

    limit: int = limits.MAX_AUTH_FAILURES_PER_MINUTE
    window: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, address: str, now: float) -> deque[float]:
        q = self._failures.setdefault(address, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[address]
        return q

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` has used up its failures for now."""
        return len(self._recent(address, now)) >= self.limit

    def failed(self, address: str, now: float) -> None:
        """Record one failed authentication from ``address``."""
        self._recent(address, now)
        self._failures.setdefault(address, deque()).append(now)
        # Bound memory under a flood from many addresses: forget the oldest.
        while len(self._failures) > limits.MAX_TRACKED_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))
