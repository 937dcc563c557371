"""The ``Status`` message: a read-only view of a chief, for ``fedsock status``.

A peer that puts ``"status"`` in its Hello capabilities authenticates like a
worker and then gets one ``Status`` instead of ``Welcome``; the chief sends
nothing more and the connection ends. A status query never joins the
federation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedsock import limits
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol.fields import metrics_map, nonneg, number, require
from fedsock.protocol.frames import Kind
from fedsock.protocol.identity import check_name

#: The Hello capability that asks for a Status instead of a Welcome.
STATUS_CAPABILITY = "status"


def _seconds(body: dict[str, Any], name: str, what: str) -> float:
    value = number(body, name, what)
    if not (math.isfinite(value) and value >= 0):
        raise RemoteProtocolError(f"{what}: field {name!r} must be finite and >= 0", code=ErrorCode.BAD_MESSAGE)
    return value


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the chief knows it (one entry of ``Status.workers``)."""

    name: str
    worker_id: int
    connected: bool
    last_seen: float  # seconds since the chief last received a byte from it
    rounds: int  # rounds whose global model includes its update
    bytes_in: int  # bytes it sent the chief, all connections together
    bytes_out: int  # bytes the chief sent it
    #: its latest validation metrics (``val_*``, from its last accepted update); absent on the wire when empty
    metrics: dict[str, float] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "name": self.name, "worker_id": self.worker_id, "connected": self.connected,
            "last_seen": float(self.last_seen), "rounds": self.rounds,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
        }
        if self.metrics:
            wire["metrics"] = {k: float(v) for k, v in self.metrics.items()}
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> WorkerStatus:
        w = "Status worker"
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"{w} must be a map", code=ErrorCode.BAD_MESSAGE)
        name = require(obj, "name", str, w)
        if len(name.encode()) > limits.MAX_NAME_BYTES:
            raise RemoteProtocolError(f"{w}: name longer than {limits.MAX_NAME_BYTES} bytes",
                                      code=ErrorCode.LIMIT_EXCEEDED)
        check_name(name)  # the names a status client prints follow the rule of Hello
        metrics = metrics_map(obj, "metrics", w) if "metrics" in obj else {}
        if len(metrics) > limits.MAX_STATUS_METRICS:
            raise RemoteProtocolError(f"{w}: {len(metrics)} metrics exceed the limit of {limits.MAX_STATUS_METRICS}",
                                      code=ErrorCode.LIMIT_EXCEEDED)
        return cls(
            name=name,
            worker_id=nonneg(require(obj, "worker_id", int, w), "worker_id", w),
            connected=require(obj, "connected", bool, w),
            last_seen=_seconds(obj, "last_seen", w),
            rounds=nonneg(require(obj, "rounds", int, w), "rounds", w),
            bytes_in=nonneg(require(obj, "bytes_in", int, w), "bytes_in", w),
            bytes_out=nonneg(require(obj, "bytes_out", int, w), "bytes_out", w),
            metrics=metrics,
        )


@dataclass(frozen=True)
class Status:
    """Chief -> status client, instead of Welcome: the run as the chief sees it.

    Attributes:
        round: the global model's round (0 = initial).
        rounds: rounds the run will have.
        finished: the last round is done.
        submitted: updates accepted so far for the round being collected.
        waiting: workers whose update that round still waits for.
        uptime: seconds since this chief process started.
        upstream: for a relay, the ``host:port`` it reports to; else None.
        metrics: the last completed round's numbers (holdout metrics,
            ``seconds``, ``examples``, ``bytes_in``, ``bytes_out``, ...).
        workers: at most ``MAX_STATUS_WORKERS`` workers, connected ones first
            (only for a read-only status token; empty for a join token).
        connected, known: how many workers are connected, and known in this run.
    """

    kind: ClassVar[Kind] = Kind.STATUS
    round: int
    rounds: int
    finished: bool
    submitted: int
    waiting: int
    uptime: float
    upstream: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    workers: tuple[WorkerStatus, ...] = ()
    connected: int = 0
    known: int = 0

    def to_body(self) -> dict[str, Any]:
        return {
            "round": self.round, "rounds": self.rounds, "finished": self.finished,
            "submitted": self.submitted, "waiting": self.waiting, "uptime": float(self.uptime),
            "upstream": self.upstream, "metrics": {k: float(v) for k, v in self.metrics.items()},
            "workers": [ws.to_wire() for ws in self.workers], "connected": self.connected, "known": self.known,
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Status:
        w = "Status"
        workers = require(b, "workers", list, w)
        if len(workers) > limits.MAX_STATUS_WORKERS:
            raise RemoteProtocolError(
                f"{w}: {len(workers)} workers exceed the limit of {limits.MAX_STATUS_WORKERS}",
                code=ErrorCode.LIMIT_EXCEEDED,
            )
        return cls(
            round=nonneg(require(b, "round", int, w), "round", w),
            rounds=nonneg(require(b, "rounds", int, w), "rounds", w),
            finished=require(b, "finished", bool, w),
            submitted=nonneg(require(b, "submitted", int, w), "submitted", w),
            waiting=nonneg(require(b, "waiting", int, w), "waiting", w),
            uptime=_seconds(b, "uptime", w),
            upstream=require(b, "upstream", (str, type(None)), w),
            metrics=metrics_map(b, "metrics", w),
            workers=tuple(WorkerStatus.from_wire(x) for x in workers),
            connected=nonneg(require(b, "connected", int, w), "connected", w),
            known=nonneg(require(b, "known", int, w), "known", w),
        )
