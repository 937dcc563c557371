"""The connection state machine: bytes in, events out; events in, bytes out.

No I/O happens here (model: h11). The caller feeds received bytes with
``receive_data`` and pulls events with ``next_event``; it turns its own
messages into bytes with ``send``. Which message may come when is decided by
one table, ``ALLOWED``; everything the peer gets wrong raises
``RemoteProtocolError`` and nothing else.

Conversation (W = worker, C = chief)::

    HELLO --W:Hello--> CHALLENGE --C:Challenge--> AUTH --W:Auth--> WELCOME
    WELCOME --C:Welcome(+chunks)--> ESTABLISHED
    If Hello's capabilities hold "status", Auth leads to STATUS instead of
    WELCOME: STATUS --C:Status--> CLOSED (a read-only query; nothing follows).
    ESTABLISHED: W may send Update(+chunks), Heartbeat, and the SecAgg*
                 messages of secure aggregation (SecAggMasked +chunks);
                 C may send Global(+chunks), Heartbeat, Done(+chunks), SecAgg*
    Error from either side, at any time, ends that side's sending; during
    the handshake it ends the conversation. Done ends the chief's sending.

A weights message (Welcome, Update, Global, Done) is followed by exactly the
chunks its tensor specs announce, in order (tensor by tensor, offset by
offset); the receiver gets the message, its ``Chunk`` events, then an
``EndOfMessage``. While a sender streams chunks it may send nothing else
except ``Error``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsock import limits
from fedsock.errors import ConnectionTruncated, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import frames
from fedsock.protocol.frames import Kind
from fedsock.protocol.messages import CLASSES as PLAIN_CLASSES
from fedsock.protocol.messages import WEIGHTS_KINDS as PLAIN_WEIGHTS_KINDS
from fedsock.protocol.messages import (
    Chunk,
    EndOfMessage,
    Error,
    Hello,
    Message,
    TensorSpec,
)
from fedsock.protocol.secagg import SECAGG_CLASSES, SecAggMessage
from fedsock.protocol.status import STATUS_CAPABILITY
from fedsock.protocol.tensors import iter_chunks


class Role(enum.Enum):
    """Which end of the conversation a ``Connection`` is."""

    CHIEF = "chief"
    WORKER = "worker"


class Phase(enum.Enum):
    """Where the conversation is."""

    HELLO = "hello"
    CHALLENGE = "challenge"
    AUTH = "auth"
    WELCOME = "welcome"
    ESTABLISHED = "established"
    STATUS = "status"
    CLOSED = "closed"


class NeedData(enum.Enum):
    """Sentinel: ``next_event`` needs more bytes."""

    NEED_DATA = "need_data"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


AnyMessage = Message | SecAggMessage
Event = AnyMessage | EndOfMessage | ConnectionClosed
CLASSES: dict[Kind, Callable[[dict[str, Any]], AnyMessage]] = {
    **PLAIN_CLASSES, **{c.kind: c.from_body for c in SECAGG_CLASSES}}
WEIGHTS_KINDS = PLAIN_WEIGHTS_KINDS | {Kind.SECAGG_MASKED}
_WORKER_SECAGG = (Kind.SECAGG_KEYS, Kind.SECAGG_SHARES, Kind.SECAGG_MASKED, Kind.SECAGG_REVEAL)
_CHIEF_SECAGG = (Kind.SECAGG_ROSTER, Kind.SECAGG_INBOX, Kind.SECAGG_UNMASK, Kind.SECAGG_ABORT)

#: (sender, phase) -> {kind: phase after it}. Error is allowed everywhere and
#: handled apart; Chunk is governed by the open stream, not by this table.
ALLOWED: dict[tuple[Role, Phase], dict[Kind, Phase]] = {
    (Role.WORKER, Phase.HELLO): {Kind.HELLO: Phase.CHALLENGE},
    (Role.CHIEF, Phase.CHALLENGE): {Kind.CHALLENGE: Phase.AUTH},
    (Role.WORKER, Phase.AUTH): {Kind.AUTH: Phase.WELCOME},
    (Role.CHIEF, Phase.WELCOME): {Kind.WELCOME: Phase.ESTABLISHED},
    (Role.CHIEF, Phase.STATUS): {Kind.STATUS: Phase.CLOSED},  # and the chief's sending ends
    (Role.WORKER, Phase.ESTABLISHED): {
        Kind.UPDATE: Phase.ESTABLISHED,
        Kind.HEARTBEAT: Phase.ESTABLISHED,
        **{k: Phase.ESTABLISHED for k in _WORKER_SECAGG},  # their order: fedsock.secagg's state machines
    },
    (Role.CHIEF, Phase.ESTABLISHED): {
        Kind.GLOBAL: Phase.ESTABLISHED,
        Kind.HEARTBEAT: Phase.ESTABLISHED,
        Kind.DONE: Phase.ESTABLISHED,  # and the chief's sending ends
        **{k: Phase.ESTABLISHED for k in _CHIEF_SECAGG},
    },
}


@dataclass
class _Stream:
    """Chunks still expected for one weights message."""

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
        self.offset += nbytes
        self._skip_empty()


@dataclass
class _Side:
    """What one sender may still do."""

    stream: _Stream | None = None
    finished: bool = False  # sent Error, or (chief) Done


@dataclass
class Connection:
    """One end of a fedsock conversation, without I/O.

    Args:
        role: which end this is.
        max_frame: largest frame body accepted from the peer.
    """

    role: Role
    max_frame: int = limits.MAX_FRAME_BYTES
    phase: Phase = Phase.HELLO
    _sides: dict[Role, _Side] = field(default_factory=lambda: {r: _Side() for r in Role})
    _buf: bytearray = field(default_factory=bytearray)
    _eof: bool = False
    _failed: RemoteProtocolError | None = None
    _header: tuple[Kind, int] | None = None
    #: Size (header + body) of the last frame decoded, for byte accounting.
    last_frame_bytes: int = 0
    #: The Hello asked for a Status instead of joining (capability "status").
    status_query: bool = False
    #: Data bytes of a chunk still to be placed by the caller (see ``direct_chunk``).
    _direct_left: int = 0

    @property
    def peer_role(self) -> Role:
        return Role.WORKER if self.role is Role.CHIEF else Role.CHIEF

    @property
    def they_finished(self) -> bool:
        """The peer has sent its last message (Error, or the chief's Done)."""
        return self._sides[self.peer_role].finished

    @property
    def we_finished(self) -> bool:
        return self._sides[self.role].finished

    # --- state table ------------------------------------------------------

    def _transition(self, sender: Role, msg: AnyMessage) -> None:
        """Apply ``msg`` sent by ``sender`` to the state, or raise ValueError."""
        side = self._sides[sender]
        kind = msg.kind
        if side.finished:
            raise ValueError(f"{kind.name} after the {sender.value} ended its side")
        if kind is Kind.ERROR:
            side.finished = True
            side.stream = None
            if self.phase is not Phase.ESTABLISHED:
                self.phase = Phase.CLOSED
            return
        if side.stream is not None:
            if kind is not Kind.CHUNK:
                raise ValueError(
                    f"{kind.name} while the chunks of {side.stream.of.name} are still due"
                )
            assert isinstance(msg, Chunk)
            why = side.stream.check(msg)
            if why:
                raise ValueError(why)
            side.stream.advance(len(msg.data))
            return
        if kind is Kind.CHUNK:
            raise ValueError("CHUNK outside a weights message")
        nxt = ALLOWED.get((sender, self.phase), {}).get(kind)
        if nxt is None:
            raise ValueError(f"{sender.value} may not send {kind.name} in phase {self.phase.value}")
        if isinstance(msg, Hello):
            self.status_query = STATUS_CAPABILITY in msg.capabilities
        elif kind is Kind.AUTH and self.status_query:
            nxt = Phase.STATUS  # the one branch of the table: a status query gets Status, not Welcome
        elif kind is Kind.STATUS:
            side.finished = True
        self.phase = nxt
        if kind in WEIGHTS_KINDS:
            specs: tuple[TensorSpec, ...] = msg.tensors  # type: ignore[union-attr]
            side.stream = _Stream(kind, [s.wire_nbytes for s in specs], finishes=kind is Kind.DONE)

    def _end_of_message(self, sender: Role) -> EndOfMessage | None:
        side = self._sides[sender]
        if side.stream is not None and side.stream.complete:
            of = side.stream.of
            side.finished = side.stream.finishes
            side.stream = None
            return EndOfMessage(of)
        return None

    # --- sending ----------------------------------------------------------

    def send(self, msg: AnyMessage) -> bytes:
        """Turn one of our messages into the bytes of its frame.

        Raises:
            LocalProtocolError: the message is not allowed now.
        """
        if self._failed is not None and not isinstance(msg, Error):
            raise LocalProtocolError("connection failed; only an Error and closing are left")
        try:
            self._transition(self.role, msg)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        self._end_of_message(self.role)
        if isinstance(msg, Chunk):
            data = msg.data
            body_prefix = _chunk_prefix(msg.tensor, msg.offset, len(data))
            return b"".join(
                (frames.encode_header(Kind.CHUNK, len(body_prefix) + len(data)), body_prefix, data)
            )
        body = frames.pack_body(msg.to_body())
        return frames.encode_header(msg.kind, len(body)) + body

    def send_parts(self, msg: AnyMessage) -> tuple[bytes | memoryview, ...]:
        """Like ``send``, but a Chunk's data is not copied: (header + envelope, data).

        Write the parts in order; the data view must stay unchanged until written.

        Raises:
            LocalProtocolError: the message is not allowed now.
        """
        if not isinstance(msg, Chunk):
            return (self.send(msg),)
        if self._failed is not None:
            raise LocalProtocolError("connection failed; only an Error and closing are left")
        try:
            self._transition(self.role, msg)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        self._end_of_message(self.role)
        data = msg.data
        body_prefix = _chunk_prefix(msg.tensor, msg.offset, len(data))
        head = frames.encode_header(Kind.CHUNK, len(body_prefix) + len(data)) + body_prefix
        return head, data

    def sending_weights(self) -> bool:
        """True while we owe chunks of a weights message."""
        return self._sides[self.role].stream is not None

    # --- receiving --------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed."""
        if data:
            if self._eof:
                raise LocalProtocolError("data after end of stream")
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next event from the peer, or ``NEED_DATA``.

        Raises:
            RemoteProtocolError: the peer broke the protocol; the connection
                is unusable afterwards (every later call raises it again).
        """
        if self._failed is not None:
            raise self._failed
        if self._direct_left:
            if not self._eof:
                raise LocalProtocolError("the data of a chunk taken with direct_chunk is still due")
            self._failed = ConnectionTruncated("connection closed in the middle of a frame")
            raise self._failed
        header = self._header
        if header is not None and not self._eof and len(self._buf) < frames.HEADER_BYTES + header[1]:
            # Mid-frame, the common case while a big chunk streams in: nothing to decode yet
            # (and no EndOfMessage can be pending: a header is read only after it).
            return NEED_DATA
        sender = self.peer_role
        eom = self._end_of_message(sender)
        if eom is not None:
            return eom
        try:
            return self._next_frame(sender)
        except RemoteProtocolError as exc:
            self._failed = exc
            raise
        except Exception as exc:  # noqa: BLE001 - the fuzzing invariant: only RemoteProtocolError
            self._failed = RemoteProtocolError(f"undecodable input: {exc!r}", code="bad_frame")
            raise self._failed from None

    # --- receiving chunk data in place (an optional fast path) ----------------

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
                return hb + _MAX_ENVELOPE - len(buf)
            if bytes(buf[:3]) != frames.MAGIC + bytes((frames.VERSION,)) or buf[3] != Kind.CHUNK:
                return None
            length = int.from_bytes(buf[4:hb], "big")
            if length > self.max_frame:
                return None
        else:
            kind, length = self._header
            if kind is not Kind.CHUNK:
                return None
        end = hb + min(_MAX_ENVELOPE, length)
        if len(buf) < end:
            return end - len(buf)
        parsed = _parse_chunk_envelope(buf, hb, end)
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

    def _next_frame(self, sender: Role) -> Event | NeedData:
        if self._header is None:
            if len(self._buf) < frames.HEADER_BYTES:
                return self._at_eof(partial=bool(self._buf))
            self._header = frames.decode_header(self._buf[: frames.HEADER_BYTES], self.max_frame)
        kind, length = self._header
        end = frames.HEADER_BYTES + length
        if len(self._buf) < end:
            return self._at_eof(partial=True)
        body = memoryview(self._buf)[frames.HEADER_BYTES : end]
        try:
            msg = CLASSES[kind](frames.unpack_body(body))
        finally:
            body.release()
        del self._buf[:end]
        self._header = None
        self.last_frame_bytes = end
        if isinstance(msg, Hello) and msg.version != frames.VERSION:
            raise RemoteProtocolError(
                f"peer speaks protocol version {msg.version}, this side speaks {frames.VERSION}",
                code="unsupported_version",
            )
        try:
            self._transition(sender, msg)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc), code="out_of_order") from None
        return msg

    def _at_eof(self, partial: bool) -> ConnectionClosed | NeedData:
        if not self._eof:
            return NEED_DATA
        if partial:
            raise ConnectionTruncated("connection closed in the middle of a frame")
        if self._sides[self.peer_role].stream is not None:
            raise ConnectionTruncated("connection closed in the middle of a weights message")
        return ConnectionClosed()


#: Longest chunk envelope ``_chunk_prefix`` writes: fixmap, "t" + uint64, "o" + uint64, "d" + bin32 header.
_MAX_ENVELOPE = 1 + 2 + 9 + 2 + 9 + 2 + 5
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def _parse_chunk_envelope(buf: bytearray, start: int, end: int) -> tuple[int, int, int, int] | None:
    """(tensor, offset, data length, envelope length) of a chunk body laid out as
    ``_chunk_prefix`` writes it, starting at ``buf[start]``; None for any other layout."""
    pos = start
    if buf[pos] != 0x83:
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


def _chunk_prefix(tensor: int, offset: int, length: int) -> bytes:
    """The msgpack bytes of ``{"t": tensor, "o": offset, "d": <bin length>}``
    up to (not including) the binary payload, so data can be sent unpacked."""
    head = frames.pack_body({"t": tensor, "o": offset})
    # head starts with fixmap(2) 0x82; rewrite as fixmap(3) and append key "d".
    return b"\x83" + head[1:] + b"\xa1d" + b"\xc6" + struct.pack(">I", length)


def message_bytes(msg: AnyMessage, arrays: Sequence[np.ndarray] = (), chunk_bytes: int = limits.CHUNK_BYTES) -> int:
    """Bytes on the wire of ``msg`` followed by the chunks of ``arrays``."""
    total = frames.HEADER_BYTES + len(frames.pack_body(msg.to_body()))
    for chunk in iter_chunks(arrays, chunk_bytes):
        total += frames.HEADER_BYTES + len(_chunk_prefix(chunk.tensor, chunk.offset, len(chunk.data)))
        total += len(chunk.data)
    return total


def make_error(exc: RemoteProtocolError) -> Error:
    """The Error message that answers a peer's protocol violation."""
    return Error(code=exc.code, message=str(exc))
