"""The secure-aggregation messages (protocol.md section 8).

One secure round, per attempt (W = worker, C = chief)::

    W: SecAggKeys      two fresh X25519 public keys (share key, mask key)
    C: SecAggRoster    the attempt, threshold and the keys of the worker's neighbours
    W: SecAggShares    Shamir shares of its mask key and self-mask seed, sealed to each neighbour
    C: SecAggInbox     the sealed shares addressed to this worker
    W: SecAggMasked    its masked, fixed-point update (uint64 tensors, then chunks)
    C: SecAggUnmask    who sent masked updates (survivors) and who dropped out
    W: SecAggReveal    self-mask shares of survivors, mask-key shares of the dropped
    C: Global          as in a plain round
    C: SecAggAbort     at any point: too few workers left, or some misbehaved (they are
                       left out of the round); start again with SecAggKeys

Only the shape of each message is checked here; whether it fits the attempt
is the business of ``fedsock.secagg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from fedsock import limits
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol.fields import nonneg, require
from fedsock.protocol.frames import Kind
from fedsock.protocol.messages import TensorSpec, specs_from_wire, specs_to_wire


def _key(b: dict[str, Any], name: str, what: str) -> bytes:
    key: bytes = require(b, name, bytes, what)
    if len(key) != limits.SECAGG_PUBLIC_KEY_BYTES:
        raise RemoteProtocolError(f"{what}: {name} must be {limits.SECAGG_PUBLIC_KEY_BYTES} bytes",
                                  code=ErrorCode.BAD_MESSAGE)
    return key


def _ids(b: dict[str, Any], name: str, what: str) -> tuple[int, ...]:
    raw = require(b, name, list, what)
    if len(raw) > limits.MAX_WORKERS:
        raise RemoteProtocolError(f"{what}: more than {limits.MAX_WORKERS} ids", code=ErrorCode.LIMIT_EXCEEDED)
    ids = []
    for x in raw:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < 2**63:
            raise RemoteProtocolError(f"{what}: {name} must hold worker ids >= 1", code=ErrorCode.BAD_MESSAGE)
        ids.append(x)
    if len(set(ids)) != len(ids):
        raise RemoteProtocolError(f"{what}: {name} repeats an id", code=ErrorCode.BAD_MESSAGE)
    return tuple(ids)


def _pairs(b: dict[str, Any], name: str, what: str, max_bytes: int) -> tuple[tuple[int, bytes], ...]:
    """A list of [worker id, bytes] pairs (ids distinct)."""
    raw = require(b, name, list, what)
    if len(raw) > limits.MAX_WORKERS:
        raise RemoteProtocolError(f"{what}: more than {limits.MAX_WORKERS} entries", code=ErrorCode.LIMIT_EXCEEDED)
    out = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], int) or not isinstance(item[1], bytes)):
            raise RemoteProtocolError(f"{what}: {name} entries must be [id, bytes]", code=ErrorCode.BAD_MESSAGE)
        if not 0 < item[0] < 2**63 or len(item[1]) > max_bytes:
            raise RemoteProtocolError(f"{what}: bad {name} entry", code=ErrorCode.BAD_MESSAGE)
        out.append((item[0], item[1]))
    if len({i for i, _ in out}) != len(out):
        raise RemoteProtocolError(f"{what}: {name} repeats an id", code=ErrorCode.BAD_MESSAGE)
    return tuple(out)


def _attempt(b: dict[str, Any], what: str) -> tuple[int, int]:
    return (nonneg(require(b, "round", int, what), "round", what),
            nonneg(require(b, "attempt", int, what), "attempt", what))


@dataclass(frozen=True)
class SecAggKeys:
    """W -> C: fresh public keys for this round's secure aggregation (its "ready")."""

    kind: ClassVar[Kind] = Kind.SECAGG_KEYS
    round: int
    share_key: bytes
    mask_key: bytes

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "share_key": self.share_key, "mask_key": self.mask_key}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggKeys:
        w = "SecAggKeys"
        return cls(nonneg(require(b, "round", int, w), "round", w), _key(b, "share_key", w), _key(b, "mask_key", w))


@dataclass(frozen=True)
class Peer:
    """One roster entry: a worker id and its two public keys."""

    id: int
    share_key: bytes
    mask_key: bytes


