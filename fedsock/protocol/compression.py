"""Update compression, sans-I/O: how a tensor of an ``Update`` may be encoded on the wire.

The chief chooses a mode (``Welcome.compress``); a worker then sends each
floating-point tensor of its updates as the **delta** from the global weights
it holds (those of round ``Update.round - 1``), encoded as the tensor spec's
``enc`` says:

- ``fp16``: the delta as little-endian float16 (relative error <= 2**-11 per
  element for |delta| in float16's normal range, absolute <= 2**-25 below it).
- ``int8``: ``delta ~= offset + scale * q`` with ``q`` int8 in [-127, 127],
  ``scale``/``offset`` per tensor (float64 on the wire); error <= scale / 2.
- ``topk``: the ``k`` largest-magnitude entries: k uint32 indices (ascending)
  then k float32 values; every other entry is 0. The worker keeps what it did
  not send (error feedback) and adds it to its next delta.

A tensor without ``enc`` carries plain weights, as without compression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsock.errors import ConfigError, ErrorCode, RemoteProtocolError

MODES = ("none", "fp16", "int8", "topk")
#: The R of ``topk:R`` (protocol.md 3.2): a plain decimal, no sign, no "inf", "nan" or "_".
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


@dataclass(frozen=True)
class Compression:
    """A compression mode: ``none``, ``fp16``, ``int8`` or ``topk`` with ``ratio`` in (0, 1]."""

    mode: str = "none"
    ratio: float = 1.0

    def __str__(self) -> str:
        return f"topk:{self.ratio:g}" if self.mode == "topk" else self.mode


def parse_compression(text: str) -> Compression:
    """``"none" | "fp16" | "int8" | "topk:R"`` -> ``Compression``.

    Raises:
        ConfigError: anything else (R must be in (0, 1]).
    """
    mode, _, arg = text.strip().partition(":")
    if mode == "topk":
        ratio = float(arg) if _DECIMAL.fullmatch(arg) else -1.0
        if not 0 < ratio <= 1:
            raise ConfigError(f"bad compression {text!r}: use topk:R with R in (0, 1], e.g. topk:0.01")
        return Compression("topk", ratio)
    if mode not in MODES or arg:
        raise ConfigError(f"bad compression {text!r}: use none, fp16, int8 or topk:R")
    return Compression(mode)


@dataclass(frozen=True)
class Encoding:
    """How one tensor's delta is encoded (the ``enc`` map of a tensor spec)."""

    kind: str
    scale: float = 0.0
    offset: float = 0.0
    k: int = 0

    def to_wire(self) -> dict[str, Any]:
        if self.kind == "int8":
            return {"kind": "int8", "scale": float(self.scale), "offset": float(self.offset)}
        if self.kind == "topk":
            return {"kind": "topk", "k": self.k}
        return {"kind": self.kind}

    @classmethod
    def from_wire(cls, obj: Any, size: int) -> Encoding:
        """Validate a peer's ``enc`` map for a tensor of ``size`` elements."""
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise RemoteProtocolError("tensor spec: enc must be a map with a string kind", code=ErrorCode.BAD_MESSAGE)
        kind = obj["kind"]
        if kind == "fp16":
            return cls("fp16")
        if kind == "int8":
            scale, offset = obj.get("scale"), obj.get("offset")
            if not all(isinstance(v, float) and math.isfinite(v) for v in (scale, offset)) or scale < 0:  # type: ignore[operator]
                raise RemoteProtocolError("tensor spec: int8 needs finite float scale >= 0 and offset",
                                          code=ErrorCode.BAD_MESSAGE)
            return cls("int8", scale=scale, offset=offset)  # type: ignore[arg-type]
        if kind == "topk":
            k = obj.get("k")
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= size:
                raise RemoteProtocolError(f"tensor spec: topk k must be an int in 0..{size}",
                                          code=ErrorCode.BAD_MESSAGE)
            return cls("topk", k=k)
        raise RemoteProtocolError(f"tensor spec: unknown encoding {kind!r}", code=ErrorCode.BAD_MESSAGE)

    def wire_nbytes(self, size: int) -> int:
        """Bytes of the encoded data of a tensor of ``size`` elements."""
        if self.kind == "fp16":
            return 2 * size
        if self.kind == "int8":
            return size
        return 8 * self.k  # topk: uint32 indices + float32 values


