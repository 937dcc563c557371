"""The handshake messages: Hello, Challenge, Auth, Welcome (and Welcome's Plan).

Each message is a frozen dataclass. ``to_body`` gives the map that is packed
into a frame; ``from_body`` validates a decoded map from a peer and raises
``RemoteProtocolError`` for anything that does not fit the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from fedsock import limits
from fedsock.errors import ConfigError, ErrorCode, RemoteProtocolError
from fedsock.protocol.compression import parse_compression
from fedsock.protocol.fields import nonneg, require
from fedsock.protocol.frames import Kind
from fedsock.protocol.identity import check_name
from fedsock.protocol.specs import TensorSpec, specs_from_wire, specs_to_wire


def _fixed_bin(b: dict[str, Any], key: str, size: int, what: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> bytes:
    """``b[key]``, a bin of exactly ``size`` bytes (a wrong length is ``code``)."""
    value: bytes = require(b, key, bytes, what)
    if len(value) != size:
        raise RemoteProtocolError(f"{what}: {key} must be {size} bytes, got {len(value)}", code=code)
    return value


@dataclass(frozen=True)
class Hello:
    """Worker -> chief, first message: who is speaking, what it can do.

    ``instance``: ``INSTANCE_ID_BYTES`` random bytes drawn once per worker
    process (required on the wire; the empty default exists only so that the
    other fields keep their positions, and such a Hello cannot be sent).
    """

    kind: ClassVar[Kind] = Kind.HELLO
    name: str
    version: int = 1
    capabilities: tuple[str, ...] = ()
    instance: bytes = b""
    #: The optional features (``FEATURES``) the worker implements; None: it does not say.
    features: tuple[str, ...] | None = None

    def to_body(self) -> dict[str, Any]:
        body = {"version": self.version, "name": self.name, "capabilities": list(self.capabilities),
                "instance": self.instance}
        if self.features is not None:
            body["features"] = list(self.features)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Hello:
        version = require(b, "version", int, "Hello")
        name = require(b, "name", str, "Hello")
        caps = require(b, "capabilities", list, "Hello")
        if len(name.encode()) > limits.MAX_NAME_BYTES:
            raise RemoteProtocolError(
                f"Hello: name longer than {limits.MAX_NAME_BYTES} bytes", code=ErrorCode.LIMIT_EXCEEDED
            )
        check_name(name)
        if not all(isinstance(c, str) for c in caps):
            raise RemoteProtocolError("Hello: capabilities must be strings", code=ErrorCode.BAD_MESSAGE)
        instance = _fixed_bin(b, "instance", limits.INSTANCE_ID_BYTES, "Hello")
        features = _strings(b, "features", "Hello") if "features" in b else None
        return cls(name=name, version=version, capabilities=tuple(caps), instance=instance, features=features)


#: The worker puts the metrics a SecAggRoster names into its masked vector (protocol.md 7.10). No plan
#: requires it: a chief announces metrics only in attempts whose workers all list it.
SECAGG_METRICS_FEATURE = "secagg_metrics"
#: Optional features a worker implements (Hello's ``features``, protocol.md 7.2); a plan can require
#: the first two (what ``Welcome.requires`` lists).
FEATURES = ("secure_agg", "dp_clip", SECAGG_METRICS_FEATURE)


def required_features(plan: Plan) -> tuple[str, ...]:
    """The features a worker must implement to train with ``plan``."""
    return tuple(f for f, on in (("secure_agg", plan.secure_agg), ("dp_clip", plan.dp_clip > 0)) if on)


def _strings(b: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    items = require(b, key, list, what)
    if not all(isinstance(x, str) for x in items):
        raise RemoteProtocolError(f"{what}: {key} must be strings", code=ErrorCode.BAD_MESSAGE)
    return tuple(items)


@dataclass(frozen=True)
class Challenge:
    """Chief -> worker: a fresh random nonce to authenticate against."""

    kind: ClassVar[Kind] = Kind.CHALLENGE
    nonce: bytes

    def to_body(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Challenge:
        return cls(_fixed_bin(b, "nonce", limits.NONCE_BYTES, "Challenge"))


@dataclass(frozen=True)
class Auth:
    """Worker -> chief: HMAC-SHA256 proving knowledge of the join secret.

    ``resume`` (optional): ``reconnect_proof(secret, nonce, name)`` under the
    reconnect secret of this chief's last Welcome to this name.
    A ``mac`` or ``resume`` of the wrong length is ``auth_failed``, as a wrong value.
    """

    kind: ClassVar[Kind] = Kind.AUTH
    mac: bytes
    resume: bytes | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mac": self.mac}
        if self.resume is not None:
            body["resume"] = self.resume
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Auth:
        mac = _fixed_bin(b, "mac", limits.MAC_BYTES, "Auth", ErrorCode.AUTH_FAILED)
        resume = _fixed_bin(b, "resume", limits.MAC_BYTES, "Auth", ErrorCode.AUTH_FAILED) if "resume" in b else None
        return cls(mac, resume)


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

    The chief's timing (None: not stated, as from a chief that predates it):
    ``heartbeat_interval`` (the longest a worker should stay silent),
    ``idle_timeout`` (after which the chief drops a silent worker),
    ``round_timeout`` and ``min_workers`` (when a round closes, protocol.md 7.5).
    """

    rounds: int
    sync_every: int
    batch_size: int
    mu: float = 0.0
    secure_agg: bool = False
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    heartbeat_interval: float | None = None
    idle_timeout: float | None = None
    round_timeout: float | None = None
    min_workers: int | None = None

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
        for key in TIMING:
            if getattr(self, key) is not None:
                wire[key] = float(getattr(self, key))
        if self.min_workers is not None:
            wire["min_workers"] = self.min_workers
        return wire

    @classmethod
    def from_wire(cls, obj: Any) -> Plan:
        if not isinstance(obj, dict):
            raise RemoteProtocolError("Welcome: plan must be a map", code=ErrorCode.BAD_MESSAGE)
        rounds, sync_every, batch_size = (
            require(obj, k, int, "plan") for k in ("rounds", "sync_every", "batch_size")
        )
        if rounds < 0 or sync_every < 1 or batch_size < 1:
            raise RemoteProtocolError("plan: values out of range", code=ErrorCode.BAD_MESSAGE)
        mu, dp_clip, dp_noise = (_nonneg_float(obj, k) for k in ("mu", "dp_clip", "dp_noise"))
        secure_agg = require(obj, "secure_agg", bool, "plan") if "secure_agg" in obj else False
        if dp_noise and not dp_clip:
            raise RemoteProtocolError("plan: dp_noise without dp_clip", code=ErrorCode.BAD_MESSAGE)
        timing = {key: _positive_float(obj, key) for key in TIMING}
        min_workers = require(obj, "min_workers", int, "plan") if "min_workers" in obj else None
        if min_workers is not None and min_workers < 1:
            raise RemoteProtocolError(f"plan: min_workers must be >= 1, got {min_workers}",
                                      code=ErrorCode.BAD_MESSAGE)
        return cls(rounds, sync_every, batch_size, mu=mu, secure_agg=secure_agg, dp_clip=dp_clip,
                   dp_noise=dp_noise, min_workers=min_workers, **timing)


