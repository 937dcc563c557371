"""Tensor codec: numpy arrays <-> specs + raw little-endian chunks.

Tensors travel as their raw little-endian bytes, split into chunks of at most
``limits.CHUNK_BYTES`` so no frame exceeds the frame limit whatever the model
size. Sending is zero-copy for contiguous little-endian arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from fedsock import limits
from fedsock.errors import ErrorCode, FedsockError, RemoteProtocolError
from fedsock.protocol.messages import DTYPES, Chunk, TensorSpec


def spec_of(array: np.ndarray, name: str) -> TensorSpec:
    """Describe ``array`` as a wire tensor spec.

    Raises:
        FedsockError: the dtype cannot travel (e.g. object or complex arrays).
    """
    dtype = np.dtype(array.dtype).name
    if dtype not in DTYPES:
        raise FedsockError(f"tensor {name!r} has dtype {dtype}, which fedsock cannot send")
    return TensorSpec(name, dtype, tuple(int(d) for d in array.shape))


def specs_of(arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> tuple[TensorSpec, ...]:
    """Specs for a list of arrays; names default to ``t0, t1, ...``."""
    if names is None:
        names = [f"t{i}" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise FedsockError(f"{len(names)} names for {len(arrays)} tensors")
    return tuple(spec_of(np.asarray(a), n) for a, n in zip(arrays, names))


def raw_view(array: np.ndarray) -> memoryview:
    """The array's data as little-endian bytes; no copy if already contiguous LE."""
    a = np.asarray(array)
    le = a.dtype.newbyteorder("<")
    if a.dtype != le and a.dtype.byteorder not in ("|", "="):
        a = a.astype(le)
    # a flat uint8 view of the contiguous array: no copy, and safe for 0-size arrays
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).data


def iter_chunks(arrays: Sequence[np.ndarray], chunk_bytes: int = limits.CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield the chunks that carry ``arrays`` in order (empty tensors yield none)."""
    for index, array in enumerate(arrays):
        view = raw_view(array)
        for offset in range(0, len(view), chunk_bytes):
            yield Chunk(index, offset, view[offset : offset + chunk_bytes])


def check_signature(expected: Sequence[TensorSpec], got: Sequence[TensorSpec]) -> None:
    """Check that ``got`` has the same number, shapes and dtypes as ``expected``.

    Names are reported but not compared: Keras may number layers differently
    in different processes for the same architecture.

    Raises:
        RemoteProtocolError: with code ``signature_mismatch`` naming the first
            mismatching tensor.
    """
    if len(expected) != len(got):
        raise RemoteProtocolError(
            f"model has {len(expected)} tensors, update has {len(got)}", code=ErrorCode.SIGNATURE_MISMATCH
        )
    for i, (e, g) in enumerate(zip(expected, got)):
        if e.shape != g.shape or e.dtype != g.dtype:
            raise RemoteProtocolError(
                f"tensor {i} does not match the model: expected {e.describe()}, got {g.describe()}",
                code=ErrorCode.SIGNATURE_MISMATCH,
            )


class TensorAssembler:
    """Collects the chunks of one weights message into numpy arrays.

    Memory for every tensor is allocated once, up front, from the specs (which
    the protocol layer has already checked against the limits), or taken from
    ``buffer``: one writable buffer of at least the specs' total wire bytes,
    which the caller may reuse for the next message once it is done with the
    arrays. The memory is not cleared: the ``Connection`` guarantees that the
    chunks cover every byte before ``EndOfMessage``.

    Args:
        specs: the tensors of the weights message.
        buffer: optional reusable storage (e.g. a chief's staging slot).
    """

    def __init__(self, specs: Sequence[TensorSpec], buffer: np.ndarray | None = None) -> None:
        self.specs = tuple(specs)
        total = sum(s.wire_nbytes for s in self.specs)
        if buffer is None:
            flat = np.empty(total, np.uint8)
        else:
            flat = buffer.reshape(-1).view(np.uint8)
            if flat.size < total:
                raise ValueError(f"buffer of {flat.size} bytes for {total} bytes of tensors")
        self._buffers: list[np.ndarray] = []
        start = 0
        for s in self.specs:
            self._buffers.append(flat[start : start + s.wire_nbytes])
            start += s.wire_nbytes

    def add(self, chunk: Chunk) -> None:
        """Copy a chunk into place (the ``Connection`` has checked its bounds)."""
        buf = self._buffers[chunk.tensor]
        buf[chunk.offset : chunk.offset + len(chunk.data)] = np.frombuffer(chunk.data, np.uint8)

    def target(self, tensor: int, offset: int, nbytes: int) -> memoryview:
        """Where a chunk's data goes, to read it in place (the ``Connection`` has checked its bounds)."""
        return self._buffers[tensor][offset : offset + nbytes].data

    def arrays(self) -> list[np.ndarray]:
        """The assembled arrays (views on the internal buffers, native order).

        An encoded tensor (``spec.enc``) is returned as its raw bytes (uint8);
        ``compression.decode`` turns it into values.
        """
        out = []
        for spec, buf in zip(self.specs, self._buffers):
            if spec.enc is not None:
                out.append(buf)
                continue
            dt = np.dtype(spec.dtype).newbyteorder("<")
            out.append(buf.view(dt).reshape(spec.shape))
        return out


def first_nonfinite(arrays: Sequence[np.ndarray], specs: Sequence[TensorSpec]) -> str | None:
    """Name of the first float tensor holding NaN or Inf, or None."""
    for a, s in zip(arrays, specs):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return s.name
    return None
