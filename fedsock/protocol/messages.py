"""The messages of protocol v1 and their msgpack bodies.

Each message is a frozen dataclass. ``to_body`` gives the map that is packed
into a frame; ``from_body`` validates a decoded map from a peer and raises
``RemoteProtocolError`` for anything that does not fit the contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedsock import limits
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol.compression import FLOAT_DTYPES, Encoding, parse_compression
from fedsock.protocol.fields import metrics_map, nonneg, require
from fedsock.protocol.frames import Kind
from fedsock.protocol.status import Status

#: dtypes allowed on the wire (always little-endian).
DTYPES = frozenset(
    {
        "float16", "float32", "float64",
        "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "bool",
    }
)
ITEMSIZE = {
    "float16": 2, "float32": 4, "float64": 8,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "bool": 1,
}

#: Error codes carried by ``Error.code``.
ERROR_CODES = frozenset(
    {
        "bad_frame",            # undecodable frame or body
        "frame_too_large",      # header announced more than MAX_FRAME_BYTES
        "unsupported_version",  # protocol version not spoken here
        "out_of_order",         # message not allowed in the current state
        "bad_message",          # well-formed msgpack, wrong fields or types
        "limit_exceeded",       # too many tensors, elements, bytes, ...
        "auth_failed",          # wrong token / HMAC
        "signature_mismatch",   # tensor count, shapes or dtypes differ from the model
        "invalid_weights",      # NaN or Inf in an update
        "timeout",              # peer too slow (handshake, idle)
        "busy",                 # chief at capacity
        "shutdown",             # chief is stopping
        "internal",             # a bug on the sender's side
    }
)


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    #: How the data is encoded (compressed updates only); None = raw little-endian values.
    enc: Encoding | None = None

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of bytes of its raw little-endian data."""
        return self.size * ITEMSIZE[self.dtype]

    @property
    def wire_nbytes(self) -> int:
        """Bytes of its data on the wire: ``nbytes``, or the encoded size."""
        return self.nbytes if self.enc is None else self.enc.wire_nbytes(self.size)

    def describe(self) -> str:
        """Human form, e.g. ``'dense/kernel' float32[64, 10]``."""
        return f"{self.name!r} {self.dtype}{list(self.shape)}"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.enc is not None:
            out["enc"] = self.enc.to_wire()
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> TensorSpec:
        what = "tensor spec"
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"{what} must be a map", code="bad_message")
        name = require(obj, "name", str, what)
        dtype = require(obj, "dtype", str, what)
        shape = require(obj, "shape", list, what)
        if len(name.encode()) > limits.MAX_TENSOR_NAME_BYTES:
            raise RemoteProtocolError(f"{what}: name too long", code="limit_exceeded")
        if dtype not in DTYPES:
            raise RemoteProtocolError(f"{what}: unsupported dtype {dtype!r}", code="bad_message")
        if len(shape) > limits.MAX_TENSOR_RANK:
            raise RemoteProtocolError(
                f"{what}: rank {len(shape)} exceeds {limits.MAX_TENSOR_RANK}",
                code="limit_exceeded",
            )
        size = 1
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                raise RemoteProtocolError(f"{what}: bad dimension {dim!r}", code="bad_message")
            size *= dim
            if size > limits.MAX_TENSOR_ELEMENTS:
                raise RemoteProtocolError(
                    f"{what}: {name!r} has more than {limits.MAX_TENSOR_ELEMENTS} elements",
                    code="limit_exceeded",
                )
        enc = None
        if "enc" in obj:
            if dtype not in FLOAT_DTYPES:
                raise RemoteProtocolError(f"{what}: enc on a {dtype} tensor", code="bad_message")
            enc = Encoding.from_wire(obj["enc"], size)
        return cls(name, dtype, tuple(shape), enc)