#: The Plan's optional timing keys that are seconds (protocol.md, Plan).
TIMING = ("heartbeat_interval", "idle_timeout", "round_timeout")


def _positive_float(obj: dict[str, Any], key: str) -> float | None:
    """Optional plan field ``key``: a finite number > 0 (None when absent)."""
    if key not in obj:
        return None
    value = require(obj, key, (float, int), "plan")
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise RemoteProtocolError(f"plan: {key} must be a finite number > 0, got {value!r}",
                                  code=ErrorCode.BAD_MESSAGE)
    return float(value)


def _nonneg_float(obj: dict[str, Any], key: str) -> float:
    """Optional plan field ``key``: a finite number >= 0 (0.0 when absent)."""
    value = require(obj, key, (float, int), "plan") if key in obj else 0.0
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise RemoteProtocolError(f"plan: {key} must be a finite number >= 0, got {value!r}",
                                  code=ErrorCode.BAD_MESSAGE)
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
    #: ``RECONNECT_SECRET_BYTES`` random bytes: the key of this worker's ``Auth.resume`` on
    #: its next connection (required on the wire, like ``Hello.instance``).
    reconnect_secret: bytes = b""
    #: Features the worker must implement (``required_features(plan)``); on the wire only if any.
    requires: tuple[str, ...] = ()

    def to_body(self) -> dict[str, Any]:
        body = {
            "worker_id": self.worker_id,
            "round": self.round,
            "plan": self.plan.to_wire(),
            "model": self.model,
            "compile": self.compile,
            "has_weights": self.has_weights,
            "tensors": specs_to_wire(self.tensors),
            "reconnect_secret": self.reconnect_secret,
        }
        if self.compress != "none":
            body["compress"] = self.compress
        if self.requires:
            body["requires"] = list(self.requires)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> Welcome:
        w = "Welcome"
        model = require(b, "model", (str, type(None)), w)
        comp = require(b, "compile", (str, type(None)), w)
        has_weights = require(b, "has_weights", bool, w)
        tensors = specs_from_wire(b, w)
        if not has_weights and tensors:
            raise RemoteProtocolError("Welcome: tensors without has_weights", code=ErrorCode.BAD_MESSAGE)
        compress = b.get("compress", "none")
        try:
            if not isinstance(compress, str):
                raise ConfigError("not a string")
            parse_compression(compress)
        except ConfigError:
            raise RemoteProtocolError(f"Welcome: unknown compression {compress!r}",
                                      code=ErrorCode.BAD_MESSAGE) from None
        return cls(
            worker_id=nonneg(require(b, "worker_id", int, w), "worker_id", w),
            round=nonneg(require(b, "round", int, w), "round", w),
            plan=Plan.from_wire(require(b, "plan", dict, w)),
            tensors=tensors,
            model=model,
            compile=comp,
            has_weights=has_weights,
            compress=compress,
            reconnect_secret=_fixed_bin(b, "reconnect_secret", limits.RECONNECT_SECRET_BYTES, w),
            requires=_strings(b, "requires", w) if "requires" in b else (),
        )
