"""Admission control without I/O: failed authentications per address, connections not yet
authenticated, weights messages in flight, connections refused and why (all plain counters),
and when a stopping chief asks each worker to come back (the chief does the I/O)."""

from __future__ import annotations

import random
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
    window: float = limits.AUTH_FAILURE_WINDOW_S
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


@dataclass
class PreAuthCounts:
    """Connections not yet authenticated (TLS handshake included), in all and per address.

    ``refusal`` says why a new connection must be closed before TLS, or
    None; ``enter``/``leave`` bracket each admitted one.
    """

    limit: int = limits.MAX_UNAUTHENTICATED
    per_address: int = limits.MAX_UNAUTHENTICATED_PER_ADDRESS
    total: int = 0
    _by_address: dict[str, int] = field(default_factory=dict)

    def over(self, address: str) -> str | None:
        """Which cap a new connection from ``address`` would break: ``"global"``, ``"per_address"`` or None."""
        if self.total >= self.limit:
            return "global"
        if self._by_address.get(address, 0) >= self.per_address:
            return "per_address"
        return None

    def refusal(self, address: str) -> str | None:
        over = self.over(address)
        if over == "global":
            return "too many connections still in the handshake"
        if over == "per_address":
            return f"too many connections still in the handshake from this address (at most {self.per_address})"
        return None

    def enter(self, address: str) -> None:
        self.total += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1

    def leave(self, address: str) -> None:
        self.total -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]  # memory follows the connections, not the addresses ever seen

    def of(self, address: str) -> int:
        return self._by_address.get(address, 0)


@dataclass
class Refusals:
    """Connections turned away since the chief started, by why (for its log and benchmarks)."""

    per_address: int = 0  # over MAX_UNAUTHENTICATED_PER_ADDRESS, before TLS
    global_cap: int = 0  # over MAX_UNAUTHENTICATED, before TLS
    failures: int = 0  # from an address over MAX_AUTH_FAILURES_PER_MINUTE, before TLS
    tls_failed: int = 0  # admitted, but the TLS handshake failed or timed out

    def count(self, why: str) -> None:
        """One more refusal: ``why`` is ``"per_address"``, ``"global"``, ``"failures"`` or ``"tls_failed"``."""
        name = "global_cap" if why == "global" else why
        setattr(self, name, getattr(self, name) + 1)

    @property
    def before_tls(self) -> int:
        return self.per_address + self.global_cap + self.failures

    def describe(self) -> str:
        return (f"{self.before_tls} connections refused before TLS ({self.per_address} over the per-address cap "
                f"of {limits.MAX_UNAUTHENTICATED_PER_ADDRESS} in the handshake, {self.global_cap} over the cap "
                f"of {limits.MAX_UNAUTHENTICATED} in all, {self.failures} from addresses with too many failed "
                f"authentications), {self.tls_failed} TLS handshakes failed")


@dataclass
class SendCounts:
    """Weights messages in flight: in all, per address (None: no such cap) and per worker identity.

    Plain counters; ``fedsock.chief.sendslots.SendSlots`` makes senders wait on them.
    """

    limit: int
    per_address: int | None = limits.MAX_SENDS_PER_ADDRESS
    per_worker: int = limits.MAX_SENDS_PER_WORKER
    total: int = 0
    _by_address: dict[str, int] = field(default_factory=dict)
    _by_worker: dict[int, int] = field(default_factory=dict)

    def fits(self, address: str, worker: int | None) -> bool:
        return (self.total < self.limit
                and (self.per_address is None or self._by_address.get(address, 0) < self.per_address)
                and (worker is None or self._by_worker.get(worker, 0) < self.per_worker))

    def start(self, address: str, worker: int | None) -> None:
        self.total += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        if worker is not None:
            self._by_worker[worker] = self._by_worker.get(worker, 0) + 1

    def finish(self, address: str, worker: int | None) -> None:
        self.total -= 1
        _decrement(self._by_address, address)
        if worker is not None:
            _decrement(self._by_worker, worker)


def _decrement(counts: dict, key: object) -> None:  # type: ignore[type-arg]
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


@dataclass
class BufferedFrames:
    """Bytes of frames partly received (announced, body incomplete), in all and per address.

    Plain counters; ``fedsock.chief.framebudget.FrameBudget`` makes readers wait on them.
    A frame as large as any a worker may send always fits once nothing else is held.
    """

    limit: int = limits.MAX_BUFFERED_FRAME_BYTES
    per_address: int = limits.MAX_BUFFERED_FRAME_BYTES_PER_ADDRESS
    total: int = 0
    _by_address: dict[str, int] = field(default_factory=dict)

    def fits(self, address: str, nbytes: int) -> bool:
        return self.total + nbytes <= self.limit and self._by_address.get(address, 0) + nbytes <= self.per_address

    def take(self, address: str, nbytes: int) -> None:
        self.total += nbytes
        self._by_address[address] = self._by_address.get(address, 0) + nbytes

    def give(self, address: str, nbytes: int) -> None:
        self.total -= nbytes
        left = self._by_address[address] - nbytes
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def of(self, address: str) -> int:
        return self._by_address.get(address, 0)


def reconnect_hints(workers: int, rng: random.Random,
                    per_second: int = limits.RESTART_RECONNECTS_PER_S) -> list[int]:
    """``retry_after_ms`` for each of ``workers`` connected workers of a stopping chief.

    The k-th worker in random order waits ``k * 1000 / per_second`` ms, so the
    reconnections come at ``per_second`` a second instead of all at once (a
    restarted chief admits only ``MAX_UNAUTHENTICATED`` handshakes at a time).
    """
    hints = [k * 1000 // per_second for k in range(workers)]
    rng.shuffle(hints)
    return hints


def shutdown_message(retry_after_ms: int) -> str:
    """The text of a stopping chief's Error ``shutdown`` that carries ``retry_after_ms``."""
    return f"the chief is stopping; reconnect in {retry_after_ms / 1000:g} s"
