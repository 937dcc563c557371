"""When a worker tries to connect again, and when it gives up (no I/O, no clock of its own).

Failures worth retrying (a chief not up yet, restarted, busy, a cut link) are
retried with exponential backoff and jitter until the connect (or reconnect)
timeout. A ``name_in_use`` refusal is different: the name is held by another
connection, which may be this worker's own half-open one from before a
restart, and the chief lets it go once it has been silent for its idle
timeout. So such refusals are retried until that time (plus a margin) has
passed since the first one, even beyond the connect timeout; after that the
name belongs to another running worker and the user must pick another one.

A chief that vanished is not waited for as long: after a lost connection,
when every attempt for ``gone`` seconds found nothing listening at the
chief's address (refused, or host/network unreachable), the worker gives up
(its run is probably over). A chief that said it stops (Error ``shutdown``:
a signal, a full disk) is waited for the whole reconnect timeout.
A stopping chief says in its Error ``shutdown`` how long each worker should
wait before reconnecting (``retry_after_ms``, spread over its workers): the
worker waits that long (at most ``MAX_RETRY_AFTER_MS``) before its first
attempt, and its reconnect timeout starts after the wait.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fedsock import limits

NAME_HOLD_MARGIN_S = limits.NAME_HOLD_MARGIN_S


class Backoff:
    """The delays between attempts to connect, and the point to give up.

    Args:
        now: the time of the first attempt (``time.monotonic()``).
        timeout: seconds to keep retrying ordinary failures.
        name_hold: seconds a chief holds a silent connection's name (its idle timeout).
        jitter: draws the factor that spreads the delays of many workers.
    """

    def __init__(self, now: float, timeout: float, name_hold: float,
                 jitter: Callable[[float, float], float] = random.uniform, gone: float | None = None) -> None:
        self.deadline = now + timeout
        self.name_hold = name_hold + NAME_HOLD_MARGIN_S
        self.delay = limits.RECONNECT_BACKOFF_START_S
        self.refused_since: float | None = None
        #: Seconds of attempts that all find nothing listening after which to give up (None: never).
        self.gone = gone
        self.nobody_since: float | None = None  # start of the current run of such attempts
        self._jitter = jitter

    def is_gone(self, now: float) -> bool:
        """Nothing has listened at the address for ``gone`` seconds (see ``retry_in(nobody=)``)."""
        return self.gone is not None and self.nobody_since is not None and now - self.nobody_since >= self.gone

    def retry_in(self, now: float, name_in_use: bool = False, nobody: bool = False) -> float | None:
        """After a failed attempt at ``now``: seconds to wait before the next, or None to give up.

        ``nobody``: nothing listens at the address (refused, unreachable); ``gone`` seconds of
        nothing but such attempts end the retries early (``is_gone``).
        """
        self.nobody_since = (self.nobody_since if self.nobody_since is not None else now) if nobody else None
        if self.is_gone(now):
            return None
        delay = self.delay
        if name_in_use:
            if self.refused_since is None:
                self.refused_since = now
            deadline = max(self.deadline, self.refused_since + self.name_hold)
            if now >= deadline:
                return None
            delay = min(delay, deadline - now)  # the last attempt comes when the hold is over
        elif now + delay > self.deadline:
            return None
        elif self.gone is not None and self.nobody_since is not None:  # the last attempt comes when gone is up
            delay = min(delay, max(self.nobody_since + self.gone - now, 0.0))
        spread = limits.RECONNECT_JITTER
        self.delay = min(self.delay * 2, limits.RECONNECT_BACKOFF_MAX_S) * self._jitter(1 - spread, 1 + spread)
        return delay

    def reached(self) -> None:
        """An attempt got as far as the chief's Welcome: the chief is up, so a failure after that (a
        cut link) is retried from the shortest pause, not after the pauses its downtime grew to."""
        self.delay = limits.RECONNECT_BACKOFF_START_S

    def refused_for(self, now: float) -> float:
        """Seconds since the first ``name_in_use`` refusal (0 if there was none)."""
        return 0.0 if self.refused_since is None else now - self.refused_since


def hinted_wait(retry_after_ms: int | None) -> float:
    """Seconds to wait before reconnecting, from a chief's ``retry_after_ms`` (None: no wait),
    at most ``MAX_RETRY_AFTER_MS``."""
    if retry_after_ms is None:
        return 0.0
    return min(max(retry_after_ms, 0), limits.MAX_RETRY_AFTER_MS) / 1000.0


def name_in_use_message(chief_says: str, name: str, waited: float) -> str:
    """What a worker refused ``name_in_use`` for good tells its user."""
    advice = "" if "--name" in chief_says else f"; start this worker with a different --name than {name!r}"
    return f"{chief_says}{advice} (still refused after {waited:.0f} s of retrying)"


def reconnect_note(reason: str, wait: float, timeout: float, gone: float | None) -> str:
    """The worker's log line when its connection is lost: why, when it tries again, for how long."""
    after = f" in {wait:.2f} s, as the chief asked, then" if wait > 0 else ""
    limit = "" if gone is None else f" ({gone:g} s if nothing listens there)"
    return f"connection to the chief lost ({reason}); reconnecting{after} for up to {timeout:g} s{limit}"