@dataclass(frozen=True)
class SecAggRoster:
    """C -> W: the attempt's parameters and the keys of the receiver and its neighbours.

    ``threshold``: shares that rebuild a secret; ``min_survivors``: fewest
    masked updates the chief will unmask; ``workers``: workers in the attempt
    (for the fixed-point range); ``peers``: the receiver's neighbourhood,
    itself included; ``metrics``: the metric names whose weighted sums ride
    in the masked vector (``fedsock.secagg.metrics``; absent on the wire
    when empty).
    """

    kind: ClassVar[Kind] = Kind.SECAGG_ROSTER
    round: int
    attempt: int
    you: int
    threshold: int
    min_survivors: int
    workers: int
    peers: tuple[Peer, ...]
    metrics: tuple[str, ...] = ()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "round": self.round, "attempt": self.attempt, "you": self.you, "threshold": self.threshold,
            "min_survivors": self.min_survivors, "workers": self.workers,
            "peers": [[p.id, p.share_key, p.mask_key] for p in self.peers]}
        if self.metrics:
            body["metrics"] = list(self.metrics)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggRoster:
        w = "SecAggRoster"
        round_, attempt = _attempt(b, w)
        raw = require(b, "peers", list, w)
        if len(raw) > limits.MAX_WORKERS:
            raise RemoteProtocolError(f"{w}: more than {limits.MAX_WORKERS} peers", code=ErrorCode.LIMIT_EXCEEDED)
        peers = []
        for item in raw:
            if not isinstance(item, list) or len(item) != 3:
                raise RemoteProtocolError(f"{w}: peers entries must be [id, share_key, mask_key]",
                                          code=ErrorCode.BAD_MESSAGE)
            entry = {"id": item[0], "share_key": item[1], "mask_key": item[2]}
            pid = require(entry, "id", int, w)
            if not 0 < pid < 2**63:
                raise RemoteProtocolError(f"{w}: peer id out of range", code=ErrorCode.BAD_MESSAGE)
            peers.append(Peer(pid, _key(entry, "share_key", w), _key(entry, "mask_key", w)))
        if len({p.id for p in peers}) != len(peers):
            raise RemoteProtocolError(f"{w}: peers repeat an id", code=ErrorCode.BAD_MESSAGE)
        you = require(b, "you", int, w)
        threshold = require(b, "threshold", int, w)
        min_survivors = require(b, "min_survivors", int, w)
        workers = require(b, "workers", int, w)
        if not len(peers) <= workers <= limits.MAX_WORKERS:
            raise RemoteProtocolError(f"{w}: {workers} workers but {len(peers)} peers", code=ErrorCode.BAD_MESSAGE)
        if you not in {p.id for p in peers}:
            raise RemoteProtocolError(f"{w}: the receiver is not among the peers", code=ErrorCode.BAD_MESSAGE)
        if not 2 <= threshold <= len(peers) or not threshold <= min_survivors <= limits.MAX_WORKERS:
            raise RemoteProtocolError(f"{w}: threshold {threshold} / min_survivors {min_survivors} out of range "
                                      f"for {len(peers)} peers", code=ErrorCode.BAD_MESSAGE)
        metrics = _metric_names(b, w) if "metrics" in b else ()
        return cls(round_, attempt, you, threshold, min_survivors, workers, tuple(peers), metrics)


def _metric_names(b: dict[str, Any], what: str) -> tuple[str, ...]:
    """SecAggRoster's ``metrics``: at most SECAGG_MAX_METRICS distinct names of 1..SECAGG_METRIC_NAME_BYTES bytes."""
    raw = require(b, "metrics", list, what)
    if len(raw) > limits.SECAGG_MAX_METRICS:
        raise RemoteProtocolError(f"{what}: more than {limits.SECAGG_MAX_METRICS} metrics",
                                  code=ErrorCode.LIMIT_EXCEEDED)
    if not all(isinstance(m, str) and m for m in raw):
        raise RemoteProtocolError(f"{what}: metrics must be non-empty strings", code=ErrorCode.BAD_MESSAGE)
    if any(len(m.encode()) > limits.SECAGG_METRIC_NAME_BYTES for m in raw):
        raise RemoteProtocolError(f"{what}: a metric name is longer than {limits.SECAGG_METRIC_NAME_BYTES} bytes",
                                  code=ErrorCode.LIMIT_EXCEEDED)
    if len(set(raw)) != len(raw):
        raise RemoteProtocolError(f"{what}: metrics repeat a name", code=ErrorCode.BAD_MESSAGE)
    return tuple(raw)


_Sealed = TypeVar("_Sealed", bound="_SealedShares")


