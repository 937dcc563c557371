"""The chunks of a weights message: which one is due next, and the envelope fedsock writes.

A weights message is followed by exactly the chunks its tensor specs announce,
tensor by tensor, offset by offset (protocol.md section 4). ``ChunkStream``
tracks that for one message. fedsock writes every Chunk body in one canonical
layout (``chunk_prefix``: the map ``t``, ``o``, ``d`` with ``d`` a bin32), so the
data can follow a hand-built envelope without a copy; ``parse_chunk_envelope``
recognises that layout on the receiving side.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedsock import limits
from fedsock.protocol import frames
from fedsock.protocol.frames import Kind
from fedsock.protocol.messages import Chunk
from fedsock.protocol.tensors import iter_chunks


class Framed(Protocol):
    """Anything with a message body (every message class)."""

    def to_body(self) -> dict[str, Any]: ...


@dataclass
class ChunkStream:
    """Chunks still expected for one weights message of kind ``of``: ``sizes`` are
    the tensors' wire sizes; ``tensor``/``offset`` where the next chunk starts."""

    of: Kind
    sizes: list[int]
    finishes: bool = False  # the sender's side ends with this message (Done)
    tensor: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self.tensor < len(self.sizes) and self.offset >= self.sizes[self.tensor]:
            self.tensor += 1
            self.offset = 0

    @property
    def complete(self) -> bool:
        """Every byte of every tensor has arrived."""
        return self.tensor >= len(self.sizes)

    def check(self, chunk: Chunk) -> str | None:
        """Why ``chunk`` is not the next one expected, or None if it is."""
        return self.check_at(chunk.tensor, chunk.offset, len(chunk.data))

    def check_at(self, tensor: int, offset: int, nbytes: int) -> str | None:
        """Why a chunk of ``nbytes`` at (``tensor``, ``offset``) is not the next one expected."""
        if self.complete:
            return "chunk after the last tensor"
        if tensor != self.tensor or offset != self.offset:
            return (
                f"expected chunk of tensor {self.tensor} at offset {self.offset}, "
                f"got tensor {tensor} at offset {offset}"
            )
        remaining = self.sizes[self.tensor] - self.offset
        if not 0 < nbytes <= remaining:
            return f"chunk of {nbytes} bytes where 1..{remaining} were expected"
        return None

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more bytes of the current tensor (checked by ``check_at``)."""
        self.offset += nbytes
        self._skip_empty()


#: Longest chunk envelope ``chunk_prefix`` writes: fixmap, "t" + uint64, "o" + uint64, "d" + bin32 header.
MAX_ENVELOPE = 1 + 2 + 9 + 2 + 9 + 2 + 5
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def parse_chunk_envelope(buf: bytearray, start: int, end: int) -> tuple[int, int, int, int] | None:
    """(tensor, offset, data length, envelope length) of a chunk body laid out as
    ``chunk_prefix`` writes it, starting at ``buf[start]``; None for any other layout."""
    pos = start
    if pos >= end or buf[pos] != 0x83:  # a frame announcing an empty body has no envelope at all
        return None
    pos += 1
    values = []
    for key in (b"\xa1t", b"\xa1o"):
        if pos + 3 > end or bytes(buf[pos : pos + 2]) != key:
            return None
        pos += 2
        b = buf[pos]
        if b <= 0x7F:
            values.append(b)
            pos += 1
            continue
        size = _UINT_SIZES.get(b)
        if size is None or pos + 1 + size > end:
            return None
        values.append(int.from_bytes(buf[pos + 1 : pos + 1 + size], "big"))
        pos += 1 + size
    if pos + 7 > end or bytes(buf[pos : pos + 3]) != b"\xa1d\xc6":
        return None
    nbytes = int.from_bytes(buf[pos + 3 : pos + 7], "big")
    pos += 7
    return values[0], values[1], nbytes, pos - start


def chunk_prefix(tensor: int, offset: int, length: int) -> bytes:
    """The msgpack bytes of ``{"t": tensor, "o": offset, "d": <bin length>}``
    up to (not including) the binary payload, so data can be sent unpacked."""
    head = frames.pack_body({"t": tensor, "o": offset})
    # head starts with fixmap(2) 0x82; rewrite as fixmap(3) and append key "d".
    return b"\x83" + head[1:] + b"\xa1d" + b"\xc6" + struct.pack(">I", length)


def message_bytes(msg: Framed, arrays: Sequence[np.ndarray] = (), chunk_bytes: int = limits.CHUNK_BYTES) -> int:
    """Bytes on the wire of ``msg`` followed by the chunks of ``arrays``."""
    total = frames.HEADER_BYTES + len(frames.pack_body(msg.to_body()))
    for chunk in iter_chunks(arrays, chunk_bytes):
        total += frames.HEADER_BYTES + len(chunk_prefix(chunk.tensor, chunk.offset, len(chunk.data)))
        total += len(chunk.data)
    return total

