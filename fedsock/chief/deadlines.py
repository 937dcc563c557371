"""When the open round closes: its deadline, the quorum, and a retry when the quorum is missed.

A part of ``RoundController`` (a mixin over its state, without I/O or a clock of
its own: ``now`` is passed in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING


class RoundClock:
    """The round controller's deadline queries; the state they read is the controller's."""

    if TYPE_CHECKING:  # the controller's fields these methods read (declared for type checkers only)
        min_workers: int
        round_timeout: float
        _opened_at: float | None
        _deadline: float | None
        _submitted: dict[int, tuple[int, int]]

        def expected(self) -> set[int]: ...

    def should_close(self, now: float) -> bool:
        """At least ``min_workers`` updates, and every expected worker submitted or the deadline passed."""
        if self._opened_at is None or len(self._submitted) < self.min_workers:
            return False
        assert self._deadline is not None
        return not self.expected() or now >= self._deadline

    def past_deadline_without_quorum(self, now: float) -> bool:
        """The deadline passed with fewer than ``min_workers`` updates (the caller reports it;
        ``extend`` then gives the round another ``round_timeout``, keeping its updates)."""
        return (self._deadline is not None and now >= self._deadline
                and len(self._submitted) < self.min_workers)

    def extend(self, now: float) -> None:
        """Retry a round that missed its quorum: a new deadline, updates kept."""
        self._deadline = now + self.round_timeout

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the open round's deadline (None if no round is open)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - now)
