"""Counters about the run and each worker, for the live display and ``fedsock status``.

``Monitor`` is a chief callback: it hears of workers joining and leaving and
of rounds closing (and, from the chief, of late updates), keeps the numbers,
and turns them into a display ``Snapshot`` or a wire ``Status``. It does no
I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsock import limits
from fedsock.chief.callbacks import ChiefCallback, RoundRecord, WorkerJoined, WorkerLeft
from fedsock.chief.display import Snapshot
from fedsock.chief.evaluation import FED, VAL
from fedsock.chief.rounds import RoundController
from fedsock.protocol import Status, WorkerStatus
from fedsock.transport.aio import Session

#: Fields of a metrics.jsonl row that are not "metrics" in Status.
_NOT_METRICS = {"round", "time", "participants", "fraction"}
#: Fields every row has; the rest are holdout metrics (and, with DP, the privacy budget).
ROW_FIELDS = {"round", "workers", "examples", "seconds", "bytes_in", "bytes_out", "time", "participants",
              "fraction", "sampled", "dp_clip", "dp_noise", "dp_delta"}


@dataclass
class WorkerStats:
    """One worker identity's totals over all its connections in this chief run."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)  # its latest validation metrics
    rounds: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    last_seen: float = 0.0  # time.monotonic() of the last byte received