def specs_to_wire(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [s.to_wire() for s in specs]


def specs_from_wire(body: dict[str, Any], what: str, encoded: bool = False) -> tuple[TensorSpec, ...]:
    """The checked ``tensors`` of a body; ``encoded``: whether ``enc`` is allowed (Update only)."""
    raw = require(body, "tensors", list, what)
    if len(raw) > limits.MAX_TENSORS:
        raise RemoteProtocolError(
            f"{what}: {len(raw)} tensors exceed the limit of {limits.MAX_TENSORS}",
            code="limit_exceeded",
        )
    specs = tuple(TensorSpec.from_wire(t) for t in raw)
    if not encoded and any(s.enc is not None for s in specs):
        raise RemoteProtocolError(f"{what}: only an Update may carry encoded tensors", code="bad_message")
    total = sum(s.nbytes for s in specs)
    if total > limits.MAX_MODEL_BYTES:
        raise RemoteProtocolError(
            f"{what}: {total} bytes of weights exceed the limit of {limits.MAX_MODEL_BYTES}",
            code="limit_exceeded",
        )
    return specs


# --- messages ------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Worker -> chief, first message: who is speaking, what it can do."""

    kind: ClassVar[Kind] = Kind.HELLO
    name: str
    version: int = 1
    capabilities: tuple[str, ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "capabilities": list(self.capabilities)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Hello:
        version = require(b, "version", int, "Hello")
        name = require(b, "name", str, "Hello")
        caps = require(b, "capabilities", list, "Hello")
        if len(name.encode()) > limits.MAX_NAME_BYTES:
            raise RemoteProtocolError(
                f"Hello: name longer than {limits.MAX_NAME_BYTES} bytes", code="limit_exceeded"
            )
        if not all(isinstance(c, str) for c in caps):
            raise RemoteProtocolError("Hello: capabilities must be strings", code="bad_message")
        return cls(name=name, version=version, capabilities=tuple(caps))


@dataclass(frozen=True)
class Challenge:
    """Chief -> worker: a fresh random nonce to authenticate against."""

    kind: ClassVar[Kind] = Kind.CHALLENGE
    nonce: bytes

    def to_body(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Challenge:
        nonce = require(b, "nonce", bytes, "Challenge")
        if len(nonce) != limits.NONCE_BYTES:
            raise RemoteProtocolError(
                f"Challenge: nonce must be {limits.NONCE_BYTES} bytes", code="bad_message"
            )
        return cls(nonce)


@dataclass(frozen=True)
class Auth:
    """Worker -> chief: HMAC-SHA256 proving knowledge of the join secret."""

    kind: ClassVar[Kind] = Kind.AUTH
    mac: bytes

    def to_body(self) -> dict[str, Any]:
        return {"mac": self.mac}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Auth:
        mac = require(b, "mac", bytes, "Auth")
        if len(mac) != 32:
            raise RemoteProtocolError("Auth: mac must be 32 bytes", code="bad_message")
        return cls(mac)


@dataclass(frozen=True)
class Plan:
    """The training plan the chief hands to workers.

    ``mu`` is FedProx's proximal coefficient: workers add
    ``mu/2 * ||w - w_global||^2`` to their local objective. ``secure_agg``:
    updates go through secure aggregation (masked, see protocol.md section 8).
    ``dp_clip`` (C > 0 turns client-level differential privacy on): workers clip
    their update delta to L2 norm C and are weighted equally; ``dp_noise`` (z):
    Gaussian noise of std z*C is added to the sum (by the chief, or with
    ``secure_agg`` split across the workers). Each is on the wire only when not
    its default, so a plain plan encodes exactly as before; absent keys decode
    as the defaults.
    """

    rounds: int
    sync_every: int
    batch_size: int
    mu: float = 0.0
    secure_agg: bool = False
    dp_clip: float = 0.0
    dp_noise: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "rounds": self.rounds, "sync_every": self.sync_every, "batch_size": self.batch_size,
        }
        if self.mu:
            wire["mu"] = float(self.mu)
        if self.secure_agg:
            wire["secure_agg"] = True
        if self.dp_clip:
            wire["dp_clip"] = float(self.dp_clip)
        if self.dp_noise:
            wire["dp_noise"] = float(self.dp_noise)
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> Plan:
        if not isinstance(obj, dict):
            raise RemoteProtocolError("Welcome: plan must be a map", code="bad_message")
        rounds, sync_every, batch_size = (
            require(obj, k, int, "plan") for k in ("rounds", "sync_every", "batch_size")
        )
        if rounds < 0 or sync_every < 1 or batch_size < 1:
            raise RemoteProtocolError("plan: values out of range", code="bad_message")
        mu, dp_clip, dp_noise = (_nonneg_float(obj, k) for k in ("mu", "dp_clip", "dp_noise"))
        secure_agg = require(obj, "secure_agg", bool, "plan") if "secure_agg" in obj else False
        if dp_noise and not dp_clip:
            raise RemoteProtocolError("plan: dp_noise without dp_clip", code="bad_message")
        return cls(rounds, sync_every, batch_size, mu=mu, secure_agg=secure_agg, dp_clip=dp_clip,
                   dp_noise=dp_noise)


def _nonneg_float(obj: dict[str, Any], key: str) -> float:
    """Optional plan field ``key``: a finite number >= 0 (0.0 when absent)."""
    value = require(obj, key, (float, int), "plan") if key in obj else 0.0
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise RemoteProtocolError(f"plan: {key} must be a finite number >= 0, got {value!r}", code="bad_message")
    return float(value)


@dataclass(frozen=True)
class Welcome:
    """Chief -> worker: accepted. Followed by the global weights' chunks.

    ``round`` is the round of the global weights that follow (0 = initial).
    With no global model yet (bring-your-own-model), ``tensors`` is empty and
    the worker proposes its weights with ``Update(round=0)``.
    """

    kind: ClassVar[Kind] = Kind.WELCOME
    worker_id: int
    round: int
    plan: Plan
    tensors: tuple[TensorSpec, ...] = ()
    model: str | None = None
    compile: str | None = None
    has_weights: bool = False
    #: Update compression the chief asks for ("none", "fp16", "int8", "topk:R"); sent only if not "none".
    compress: str = "none"

    def to_body(self) -> dict[str, Any]:
        body = {
            "worker_id": self.worker_id,
            "round": self.round,
            "plan": self.plan.to_wire(),
            "model": self.model,
            "compile": self.compile,
            "has_weights": self.has_weights,
            "tensors": specs_to_wire(self.tensors),
        }
        if self.compress != "none":
            body["compress"] = self.compress
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Welcome:
        w = "Welcome"
        model = require(b, "model", (str, type(None)), w)
        comp = require(b, "compile", (str, type(None)), w)
        has_weights = require(b, "has_weights", bool, w)
        tensors = specs_from_wire(b, w)
        if not has_weights and tensors:
            raise RemoteProtocolError("Welcome: tensors without has_weights", code="bad_message")
        compress = b.get("compress", "none")
        try:
            if not isinstance(compress, str):
                raise ConfigError("not a string")
            parse_compression(compress)
        except ConfigError:
            raise RemoteProtocolError(f"Welcome: unknown compression {compress!r}", code="bad_message") from None
        return cls(
            worker_id=nonneg(require(b, "worker_id", int, w), "worker_id", w),
            round=nonneg(require(b, "round", int, w), "round", w),
            plan=Plan.from_wire(require(b, "plan", dict, w)),
            tensors=tensors,
            model=model,
            compile=comp,
            has_weights=has_weights,
            compress=compress,
        )


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
    """Chief -> worker: training is over; the final weights follow."""

    kind: ClassVar[Kind] = Kind.DONE
    round: int
    tensors: tuple[TensorSpec, ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "tensors": specs_to_wire(self.tensors)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Done:
        return cls(
            round=nonneg(require(b, "round", int, "Done"), "round", "Done"),
            tensors=specs_from_wire(b, "Done"),
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


@dataclass(frozen=True)
class EndOfMessage:
    """Not on the wire: emitted after the last chunk of a weights message."""

    of: Kind


Message = Hello | Challenge | Auth | Welcome | Update | Global | Done | Heartbeat | Error | Chunk | Status
WEIGHTS_KINDS = frozenset({Kind.WELCOME, Kind.UPDATE, Kind.GLOBAL, Kind.DONE})
CLASSES: dict[Kind, Callable[[dict[str, Any]], Message]] = {
    c.kind: c.from_body
    for c in (Hello, Challenge, Auth, Welcome, Update, Global, Done, Heartbeat, Error, Chunk, Status)
}