def encode(delta: np.ndarray, comp: Compression) -> tuple[Encoding | None, np.ndarray]:
    """Encode one tensor's delta; returns its ``enc`` and the array to send.

    Returns ``(None, delta)`` if ``comp`` is ``none`` or the delta is not
    floating point; fp16 falls back to that too if a value would overflow.
    """
    d = np.asarray(delta)
    if comp.mode == "none" or d.dtype.name not in FLOAT_DTYPES:
        return None, d
    flat = d.reshape(-1)
    if comp.mode == "fp16":
        if flat.size and float(np.max(np.abs(flat))) >= 65504:
            return None, d
        return Encoding("fp16"), flat.astype("<f2")
    if comp.mode == "int8":
        lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 0.0)
        offset, scale = (lo + hi) / 2, (hi - lo) / 254
        q = np.zeros(flat.size, np.int8) if scale == 0 else \
            np.clip(np.rint((flat - offset) / scale), -127, 127).astype(np.int8)
        return Encoding("int8", scale=scale, offset=offset), q
    k = min(flat.size, max(1, math.ceil(comp.ratio * flat.size))) if flat.size else 0
    idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:] if k < flat.size else np.arange(flat.size)
    idx = np.sort(idx).astype("<u4")
    payload = np.empty(2 * k, "<u4")
    payload[:k] = idx
    payload[k:] = flat[idx].astype("<f4").view("<u4")
    return Encoding("topk", k=k), payload.view(np.uint8)


def decode(data: np.ndarray | bytes | memoryview, enc: Encoding, size: int) -> np.ndarray:
    """The float32 delta (flat, ``size`` elements) that ``data`` encodes.

    Raises:
        RemoteProtocolError: bad length, non-finite values, or topk indices
            out of range or not strictly ascending.
    """
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if raw.size != enc.wire_nbytes(size):
        raise RemoteProtocolError(f"encoded tensor of {raw.size} bytes, expected {enc.wire_nbytes(size)}",
                                  code=ErrorCode.BAD_MESSAGE)
    if enc.kind == "fp16":
        out = raw.view("<f2").astype(np.float32)
    elif enc.kind == "int8":
        out = raw.view(np.int8).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # a peer's huge scale overflows: refused below, unwarned
            out *= np.float32(enc.scale)
            out += np.float32(enc.offset)
    else:
        k = enc.k
        words = raw.view("<u4")
        idx, vals = words[:k], words[k:].view("<f4")
        if k and (int(idx[-1]) >= size or (k > 1 and not bool(np.all(idx[1:] > idx[:-1])))):
            raise RemoteProtocolError("topk indices out of range or not ascending", code=ErrorCode.BAD_MESSAGE)
        out = np.zeros(size, np.float32)
        out[idx] = vals
    if not np.isfinite(out).all():
        raise RemoteProtocolError("encoded tensor holds NaN or Inf", code=ErrorCode.INVALID_WEIGHTS)
    return out


class DecodedUpdate(Sequence[np.ndarray]):
    """An update's full weights, decoded one tensor at a time on access.

    ``base`` are the global weights the deltas apply to. Encoded tensors
    become ``base + delta`` in the base's dtype when read; plain ones are
    returned as they are. Memory: one decoded tensor at a time.
    """

    def __init__(self, payloads: Sequence[np.ndarray], encodings: Sequence[Encoding | None],
                 base: Sequence[np.ndarray]) -> None:
        self._payloads, self._encodings, self._base = list(payloads), list(encodings), list(base)
        self.shapes = [np.shape(b) for b in self._base]

    def __len__(self) -> int:
        return len(self._payloads)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        enc, base = self._encodings[i], np.asarray(self._base[i])
        if enc is None:
            return self._payloads[i]
        delta = decode(self._payloads[i], enc, base.size).reshape(base.shape)
        delta += base
        return delta.astype(base.dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def check(self) -> None:
        """Decode every encoded tensor once, to reject a bad one before any is folded.

        Raises:
            RemoteProtocolError: as ``decode``.
        """
        for p, enc, b in zip(self._payloads, self._encodings, self._base):
            if enc is not None:
                decode(p, enc, int(np.size(b)))