class Monitor(ChiefCallback):
    """Run and per-worker counters.

    Args:
        min_workers: the chief's ``min_workers`` (shown while waiting).
        upstream: a relay's upstream ``host:port``, for Status.
        max_workers: most worker identities with totals; beyond it, those of
            disconnected workers are dropped, least recently seen first.
    """

    def __init__(self, min_workers: int, upstream: str | None = None,
                 max_workers: int = 4 * limits.MAX_WORKERS) -> None:
        self.min_workers = min_workers
        self.upstream = upstream
        self.max_workers = max_workers
        self.started = time.monotonic()
        self.workers: dict[int, WorkerStats] = {}
        self._connected: set[int] = set()
        self.bytes_in = 0
        self.bytes_out = 0
        self.late = 0
        self.last_row: dict[str, Any] = {}
        # the rounds' durations as a running total (a list of them grew by one float every round)
        self._rounds_seen, self._seconds_total, self._last_seconds = 0, 0.0, 0.0

    def _stats(self, wid: int, name: str) -> WorkerStats:
        st = self.workers.get(wid)
        if st is None:
            st = self.workers[wid] = WorkerStats(name, last_seen=time.monotonic())
        st.name = name
        return st

    def on_worker_joined(self, event: WorkerJoined) -> None:
        if event.worker not in self.workers and len(self.workers) >= self.max_workers:
            gone = sorted((st.last_seen, w) for w, st in self.workers.items() if w not in self._connected)
            for _, w in gone[: len(self.workers) - self.max_workers * 3 // 4]:
                del self.workers[w]
        self._connected.add(event.worker)
        self._stats(event.worker, event.name).last_seen = time.monotonic()

    def on_worker_left(self, event: WorkerLeft) -> None:
        """Fold the finished connection's byte counts into its worker's totals."""
        if not event.replaced:
            self._connected.discard(event.worker)
        st = self._stats(event.worker, event.name)
        st.bytes_in += event.bytes_in
        st.bytes_out += event.bytes_out
        st.last_seen = max(st.last_seen, event.last_received)

    def late_update(self) -> None:
        """An update for a closed round was dropped."""
        self.late += 1

    def on_round_end(self, record: RoundRecord) -> None:
        row = record.row()
        for wid in record.workers:
            if wid in self.workers:
                self.workers[wid].rounds += 1
        for wid, name in zip(record.workers, record.names):
            ev = record.worker_metrics.get(name)
            if ev is not None and wid in self.workers:
                self.workers[wid].metrics = status_metrics(ev.metrics)
        self.bytes_in += int(row.get("bytes_in", 0))
        self.bytes_out += int(row.get("bytes_out", 0))
        self._last_seconds = float(row.get("seconds", 0.0))
        self._rounds_seen += 1
        self._seconds_total += self._last_seconds
        self.last_row = dict(row)
        self.late = 0

    def snapshot(self, ctrl: RoundController, connected: int, bytes_in_now: int = 0) -> Snapshot:
        """The display's view of now; ``bytes_in_now``: update bytes of the open round so far.

        Once the run is over no round is open: the updates shown are the last round's.
        """
        submitted = len(ctrl.submitted)
        participants = submitted + len(ctrl.expected()) if ctrl.is_open else 0
        if ctrl.finished and self.last_row:
            submitted = participants = int(self.last_row.get("workers", 0))
        remaining = ctrl.rounds - ctrl.round
        eta = None
        if self._rounds_seen and remaining > 0:
            elapsed = time.monotonic() - ctrl.opened_at if ctrl.opened_at is not None else 0.0
            mean = self._seconds_total / self._rounds_seen
            eta = max(0.0, mean * remaining - elapsed)
        metrics = _numbers((k, v) for k, v in self.last_row.items() if k not in ROW_FIELDS and not _evaluation(k))
        fed, worst = self.last_row.get("fed_val_accuracy"), self.last_row.get("worst_worker")
        worst_acc = self.last_row.get("val_accuracy_worst")
        return Snapshot(
            round=min(ctrl.collecting, ctrl.rounds), rounds=ctrl.rounds, submitted=submitted,
            participants=participants,
            connected=connected, late=self.late, min_workers=self.min_workers,
            bytes_in=self.bytes_in + bytes_in_now, bytes_out=self.bytes_out,
            opened_at=ctrl.opened_at, last_seconds=self._last_seconds if self._rounds_seen else None,
            last_metrics=metrics, eta_seconds=eta, finished=ctrl.finished,
            federated=float(fed) if isinstance(fed, float) else None,
            worst=(str(worst), float(worst_acc)) if isinstance(worst, str) and isinstance(worst_acc, float) else None,
        )

    def status(self, ctrl: RoundController, sessions: Mapping[int, Session], full: bool = False) -> Status:
        """The ``Status`` answer to a status query.

        ``full`` (a read-only status token): with each worker's name and traffic.
        Otherwise (a join token, which any worker holds) counts only: no names,
        and no traffic figures, per worker or for the last round.
        """
        now = time.monotonic()
        entries: list[tuple[bool, float, WorkerStatus]] = []
        for wid, st in self.workers.items():
            s = sessions.get(wid)
            seen = max(st.last_seen, s.last_received) if s is not None else st.last_seen
            entries.append((s is not None, seen, WorkerStatus(
                name=st.name, worker_id=wid, connected=s is not None, last_seen=max(0.0, now - seen),
                rounds=st.rounds, bytes_in=st.bytes_in + (s.bytes_in if s else 0),
                bytes_out=st.bytes_out + (s.bytes_out if s else 0), metrics=dict(st.metrics),
            )))
        # connected first, then the most recently seen; the list is capped for the frame limit
        entries.sort(key=lambda e: (not e[0], -e[1], e[2].worker_id))
        workers = tuple(e[2] for e in entries[: limits.MAX_STATUS_WORKERS]) if full else ()
        metrics = _numbers(self.last_row.items())
        if not full:
            metrics = {k: v for k, v in metrics.items() if k not in ("bytes_in", "bytes_out")}
        return Status(
            round=ctrl.round, rounds=ctrl.rounds, finished=ctrl.finished,
            submitted=len(ctrl.submitted), waiting=len(ctrl.expected()) if ctrl.is_open else 0,
            uptime=now - self.started, upstream=self.upstream,
            metrics=metrics, workers=workers, connected=sum(e[0] for e in entries), known=len(entries),
        )


def _evaluation(key: str) -> bool:
    """A row field of federated evaluation (shown on its own line, not among the holdout metrics)."""
    return key.startswith(FED) or key.rsplit("_", 1)[-1] in ("worst", "median", "best", "spread")


def status_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """What ``fedsock status`` shows of a worker's metrics: its ``val_*`` ones, at most
    ``MAX_STATUS_METRICS`` (by name)."""
    return dict(sorted((k, v) for k, v in metrics.items() if k.startswith(VAL))[: limits.MAX_STATUS_METRICS])


def _numbers(items: Iterable[tuple[str, Any]]) -> dict[str, float]:
    return {k: float(v) for k, v in items
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
