"""Who is in the federation: membership and its rules, as plain data.

``WorkerRegistry`` alone decides who may hold a name, which connection is a
worker's live one, who waits for a model and who got the final one. It
touches no socket and reads no clock (``now`` is passed in); a connection is
any object with a ``last_received`` time (the chief's ``Session``).

The identity rules (protocol.md 7.2, "one live connection per name"):

- A name is *held* while its latest connection is live (the chief has not
  seen it end) and has received a byte within ``idle_timeout``.
- A new connection for a name that is not held is admitted and gets a fresh
  reconnect secret; if the name's old connection is still open but silent
  past the idle timeout, it is replaced. A name whose connection ended (EOF,
  reset, timeout) is free at once, for any instance.
- For a held name, a connection that proves the name's reconnect secret
  (the same instance reconnecting) replaces the old one; any other is
  refused (``name_in_use``).
- A chief resumed from a checkpoint knows the names that took part but holds
  none of them (reconnect secrets are never persisted).

Worker ids are stable per name for the whole run, so an update re-sent
after a reconnect is recognised as the same contribution.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from fedsock import limits


class Connected(Protocol):
    """What the registry reads of a connection."""

    last_received: float


C = TypeVar("C", bound=Connected)


@dataclass(frozen=True)
class Joined(Generic[C]):
    """Admitted under ``worker``; ``replaced`` is the connection it takes over from (close it)."""

    worker: int
    secret: bytes
    replaced: C | None = None


@dataclass(frozen=True)
class NameInUse:
    """Refused: another running worker holds the name for ``wait_s`` more seconds at most."""

    name: str
    wait_s: float

    @property
    def message(self) -> str:
        return (f"the name {self.name} is in use by another running worker; start this one with a "
                f"different --name (or wait {self.wait_s:.0f} s if that worker has stopped)")


@dataclass(frozen=True)
class Full:
    """Refused: the chief serves ``limits.MAX_WORKERS`` workers already."""

    message: str = f"the chief already serves {limits.MAX_WORKERS} workers"


@dataclass
class _Name:
    worker: int
    instance: bytes = b""
    secret: bytes | None = None  # issued to its latest connection (None: none joined in this run)
    last_seen: float = float("-inf")  # last byte received on its latest connection, once that ended
    left_at: float = float("-inf")  # when that connection ended
    restored: bool = False  # named by the checkpoint a restarted chief resumed from, not back since


@dataclass
class WorkerRegistry(Generic[C]):
    """Membership of one chief run.

    Args:
        idle_timeout: seconds of silence after which a live connection no longer holds its name.
        max_workers: most live workers at once.
        max_names: most names remembered; beyond it, names neither live nor
            held nor waiting are forgotten, least recently seen first (a
            shared-token holder inventing names costs a bounded amount of
            memory). A forgotten name that comes back gets a new worker id.
    """

    idle_timeout: float
    max_workers: int = limits.MAX_WORKERS
    max_names: int = 4 * limits.MAX_WORKERS
    live: dict[int, C] = field(default_factory=dict)  # worker id -> its live connection
    held: set[int] = field(default_factory=set)  # submitted, waiting for a model they are sampled for
    given_done: set[int] = field(default_factory=set)
    _names: dict[str, _Name] = field(default_factory=dict)
    _by_id: dict[int, str] = field(default_factory=dict)
    _stale: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> (round, replies)
    _next_id: int = 1

    # --- names and identities ---------------------------------------------

    def _entry(self, name: str, now: float) -> _Name:
        entry = self._names.get(name)
        if entry is None:
            if len(self._names) >= self.max_names:
                self._forget(now)
            entry = self._names[name] = _Name(self._next_id)
            self._by_id[self._next_id] = name
            self._next_id += 1
        return entry

    def expect(self, names: Iterable[str], now: float) -> None:
        """Names that took part before a restart: they keep ids and are owed a Done, but hold nothing."""
        for name in names:
            entry = self._entry(name, now)
            entry.last_seen, entry.restored = now, True

    def _forget(self, now: float) -> None:
        """Forget free names, least recently seen first, down to three quarters of ``max_names``."""
        free = [(e.last_seen, n) for n, e in self._names.items()
                if e.worker not in self.live and e.worker not in self.held]
        for _, name in sorted(free)[: len(self._names) - self.max_names * 3 // 4]:
            entry = self._names.pop(name)
            del self._by_id[entry.worker]
            self._stale.pop(entry.worker, None)
            self.given_done.discard(entry.worker)

    def name_of(self, worker: int) -> str:
        return self._by_id.get(worker, str(worker))

    def worker_of(self, name: str) -> int | None:
        entry = self._names.get(name)
        return entry.worker if entry is not None else None

    def label(self, worker: int) -> str:
        """How logs name a worker."""
        return f"worker {worker} ({self.name_of(worker)})"

    def who(self, workers: Iterable[int]) -> str:
        return ", ".join(self.name_of(w) for w in sorted(workers)) or "none"

    def names(self, workers: Iterable[int]) -> list[str]:
        """The names of ``workers``, sorted."""
        return sorted(self.name_of(w) for w in workers if w in self._by_id)

    def reconnect_secret(self, name: str) -> bytes | None:
        """The secret a reconnect under ``name`` must prove (None: there is none to prove)."""
        entry = self._names.get(name)
        return entry.secret if entry is not None else None

    def held_for(self, name: str, now: float) -> float:
        """Seconds until ``name`` is free (0: free now): its live connection's silence reaching
        the idle timeout. A name whose connection ended is free."""
        entry = self._names.get(name)
        conn = self.live.get(entry.worker) if entry is not None else None
        if conn is None:
            return 0.0
        return max(0.0, conn.last_received + self.idle_timeout - now)

    def join(self, name: str, instance: bytes, conn: C, proven: bool, now: float) -> Joined[C] | NameInUse | Full:
        """A connection authenticated as ``name`` asks to join.

        Args:
            instance: the worker process's instance id (from Hello).
            proven: it proved ``reconnect_secret(name)`` (Auth.resume).

        Returns:
            ``Joined`` (with a fresh reconnect secret for its Welcome), or
            why not.
        """
        wait = self.held_for(name, now)
        if wait > 0 and not proven:
            return NameInUse(name, wait)
        known = self._names.get(name)
        if (known is None or known.worker not in self.live) and len(self.live) >= self.max_workers:
            return Full()
        entry = self._entry(name, now)
        replaced = self.live.get(entry.worker)
        entry.instance, entry.restored = instance, False
        entry.secret = secrets.token_bytes(limits.RECONNECT_SECRET_BYTES)
        self.live[entry.worker] = conn
        return Joined(entry.worker, entry.secret, replaced)

    def leave(self, worker: int, conn: C, now: float | None = None) -> bool:
        """``conn`` ended (at ``now``; default: its last byte). Returns True if it was ``worker``'s
        live connection (the worker left); False if a newer connection had replaced it (nothing changes)."""
        if self.live.get(worker) is not conn:
            return False
        del self.live[worker]
        entry = self._names[self._by_id[worker]]
        entry.last_seen = max(entry.last_seen, conn.last_received)
        entry.left_at = max(entry.left_at, conn.last_received if now is None else now)
        self.held.discard(worker)
        return True

    def instance_of(self, worker: int) -> bytes:
        entry = self._names.get(self.name_of(worker))
        return entry.instance if entry is not None else b""

    # --- waiting for models -------------------------------------------------

    def hold(self, worker: int) -> None:
        """``worker`` submitted but is not sampled for the open round: it waits for a later model."""
        self.held.add(worker)

    def recipients(self, submitted: Iterable[int], selected: Callable[[int], bool], final: bool) -> list[int]:
        """Who gets the model a round just produced; the others stay held.

        At the end everyone live gets it; otherwise those who submitted or
        wait, if sampled for the next round.
        """
        if final:
            self.held = set()
            return sorted(self.live)
        waiting = set(submitted) | self.held
        targets = {w for w in waiting if selected(w)}
        self.held = (waiting - targets) & self.live.keys()
        return sorted(targets & self.live.keys())

    def allow_stale_reply(self, worker: int, round_: int) -> bool:
        """Whether a stale update of ``worker`` while ``round_`` is collected still gets a Global
        (at most ``limits.MAX_STALE_REPLIES_PER_ROUND`` per round)."""
        seen_round, count = self._stale.get(worker, (round_, 0))
        if seen_round != round_:
            count = 0
        if count >= limits.MAX_STALE_REPLIES_PER_ROUND:
            return False
        self._stale[worker] = (round_, count + 1)
        return True

    def done(self, worker: int) -> None:
        """``worker`` received the final model."""
        self.given_done.add(worker)

    def done_unconfirmed(self, worker: int) -> None:
        """The connection ``worker`` was handed the final model on failed (silent past the idle
        timeout, or reset) instead of being closed by the worker: the Done may never have arrived
        (written into a link that then died), so it is owed again."""
        self.given_done.discard(worker)

    def owed_done(self, since: float) -> set[int]:
        """Workers not connected now that never got the final model and whose connection ended after
        ``since``, or that took part before a restart and have not come back since (however long the
        restarted run took: they may be retrying). When a connection ended counts, not its last byte:
        one dropped for silence ended an idle timeout after that, and its worker is the likeliest to
        be reconnecting."""
        return {e.worker for e in self._names.values()
                if e.worker not in self.given_done and e.worker not in self.live
                and (e.left_at > since or e.restored)}
