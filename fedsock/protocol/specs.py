"""Tensor specs: the ``tensors`` array of a weights message (protocol.md section 3.2).

A spec names one tensor's dtype and shape (and, in an Update, how its data is
encoded); the limits on tensors are checked here, on the message, before any
memory for the tensor data is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedsock import limits
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol.compression import FLOAT_DTYPES, Encoding
from fedsock.protocol.fields import require

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
            raise RemoteProtocolError(f"{what} must be a map", code=ErrorCode.BAD_MESSAGE)
        name = require(obj, "name", str, what)
        dtype = require(obj, "dtype", str, what)
        shape = require(obj, "shape", list, what)
        if len(name.encode()) > limits.MAX_TENSOR_NAME_BYTES:
            raise RemoteProtocolError(f"{what}: name too long", code=ErrorCode.LIMIT_EXCEEDED)
        if dtype not in DTYPES:
            raise RemoteProtocolError(f"{what}: unsupported dtype {dtype!r}", code=ErrorCode.BAD_MESSAGE)
        if len(shape) > limits.MAX_TENSOR_RANK:
            raise RemoteProtocolError(
                f"{what}: rank {len(shape)} exceeds {limits.MAX_TENSOR_RANK}",
                code=ErrorCode.LIMIT_EXCEEDED,
            )
        size = 1
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                raise RemoteProtocolError(f"{what}: bad dimension {dim!r}", code=ErrorCode.BAD_MESSAGE)
            size *= dim
            if size > limits.MAX_TENSOR_ELEMENTS:
                raise RemoteProtocolError(
                    f"{what}: {name!r} has more than {limits.MAX_TENSOR_ELEMENTS} elements",
                    code=ErrorCode.LIMIT_EXCEEDED,
                )
        enc = None
        if "enc" in obj:
            if dtype not in FLOAT_DTYPES:
                raise RemoteProtocolError(f"{what}: enc on a {dtype} tensor", code=ErrorCode.BAD_MESSAGE)
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
            code=ErrorCode.LIMIT_EXCEEDED,
        )
    specs = tuple(TensorSpec.from_wire(t) for t in raw)
    if not encoded and any(s.enc is not None for s in specs):
        raise RemoteProtocolError(f"{what}: only an Update may carry encoded tensors", code=ErrorCode.BAD_MESSAGE)
    total = sum(s.nbytes for s in specs)
    if total > limits.MAX_MODEL_BYTES:
        raise RemoteProtocolError(
            f"{what}: {total} bytes of weights exceed the limit of {limits.MAX_MODEL_BYTES}",
            code=ErrorCode.LIMIT_EXCEEDED,
        )
    return specs

