"""The messages of protocol v1 after the handshake, and the tables of all of them.

Each message is a frozen dataclass. ``to_body`` gives the map that is packed
into a frame; ``from_body`` validates a decoded map from a peer and raises
``RemoteProtocolError`` for anything that does not fit the contract. The
handshake messages live in ``handshake``, tensor specs in ``specs``,
secure aggregation in ``secagg``, Status in ``status``; they are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol.fields import metrics_map, nonneg, number, require
from fedsock.protocol.frames import Kind
from fedsock.protocol.handshake import Auth, Challenge, Hello, Plan, Welcome
from fedsock.protocol.specs import DTYPES, ITEMSIZE, TensorSpec, specs_from_wire, specs_to_wire
from fedsock.protocol.status import Status

__all__ = [
    "CLASSES", "DTYPES", "ERROR_CODES", "ITEMSIZE", "WEIGHTS_KINDS",
    "Auth", "Challenge", "Chunk", "Done", "EndOfMessage", "Error", "EvalRequest", "EvalResult", "Global",
    "Heartbeat", "Hello",
    "Message", "Plan", "TensorSpec", "Update", "Welcome", "specs_from_wire", "specs_to_wire",
]

#: The wire strings of ``ErrorCode``.
ERROR_CODES = frozenset(c.value for c in ErrorCode)


@dataclass(frozen=True)
class Update:
    """Worker -> chief: weights after local training. Followed by chunks."""

    kind: ClassVar[Kind] = Kind.UPDATE
    round: int
    num_examples: int
    tensors: tuple[TensorSpec, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "tensors": specs_to_wire(self.tensors),
        }

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Update:
        w = "Update"
        metrics = metrics_map(b, "metrics", w)
        return cls(
            round=nonneg(require(b, "round", int, w), "round", w),
            num_examples=nonneg(require(b, "num_examples", int, w), "num_examples", w),
            tensors=specs_from_wire(b, w, encoded=True),
            metrics=metrics,
        )


@dataclass(frozen=True)
class Global:
    """Chief -> worker: the aggregated weights of ``round``. Followed by chunks."""

    kind: ClassVar[Kind] = Kind.GLOBAL
    round: int
    tensors: tuple[TensorSpec, ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "tensors": specs_to_wire(self.tensors)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Global:
        return cls(
            round=nonneg(require(b, "round", int, "Global"), "round", "Global"),
            tensors=specs_from_wire(b, "Global"),
        )


@dataclass(frozen=True)
class Done:
    """Chief -> worker: training is over; the final weights follow.

    ``report`` (seconds, optional): the chief waits that long for the worker's final
    ``EvalResult`` (``final`` true); None: it wants none. On the wire only when set.
    """

    kind: ClassVar[Kind] = Kind.DONE
    round: int
    tensors: tuple[TensorSpec, ...]
    report: float | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"round": self.round, "tensors": specs_to_wire(self.tensors)}
        if self.report is not None:
            body["report"] = float(self.report)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Done:
        report = None
        if "report" in b:
            report = number(b, "report", "Done")
            if not math.isfinite(report) or report <= 0:
                raise RemoteProtocolError(f"Done: report must be a finite number > 0, got {report!r}",
                                          code=ErrorCode.BAD_MESSAGE)
        return cls(
            round=nonneg(require(b, "round", int, "Done"), "round", "Done"),
            tensors=specs_from_wire(b, "Done"),
            report=report,
        )


@dataclass(frozen=True)
class Heartbeat:
    """Either side: "still here" while there is nothing else to say."""

    kind: ClassVar[Kind] = Kind.HEARTBEAT

    def to_body(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Heartbeat:
        return cls()


@dataclass(frozen=True)
class Error:
    """Either side: a failure; the sender closes the connection after it."""

    kind: ClassVar[Kind] = Kind.ERROR
    code: str
    message: str

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Error:
        return cls(code=require(b, "code", str, "Error"), message=require(b, "message", str, "Error"))


@dataclass(frozen=True)
class Chunk:
    """A piece of tensor data: ``data`` starts at byte ``offset`` of tensor ``tensor``."""

    kind: ClassVar[Kind] = Kind.CHUNK
    tensor: int
    offset: int
    data: bytes | memoryview

    def to_body(self) -> dict[str, Any]:
        return {"t": self.tensor, "o": self.offset, "d": bytes(self.data)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Chunk:
        return cls(
            tensor=nonneg(require(b, "t", int, "Chunk"), "t", "Chunk"),
            offset=nonneg(require(b, "o", int, "Chunk"), "o", "Chunk"),
            data=require(b, "d", bytes, "Chunk"),
        )


#: The Hello capability that asks the chief for ``Ack`` messages.
ACK_CAPABILITY = "ack"


@dataclass(frozen=True)
class Ack:
    """Chief -> worker, only to a worker whose Hello had ``ACK_CAPABILITY``: what became of its
    Update for ``round``.

    ``sampled`` true: accepted; the round holds ``held`` updates and waits for ``waiting``
    more workers taking part. False: this worker is not in the round's sample; its update
    was discarded and a Global follows when a round samples it.
    """

    kind: ClassVar[Kind] = Kind.ACK
    round: int
    sampled: bool
    held: int
    waiting: int

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "sampled": self.sampled, "held": self.held, "waiting": self.waiting}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Ack:
        w = "Ack"
        return cls(
            round=nonneg(require(b, "round", int, w), "round", w),
            sampled=require(b, "sampled", bool, w),
            held=nonneg(require(b, "held", int, w), "held", w),
            waiting=nonneg(require(b, "waiting", int, w), "waiting", w),
        )


#: The Hello capability of a worker that answers ``EvalRequest`` and reports its final evaluation.
EVAL_CAPABILITY = "eval"


@dataclass(frozen=True)
class EvalRequest:
    """Chief -> worker, only to a worker whose Hello had ``EVAL_CAPABILITY``: evaluate these
    weights (the global model of ``round``) on your validation split, without training on them,
    and answer with one ``EvalResult`` for ``round``. Followed by chunks.
    """

    kind: ClassVar[Kind] = Kind.EVAL_REQUEST
    round: int
    tensors: tuple[TensorSpec, ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "tensors": specs_to_wire(self.tensors)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> EvalRequest:
        w = "EvalRequest"
        return cls(round=nonneg(require(b, "round", int, w), "round", w), tensors=specs_from_wire(b, w))


@dataclass(frozen=True)
class EvalResult:
    """Worker -> chief, only from a worker whose Hello had ``EVAL_CAPABILITY``: metrics, no weights.

    The answer to the ``EvalRequest`` of ``round``; with ``final``, the report the chief's
    ``Done`` asked for (``round``: Done's), on the final model and, after local fine-tuning,
    as ``personalized_val_*``. ``metrics`` may be empty (the worker has nothing to evaluate on).
    """

    kind: ClassVar[Kind] = Kind.EVAL_RESULT
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    final: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"round": self.round, "metrics": dict(self.metrics)}
        if self.final:
            body["final"] = True
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> EvalResult:
        w = "EvalResult"
        final = require(b, "final", bool, w) if "final" in b else False
        return cls(round=nonneg(require(b, "round", int, w), "round", w), metrics=metrics_map(b, "metrics", w),
                   final=final)


@dataclass(frozen=True)
class EndOfMessage:
    """Not on the wire: emitted after the last chunk of a weights message."""

    of: Kind


Message = (Hello | Challenge | Auth | Welcome | Update | Global | Done | Heartbeat | Error | Chunk | Status | Ack
           | EvalRequest | EvalResult)
WEIGHTS_KINDS = frozenset({Kind.WELCOME, Kind.UPDATE, Kind.GLOBAL, Kind.DONE, Kind.EVAL_REQUEST})
#: The class of each kind; a receiver calls ``CLASSES[kind].from_body(body)`` (looked up at
#: decode time, so a test can replace a decoder).
CLASSES: dict[Kind, type[Message]] = {
    c.kind: c for c in (Hello, Challenge, Auth, Welcome, Update, Global, Done, Heartbeat, Error, Chunk, Status, Ack,
                        EvalRequest, EvalResult)
}