@dataclass(frozen=True)
class _SealedShares:
    """Sealed shares with a worker id each: ((id, ciphertext), ...)."""

    round: int
    attempt: int
    shares: tuple[tuple[int, bytes], ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "attempt": self.attempt, "shares": [[i, c] for i, c in self.shares]}

    @classmethod
    def from_body(cls: type[_Sealed], b: dict[str, Any]) -> _Sealed:
        return cls(*_attempt(b, cls.__name__), _pairs(b, "shares", cls.__name__, limits.SECAGG_MAX_SEALED_BYTES))


@dataclass(frozen=True)
class SecAggShares(_SealedShares):
    """W -> C: sealed shares, one per neighbour: ((to, ciphertext), ...)."""

    kind: ClassVar[Kind] = Kind.SECAGG_SHARES


@dataclass(frozen=True)
class SecAggInbox(_SealedShares):
    """C -> W: the sealed shares addressed to the receiver: ((from, ciphertext), ...)."""

    kind: ClassVar[Kind] = Kind.SECAGG_INBOX


@dataclass(frozen=True)
class SecAggMasked:
    """W -> C: the masked update, uint64 tensors (the model's shapes, then [1], then [3 x the roster's
    metrics] if it named any). Followed by chunks.

    ``excluded``: neighbours this worker left out of its masks because their
    key did not agree or their sealed shares did not open (absent on the
    wire when empty). The chief then drops them and starts the attempt over.
    """

    kind: ClassVar[Kind] = Kind.SECAGG_MASKED
    round: int
    attempt: int
    tensors: tuple[TensorSpec, ...]
    excluded: tuple[int, ...] = ()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"round": self.round, "attempt": self.attempt, "tensors": specs_to_wire(self.tensors)}
        if self.excluded:
            body["excluded"] = list(self.excluded)
        return body

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggMasked:
        w = "SecAggMasked"
        specs = specs_from_wire(b, w)
        if any(s.dtype != "uint64" for s in specs):
            raise RemoteProtocolError(f"{w}: masked tensors must be uint64", code=ErrorCode.BAD_MESSAGE)
        excluded = _ids(b, "excluded", w) if "excluded" in b else ()
        return cls(*_attempt(b, w), specs, excluded)


@dataclass(frozen=True)
class SecAggUnmask:
    """C -> W: the workers whose masked updates are in the sum, and those that dropped out."""

    kind: ClassVar[Kind] = Kind.SECAGG_UNMASK
    round: int
    attempt: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "attempt": self.attempt, "survivors": list(self.survivors),
                "dropped": list(self.dropped)}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggUnmask:
        w = "SecAggUnmask"
        survivors, dropped = _ids(b, "survivors", w), _ids(b, "dropped", w)
        if set(survivors) & set(dropped):
            raise RemoteProtocolError(f"{w}: a worker is both a survivor and dropped", code=ErrorCode.BAD_MESSAGE)
        return cls(*_attempt(b, w), survivors, dropped)


@dataclass(frozen=True)
class SecAggReveal:
    """W -> C: shares of survivors' self-mask seeds and of dropped workers' mask keys."""

    kind: ClassVar[Kind] = Kind.SECAGG_REVEAL
    round: int
    attempt: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "attempt": self.attempt,
                "seed_shares": [[i, s] for i, s in self.seed_shares],
                "key_shares": [[i, s] for i, s in self.key_shares]}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggReveal:
        w = "SecAggReveal"
        return cls(*_attempt(b, w), _pairs(b, "seed_shares", w, limits.SECAGG_MAX_SHARE_BYTES),
                   _pairs(b, "key_shares", w, limits.SECAGG_MAX_SHARE_BYTES))


@dataclass(frozen=True)
class SecAggAbort:
    """C -> W: this attempt failed (too few workers left); send fresh SecAggKeys to try again."""

    kind: ClassVar[Kind] = Kind.SECAGG_ABORT
    round: int
    attempt: int
    reason: str

    def to_body(self) -> dict[str, Any]:
        return {"round": self.round, "attempt": self.attempt, "reason": self.reason}

    @classmethod
    def from_body(cls, b: dict[str, Any]) -> SecAggAbort:
        w = "SecAggAbort"
        return cls(*_attempt(b, w), require(b, "reason", str, w))


SECAGG_CLASSES = (SecAggKeys, SecAggRoster, SecAggShares, SecAggInbox, SecAggMasked, SecAggUnmask,
                  SecAggReveal, SecAggAbort)
SecAggMessage = (SecAggKeys | SecAggRoster | SecAggShares | SecAggInbox | SecAggMasked | SecAggUnmask
                 | SecAggReveal | SecAggAbort)
