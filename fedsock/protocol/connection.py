"""The connection state machine: bytes in, events out; events in, bytes out.

No I/O happens here (model: h11). The caller feeds received bytes with
``receive_data``, pulls events with ``next_event`` and turns its own messages
into bytes with ``send``. Which message may come when is decided by one table,
``states.ALLOWED`` (the conversation is drawn in ``fedsock.protocol.states``);
a weights message is followed by exactly the chunks its specs announce, then
the receiver gets an ``EndOfMessage``. Before the chief has received Auth it
accepts frames of at most ``limits.MAX_PREAUTH_FRAME_BYTES``.

Errors are split by blame, as in h11: the state machine raises
``LocalProtocolError`` for a message that is not allowed, which propagates as
it is for our own messages and is re-raised as ``RemoteProtocolError`` for
received ones. Decoding raises ``RemoteProtocolError`` through its own checks
only; nothing here catches other exceptions, so a decoder bug propagates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fedsock import limits
from fedsock.errors import ConnectionTruncated, ErrorCode, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import frames
from fedsock.protocol.chunking import ChunkStream, chunk_prefix, message_bytes
from fedsock.protocol.direct import DirectChunks
from fedsock.protocol.frames import Kind
from fedsock.protocol.handshake import Auth, Challenge, Hello
from fedsock.protocol.messages import ACK_CAPABILITY, EVAL_CAPABILITY, Chunk, EndOfMessage, Error, Message, TensorSpec
from fedsock.protocol.messages import CLASSES as PLAIN_CLASSES
from fedsock.protocol.secagg import SECAGG_CLASSES, SecAggMessage
from fedsock.protocol.states import ALLOWED, EVAL_KINDS, PREAUTH_PHASES, WEIGHTS_KINDS, Phase, Role
from fedsock.protocol.status import STATUS_CAPABILITY

__all__ = [
    "ALLOWED", "CLASSES", "NEED_DATA", "WEIGHTS_KINDS", "AnyMessage", "Connection", "ConnectionClosed",
    "Event", "NeedData", "Phase", "Role", "make_error", "message_bytes",
]


class NeedData(enum.Enum):
    """Sentinel: ``next_event`` needs more bytes."""

    NEED_DATA = "need_data"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


AnyMessage = Message | SecAggMessage
Event = AnyMessage | EndOfMessage | ConnectionClosed
#: The class of each kind (``from_body`` decodes a body).
CLASSES: dict[Kind, type[AnyMessage]] = {**PLAIN_CLASSES, **{c.kind: c for c in SECAGG_CLASSES}}
#: Messages whose fields are checked on send as on receive (small, once per connection):
#: sending one that its receiver would refuse is a ``LocalProtocolError``.
_CHECKED_ON_SEND = (Hello, Challenge, Auth)


@dataclass
class _Side:
    """What one sender may still do."""

    stream: ChunkStream | None = None
    finished: bool = False  # sent Error, or (chief) Done


@dataclass
class Connection(DirectChunks):
    """One end of a fedsock conversation, without I/O.

    Receiving a chunk's data straight into the caller's memory (``direct_chunk``,
    ``take_chunk_data``, ``chunk_data_received``) is in ``fedsock.protocol.direct``.

    Args:
        role: which end this is.
        max_frame: largest frame body accepted from the peer (a chief accepts at
            most ``limits.MAX_PREAUTH_FRAME_BYTES`` until it has received Auth).
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
    #: The Hello asked for Ack messages (capability "ack"); without it an Ack is out of order.
    acks: bool = False
    #: The Hello had capability "eval": EvalRequest and EvalResult may be sent (else out of order).
    evals: bool = False
    #: The features the Hello says the worker implements (None: it did not say).
    features: tuple[str, ...] | None = None
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

    @property
    def max_frame_now(self) -> int:
        """The largest frame body accepted from the peer at this point of the conversation."""
        if self.role is Role.CHIEF and self.phase in PREAUTH_PHASES:
            return min(self.max_frame, limits.MAX_PREAUTH_FRAME_BYTES)
        return self.max_frame

    @property
    def buffering(self) -> int:
        """Body bytes announced by the frame being received (its header decoded, its body not
        yet complete); 0 between frames and for a chunk taken with ``direct_chunk``."""
        return self._header[1] if self._header is not None else 0

    # --- state table ------------------------------------------------------

    def _check_kind(self, sender: Role, kind: Kind) -> Phase | None:
        """The phase after a ``kind`` message from ``sender`` (None: no change).

        Depends on the kind alone, so a receiver checks it on the frame header.

        Raises:
            LocalProtocolError: ``sender`` may not send ``kind`` now.
        """
        side = self._sides[sender]
        if side.finished:
            raise LocalProtocolError(f"{kind.name} after the {sender.value} ended its side")
        if kind is Kind.ERROR:
            return None
        if side.stream is not None:
            if kind is not Kind.CHUNK:
                raise LocalProtocolError(f"{kind.name} while the chunks of {side.stream.of.name} are still due")
            return None
        if kind is Kind.CHUNK:
            raise LocalProtocolError("CHUNK outside a weights message")
        nxt = ALLOWED.get((sender, self.phase), {}).get(kind)
        if (kind is Kind.ACK and not self.acks) or (kind in EVAL_KINDS and not self.evals):
            nxt = None  # a worker that did not ask for the kind may not know it
        if nxt is None:
            raise LocalProtocolError(f"{sender.value} may not send {kind.name} in phase {self.phase.value}")
        return nxt

    def _transition(self, sender: Role, msg: AnyMessage) -> None:
        """Apply ``msg`` sent by ``sender`` to the state.

        Raises:
            LocalProtocolError: the message is not allowed now.
        """
        kind = msg.kind
        nxt = self._check_kind(sender, kind)
        side = self._sides[sender]
        if kind is Kind.ERROR:
            side.finished = True
            side.stream = None
            if self.phase is not Phase.ESTABLISHED:
                self.phase = Phase.CLOSED
            return
        if side.stream is not None:
            assert isinstance(msg, Chunk)
            why = side.stream.check(msg)
            if why:
                raise LocalProtocolError(why)
            side.stream.advance(len(msg.data))
            return
        assert nxt is not None
        if isinstance(msg, Hello):
            self.status_query = STATUS_CAPABILITY in msg.capabilities
            self.acks = ACK_CAPABILITY in msg.capabilities
            self.evals = EVAL_CAPABILITY in msg.capabilities
            self.features = msg.features
        elif kind is Kind.AUTH and self.status_query:
            nxt = Phase.STATUS  # the one branch of the table: a status query gets Status, not Welcome
        elif kind is Kind.STATUS:
            side.finished = True
        self.phase = nxt
        if kind in WEIGHTS_KINDS:
            specs: tuple[TensorSpec, ...] = msg.tensors  # type: ignore[union-attr]
            side.stream = ChunkStream(kind, [s.wire_nbytes for s in specs], finishes=kind is Kind.DONE)

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
            LocalProtocolError: the message is not allowed now, or (Hello,
                Challenge, Auth) its receiver would refuse its fields.
        """
        return b"".join(self.send_parts(msg))

    def send_parts(self, msg: AnyMessage) -> tuple[bytes | memoryview, ...]:
        """Like ``send``, but a Chunk's data is not copied: (header + envelope, data).

        Write the parts in order; the data view must stay unchanged until written.

        Raises:
            LocalProtocolError: as ``send``.
        """
        if self._failed is not None and not isinstance(msg, Error):
            raise LocalProtocolError("connection failed; only an Error and closing are left")
        if isinstance(msg, Chunk):
            self._transition(self.role, msg)
            self._end_of_message(self.role)
            data = msg.data
            head = chunk_prefix(msg.tensor, msg.offset, len(data))
            return frames.encode_header(Kind.CHUNK, len(head) + len(data)) + head, data
        body = msg.to_body()
        if isinstance(msg, _CHECKED_ON_SEND):
            try:
                type(msg).from_body(body)
            except RemoteProtocolError as exc:
                raise LocalProtocolError(f"cannot send this {type(msg).__name__}: {exc}") from None
        self._transition(self.role, msg)
        self._end_of_message(self.role)
        packed = frames.pack_body(body)
        return (frames.encode_header(msg.kind, len(packed)) + packed,)

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
            LocalProtocolError: called while the data of a ``direct_chunk`` is due.
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

    def _next_frame(self, sender: Role) -> Event | NeedData:
        if self._header is None:
            if len(self._buf) < frames.HEADER_BYTES:
                return self._at_eof(partial=bool(self._buf))
            kind, length = frames.decode_header(self._buf[: frames.HEADER_BYTES], self.max_frame_now)
            try:
                self._check_kind(sender, kind)  # before the body is buffered, let alone decoded
            except LocalProtocolError as exc:
                raise RemoteProtocolError(str(exc), code=ErrorCode.OUT_OF_ORDER) from None
            if self.role is Role.CHIEF and kind is not Kind.CHUNK and length > limits.MAX_WORKER_MESSAGE_BYTES:
                raise RemoteProtocolError(
                    f"a {kind.name} frame of {length} bytes; a worker's messages other than chunks are at "
                    f"most {limits.MAX_WORKER_MESSAGE_BYTES} bytes", code=ErrorCode.FRAME_TOO_LARGE)
            self._header = kind, length
        kind, length = self._header
        end = frames.HEADER_BYTES + length
        if len(self._buf) < end:
            return self._at_eof(partial=True)
        body = memoryview(self._buf)[frames.HEADER_BYTES : end]
        try:
            msg = CLASSES[kind].from_body(frames.unpack_body(body))
        finally:
            body.release()
        del self._buf[:end]
        self._header = None
        self.last_frame_bytes = end
        if isinstance(msg, Hello) and msg.version != frames.VERSION:
            raise RemoteProtocolError(
                f"peer speaks protocol version {msg.version}, this side speaks {frames.VERSION}",
                code=ErrorCode.UNSUPPORTED_VERSION,
            )
        try:
            self._transition(sender, msg)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(str(exc), code=ErrorCode.OUT_OF_ORDER) from None
        return msg

    def _at_eof(self, partial: bool) -> ConnectionClosed | NeedData:
        if not self._eof:
            return NEED_DATA
        if partial:
            raise ConnectionTruncated("connection closed in the middle of a frame")
        if self._sides[self.peer_role].stream is not None:
            raise ConnectionTruncated("connection closed in the middle of a weights message")
        return ConnectionClosed()


def make_error(exc: RemoteProtocolError) -> Error:
    """The Error message that answers a peer's protocol violation."""
    return Error(code=exc.code.value, message=str(exc))
