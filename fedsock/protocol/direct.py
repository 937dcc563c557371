"""Receiving a chunk's data in place: the optional fast path of ``Connection``.

``Connection`` inherits these methods; they read and update its receive state
(buffer, pending header, the peer's open ``ChunkStream``) directly, so taking a
chunk this way costs no more calls than ``next_event`` would. The chunk is
checked as ``next_event`` would check it; anything else falls back to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsock.errors import LocalProtocolError, RemoteProtocolError
from fedsock.protocol import frames
from fedsock.protocol.chunking import MAX_ENVELOPE, parse_chunk_envelope
from fedsock.protocol.frames import Kind
from fedsock.protocol.states import Role

if TYPE_CHECKING:
    from fedsock.protocol.connection import _Side

__all__ = ["DirectChunks"]


class DirectChunks:
    """The in-place chunk receive path; mixed into ``Connection``, which owns the state."""

    _sides: dict[Role, _Side]
    _buf: bytearray
    _eof: bool
    _failed: RemoteProtocolError | None
    _header: tuple[Kind, int] | None
    _direct_left: int
    last_frame_bytes: int

    if TYPE_CHECKING:
        @property
        def peer_role(self) -> Role: ...

        @property
        def max_frame_now(self) -> int: ...


    def direct_chunk(self) -> tuple[int, int, int] | int | None:
        """Start placing the next chunk's data straight into the caller's memory.

        Applies only to the chunk the peer's open weights message expects
        next, in the layout ``send_parts`` writes (a map ``t``, ``o``, ``d``
        with ``d`` a bin32); it is checked as ``next_event`` would check it.
        This saves the copies into the frame buffer, the decoded ``bytes`` and
        the ``Chunk``: the caller can read the data from its socket right
        where it belongs.

        Returns:
            ``(tensor, offset, length)``: the frame's header and envelope are
            consumed and the chunk counts as received; the caller must now
            place exactly ``length`` data bytes itself: first
            ``take_chunk_data`` (the part already buffered), then bytes it
            reads, each acknowledged with ``chunk_data_received``. Until all
            have been, only ``receive_data(b"")`` (end of stream) may be
            called; ``next_event`` then reports the truncation.
            An int: feed at least this many more bytes (``receive_data``),
            then ask again, and no more than needed to keep copies small.
            None: use ``next_event`` (no stream open, another kind of frame,
            or something ``next_event`` will report as an error).
        """
        if self._failed is not None or self._direct_left or self._eof:
            return None
        side = self._sides[self.peer_role]
        stream = side.stream
        if stream is None or side.finished or stream.complete:
            return None
        buf, hb = self._buf, frames.HEADER_BYTES
        if self._header is None:
            if len(buf) < hb:
                return hb + MAX_ENVELOPE - len(buf)
            if bytes(buf[:3]) != frames.MAGIC + bytes((frames.VERSION,)) or buf[3] != Kind.CHUNK:
                return None
            length = int.from_bytes(buf[4:hb], "big")
            if length > self.max_frame_now:
                return None
        else:
            kind, length = self._header
            if kind is not Kind.CHUNK:
                return None
        end = hb + min(MAX_ENVELOPE, length)
        if len(buf) < end:
            return end - len(buf)
        parsed = parse_chunk_envelope(buf, hb, end)
        if parsed is None:
            return None
        tensor, offset, nbytes, envelope = parsed
        if envelope + nbytes != length or stream.check_at(tensor, offset, nbytes) is not None:
            return None
        del buf[: hb + envelope]
        self._header = None
        self.last_frame_bytes = hb + length
        stream.advance(nbytes)
        self._direct_left = nbytes
        return tensor, offset, nbytes

    def take_chunk_data(self, dest: memoryview) -> int:
        """After ``direct_chunk``: copy the chunk data already buffered into ``dest``; returns its size."""
        n = min(len(dest), len(self._buf), self._direct_left)
        if n:
            with memoryview(self._buf) as view:
                dest[:n] = view[:n]
            del self._buf[:n]
            self._direct_left -= n
        return n

    def chunk_data_received(self, nbytes: int) -> None:
        """After ``direct_chunk``: the caller has placed ``nbytes`` more bytes of the chunk's data."""
        if nbytes > self._direct_left:
            raise LocalProtocolError(f"{nbytes} bytes placed where {self._direct_left} were due")
        self._direct_left -= nbytes
