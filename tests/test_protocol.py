"""The sans-I/O core, with two in-memory connections wired back to back."""

from __future__ import annotations

import numpy as np
import pytest

from fedsock import limits
from fedsock.errors import ConnectionTruncated, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Chunk,
    Connection,
    ConnectionClosed,
    Done,
    EndOfMessage,
    Error,
    Global,
    Heartbeat,
    Hello,
    Kind,
    Phase,
    Plan,
    Role,
    TensorAssembler,
    Update,
    Welcome,
    frames,
    iter_chunks,
    specs_of,
)

PLAN = Plan(rounds=3, sync_every=5, batch_size=8)
INSTANCE = bytes(range(16))
SECRET = bytes(range(32))


def pump(src_bytes: bytes, dst: Connection) -> list:
    """Feed bytes to ``dst`` and drain its events."""
    dst.receive_data(src_bytes)
    out = []
    while (ev := dst.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def send_weights(conn: Connection, msg, arrays, chunk_bytes=limits.CHUNK_BYTES) -> bytes:
    data = conn.send(msg)
    for c in iter_chunks(arrays, chunk_bytes):
        data += conn.send(c)
    return data


def handshake(weights=None):
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    assert pump(worker.send(Hello(name="w1", instance=INSTANCE)), chief) == [Hello(name="w1", instance=INSTANCE)]
    nonce = b"n" * 32
    assert pump(chief.send(Challenge(nonce)), worker) == [Challenge(nonce)]
    assert pump(worker.send(Auth(b"m" * 32)), chief) == [Auth(b"m" * 32)]
    arrays = weights if weights is not None else [np.arange(6, dtype=np.float32).reshape(2, 3)]
    specs = specs_of(arrays)
    welcome = Welcome(worker_id=1, round=0, plan=PLAN, tensors=specs, has_weights=True, reconnect_secret=SECRET)
    events = pump(send_weights(chief, welcome, arrays), worker)
    assert events[0] == welcome and events[-1] == EndOfMessage(Kind.WELCOME)
    assert worker.phase is Phase.ESTABLISHED and chief.phase is Phase.ESTABLISHED
    return worker, chief, arrays


def test_handshake_and_weights_roundtrip_across_chunks():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(37, 11)).astype(np.float32), np.zeros((0,), np.float32),
              rng.integers(0, 9, size=(5,)).astype(np.int64), rng.normal(size=3).astype(np.float16)]
    worker, chief, _ = handshake(arrays)
    upd = Update(round=1, num_examples=12, tensors=specs_of(arrays), metrics={"loss": 0.5})
    # 100-byte chunks force tensors to span several frames
    events = pump(send_weights(worker, upd, arrays, chunk_bytes=100), chief)
    assert events[0] == upd and events[-1] == EndOfMessage(Kind.UPDATE)
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert len(chunks) > len(arrays)
    asm = TensorAssembler(upd.tensors)
    for c in chunks:
        asm.add(c)
    for got, want in zip(asm.arrays(), arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_byte_at_a_time_delivery_gives_same_events():
    worker, chief, arrays = handshake()
    data = send_weights(chief, Global(round=1, tensors=specs_of(arrays)), arrays)
    events = []
    for i in range(len(data)):
        events += pump(data[i : i + 1], worker)
    assert isinstance(events[0], Global) and events[-1] == EndOfMessage(Kind.GLOBAL)


def test_update_before_auth_is_rejected():
    chief = Connection(Role.CHIEF)
    # a worker that skips the handshake: craft the frame by hand
    body = frames.pack_body(Update(1, 1, ()).to_body())
    with pytest.raises(RemoteProtocolError) as ei:
        pump(frames.encode_header(Kind.UPDATE, len(body)) + body, chief)
    assert ei.value.code == "out_of_order"
    # and the connection stays failed
    with pytest.raises(RemoteProtocolError):
        chief.next_event()


def test_local_misuse_is_a_local_error():
    worker = Connection(Role.WORKER)
    with pytest.raises(LocalProtocolError):
        worker.send(Update(1, 1, ()))
    with pytest.raises(LocalProtocolError):
        worker.send(Challenge(b"x" * 32))  # the chief's message


def test_chunk_out_of_order_is_rejected():
    worker, chief, arrays = handshake()
    specs = specs_of(arrays)
    data = worker.send(Update(1, 1, specs))
    body = frames.pack_body(Chunk(0, 4, b"\0" * 4).to_body())  # skips bytes 0..3
    frame = frames.encode_header(Kind.CHUNK, len(body)) + body
    pump(data, chief)
    with pytest.raises(RemoteProtocolError, match="offset 0"):
        pump(frame, chief)


def test_messages_interleaved_with_chunks_are_rejected():
    worker, chief, arrays = handshake()
    data = worker.send(Update(1, 1, specs_of(arrays)))
    hb = frames.encode_header(Kind.HEARTBEAT, 1) + b"\x80"
    pump(data, chief)
    with pytest.raises(RemoteProtocolError, match="chunks of UPDATE"):
        pump(hb, chief)


def test_oversized_frame_rejected_from_header_alone():
    chief = Connection(Role.CHIEF)
    header = frames.encode_header(Kind.HELLO, limits.MAX_FRAME_BYTES + 1)
    with pytest.raises(RemoteProtocolError) as ei:
        pump(header, chief)  # no body bytes at all were needed to decide
    assert ei.value.code == "frame_too_large"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"])
def test_other_protocols_rejected(data):
    with pytest.raises(RemoteProtocolError) as ei:
        pump(data, Connection(Role.CHIEF))
    assert ei.value.code == "bad_frame"


def test_wrong_version_rejected():
    body = frames.pack_body(Hello(name="x", instance=INSTANCE).to_body())
    header = frames.HEADER.pack(frames.MAGIC, 2, Kind.HELLO, len(body))
    with pytest.raises(RemoteProtocolError) as ei:
        pump(header + body, Connection(Role.CHIEF))
    assert ei.value.code == "unsupported_version"


def test_eof_mid_frame_and_clean_eof():
    worker, chief, arrays = handshake()
    data = worker.send(Heartbeat())
    chief.receive_data(data[:5])
    assert chief.next_event() is NEED_DATA
    chief.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        chief.next_event()
    w2, c2, _ = handshake()
    c2.receive_data(b"")
    assert isinstance(c2.next_event(), ConnectionClosed)


def test_eof_mid_weights_message_discards_update():
    worker, chief, arrays = handshake()
    arrays2 = [np.ones((100,), np.float32)]
    data = send_weights(worker, Update(1, 1, specs_of(arrays2)), arrays2, chunk_bytes=64)
    events = pump(data[: len(data) // 2], chief)
    assert not any(isinstance(e, EndOfMessage) for e in events)
    chief.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        while chief.next_event() is not NEED_DATA:
            pass


def test_done_ends_chief_side_after_its_chunks():
    worker, chief, arrays = handshake()
    events = pump(send_weights(chief, Done(round=3, tensors=specs_of(arrays)), arrays), worker)
    assert isinstance(events[0], Done) and events[-1] == EndOfMessage(Kind.DONE)
    assert worker.they_finished and chief.we_finished
    with pytest.raises(LocalProtocolError):
        chief.send(Heartbeat())
    # the worker may still say why it leaves
    assert pump(worker.send(Error("shutdown", "bye")), chief) == [Error("shutdown", "bye")]


def test_error_allowed_after_protocol_failure():
    chief = Connection(Role.CHIEF)
    with pytest.raises(RemoteProtocolError):
        pump(b"garbage!", chief)
    assert chief.send(Error("bad_frame", "nope")).startswith(frames.MAGIC)


def test_field_validation():
    chief = Connection(Role.CHIEF)
    body = frames.pack_body({"version": 1, "name": 5, "capabilities": []})
    with pytest.raises(RemoteProtocolError, match="name"):
        pump(frames.encode_header(Kind.HELLO, len(body)) + body, chief)
    chief = Connection(Role.CHIEF)
    body = frames.pack_body({"version": 1, "name": "x" * (limits.MAX_NAME_BYTES + 1), "capabilities": []})
    with pytest.raises(RemoteProtocolError) as ei:
        pump(frames.encode_header(Kind.HELLO, len(body)) + body, chief)
    assert ei.value.code == "limit_exceeded"


def test_tensor_limits_checked_before_allocation():
    worker, chief, _ = handshake()
    spec = {"name": "huge", "dtype": "float32", "shape": [2**20, 2**20]}
    body = frames.pack_body({"round": 1, "num_examples": 1, "metrics": {}, "tensors": [spec]})
    with pytest.raises(RemoteProtocolError) as ei:
        pump(frames.encode_header(Kind.UPDATE, len(body)) + body, chief)
    assert ei.value.code == "limit_exceeded"


def test_deep_nesting_rejected():
    import msgpack

    nested: object = []
    for _ in range(limits.MAX_NESTING + 2):
        nested = [nested]
    body = msgpack.packb({"version": 1, "name": "x", "capabilities": nested})
    with pytest.raises(RemoteProtocolError, match="nested"):
        pump(frames.encode_header(Kind.HELLO, len(body)) + body, Connection(Role.CHIEF))


def test_big_endian_arrays_travel_as_little_endian():
    a = np.arange(4, dtype=">f4")
    worker, chief, _ = handshake([a.astype("<f4")])
    events = pump(send_weights(worker, Update(1, 1, specs_of([a])), [a]), chief)
    asm = TensorAssembler(events[0].tensors)
    for c in events[1:-1]:
        asm.add(c)
    np.testing.assert_array_equal(asm.arrays()[0], a)


def receive_direct(conn: Connection, data: bytes, specs, piece: int = 7):
    """Receive a weights message the way the I/O loops do, with ``direct_chunk``:
    chunk data is placed straight into the arrays; everything else goes through
    ``next_event``. Bytes arrive ``piece`` at a time. Returns (arrays, events)."""
    asm = TensorAssembler(specs)
    pos, events = 0, []

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    while True:
        d = conn.direct_chunk()
        if isinstance(d, tuple):
            dest = asm.target(*d)
            got = conn.take_chunk_data(dest)
            while got < len(dest):
                b = read(min(piece, len(dest) - got))
                if not b:
                    conn.receive_data(b"")
                    break
                dest[got : got + len(b)] = b
                conn.chunk_data_received(len(b))
                got += len(b)
            continue
        ev = conn.next_event()
        if ev is NEED_DATA:
            conn.receive_data(read(min(d, piece) if d is not None else piece))
            continue
        events.append(ev)
        if isinstance(ev, Chunk):
            asm.add(ev)
        if isinstance(ev, EndOfMessage):
            return asm.arrays(), events


@pytest.mark.parametrize("piece", [1, 5, 64, 10_000])
def test_direct_chunk_reception_equals_decoding(piece):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(37, 11)).astype(np.float32), np.zeros((0,), np.float32),
              rng.integers(0, 9, size=(5,)).astype(np.int64), np.float32([7.0])]
    worker, chief, _ = handshake(arrays)
    specs = specs_of(arrays)
    data = send_weights(chief, Global(round=1, tensors=specs), arrays, chunk_bytes=100)
    got, events = receive_direct(worker, data, specs, piece)
    assert isinstance(events[0], Global) and events[-1] == EndOfMessage(Kind.GLOBAL)
    assert not any(isinstance(e, Chunk) for e in events)  # every chunk took the direct path
    for g, w in zip(got, arrays):
        np.testing.assert_array_equal(g, w)
    # the conversation goes on normally afterwards
    assert pump(worker.send(Heartbeat()), chief) == [Heartbeat()]


def test_direct_chunk_leaves_other_layouts_and_bad_chunks_to_next_event():
    from fedsock.protocol.chunking import chunk_prefix

    worker, chief, arrays = handshake()
    raw = arrays[0].tobytes()
    pump(worker.send(Update(1, 1, specs_of(arrays))), chief)
    # a standard msgpack body (bin8 data) is valid but not the canonical layout: decoded normally
    body = frames.pack_body(Chunk(0, 0, raw[:8]).to_body())
    chief.receive_data(frames.encode_header(Kind.CHUNK, len(body)) + body)
    assert chief.direct_chunk() is None
    assert chief.next_event() == Chunk(0, 0, raw[:8])
    # a canonical chunk at the wrong offset is not taken directly; next_event rejects it
    body = chunk_prefix(0, 12, 4) + raw[12:16]
    chief.receive_data(frames.encode_header(Kind.CHUNK, len(body)) + body)
    assert chief.direct_chunk() is None
    with pytest.raises(RemoteProtocolError, match="offset 8"):
        chief.next_event()


def test_eof_inside_direct_chunk_data_is_a_truncation():
    worker, chief, arrays = handshake()
    specs = specs_of(arrays)
    data = send_weights(worker, Update(1, 1, specs), arrays)
    chief.receive_data(data[:-5])
    assert isinstance(chief.next_event(), Update)
    d = chief.direct_chunk()
    assert isinstance(d, tuple)
    dest = TensorAssembler(specs).target(*d)
    assert chief.take_chunk_data(dest) == len(dest) - 5
    with pytest.raises(LocalProtocolError):
        chief.next_event()  # the caller still owes the data
    chief.receive_data(b"")
    with pytest.raises(ConnectionTruncated):
        chief.next_event()


# --- errors the h11 way --------------------------------------------------------


def test_a_kind_not_allowed_now_is_out_of_order_on_its_header_alone():
    for kind in (Kind.SECAGG_KEYS, Kind.UPDATE, Kind.CHUNK, Kind.WELCOME):
        chief = Connection(Role.CHIEF)
        chief.receive_data(frames.encode_header(kind, 0))  # an empty body would be bad_frame
        with pytest.raises(RemoteProtocolError) as ei:
            chief.next_event()
        assert ei.value.code == "out_of_order", kind


def test_received_misuse_is_remote_and_own_misuse_is_local():
    worker, chief, arrays = handshake()
    with pytest.raises(LocalProtocolError, match="may not send GLOBAL"):
        worker.send(Global(1, ()))
    rogue = Connection(Role.CHIEF, phase=Phase.ESTABLISHED)
    with pytest.raises(RemoteProtocolError, match="may not send UPDATE") as ei:
        pump(rogue.send(Global(1, ())).replace(bytes([Kind.GLOBAL]), bytes([Kind.UPDATE]), 1), worker)
    assert not isinstance(ei.value, LocalProtocolError) and ei.value.code == "out_of_order"


@pytest.mark.parametrize("where", ["top", "nested", "empty"])
def test_ext_types_are_bad_frame_at_any_depth(where):
    import msgpack

    ext = msgpack.ExtType(5, b"" if where == "empty" else b"zz")
    body = {"version": 1, "name": "x", "capabilities": [], "instance": bytes(16)}
    body["capabilities" if where != "top" else "extra"] = [ext] if where != "top" else ext
    packed = msgpack.packb(body)
    with pytest.raises(RemoteProtocolError, match="ext") as ei:
        pump(frames.encode_header(Kind.HELLO, len(packed)) + packed, Connection(Role.CHIEF))
    assert ei.value.code == "bad_frame"


def test_a_timestamp_ext_is_bad_frame_too():
    body = b"\x82\xa1a\x01\xa1b\xd6\xff\x00\x00\x00\x00"  # {"a": 1, "b": Timestamp(0)}
    with pytest.raises(RemoteProtocolError) as ei:
        pump(frames.encode_header(Kind.HELLO, len(body)) + body, Connection(Role.CHIEF))
    assert ei.value.code == "bad_frame"


def test_a_decoder_bug_propagates_instead_of_becoming_a_protocol_error(monkeypatch):
    def broken(cls, body):
        raise ZeroDivisionError("planted")

    data = Connection(Role.WORKER).send(Hello(name="w1", instance=INSTANCE))
    monkeypatch.setattr(Hello, "from_body", classmethod(broken))
    with pytest.raises(ZeroDivisionError, match="planted"):
        pump(data, Connection(Role.CHIEF))


def test_send_and_send_parts_write_the_same_bytes():
    worker, chief, arrays = handshake()
    twin_w, twin_c, _ = handshake()
    upd = Update(1, 1, specs_of(arrays))
    assert worker.send(upd) == b"".join(twin_w.send_parts(upd))
    for c in iter_chunks(arrays, 8):
        assert worker.send(c) == b"".join(bytes(p) for p in twin_w.send_parts(c))
    # and both refuse the same misuse
    for conn in (worker, twin_w):
        with pytest.raises(LocalProtocolError):
            conn.send_parts(Chunk(0, 0, b"x"))


def test_every_message_class_is_exported():
    import fedsock.protocol as protocol
    from fedsock.protocol.connection import CLASSES

    for cls in CLASSES.values():
        assert getattr(protocol, cls.__name__) is cls


def test_remote_protocol_error_codes_are_error_codes():
    from fedsock.errors import ErrorCode

    with pytest.raises(RemoteProtocolError) as ei:
        pump(b"garbage!", Connection(Role.CHIEF))
    assert ei.value.code is ErrorCode.BAD_FRAME


def _with_unknown_keys(obj):
    """``obj`` with an unknown key added to every map in it (at every depth), except ``metrics``
    maps, which are data (names to numbers), not structure."""
    if isinstance(obj, dict):
        inner = {k: v if k == "metrics" else _with_unknown_keys(v) for k, v in obj.items()}
        return {**inner, "x_later": [1, {"y": 2}]}
    if isinstance(obj, list):
        return [_with_unknown_keys(v) for v in obj]
    return obj


def test_every_decoder_ignores_unknown_keys_at_every_depth():
    """protocol.md 11: a later revision may add keys anywhere; this one reads past them."""
    from fedsock.protocol import (
        Ack,
        Encoding,
        EvalRequest,
        EvalResult,
        SecAggKeys,
        SecAggRoster,
        Status,
        TensorSpec,
        WorkerStatus,
    )
    from fedsock.protocol.connection import CLASSES
    from fedsock.protocol.secagg import Peer

    specs = (TensorSpec("k", "float32", (2, 2), enc=Encoding("int8", scale=0.5, offset=0.0)),
             TensorSpec("b", "int8", (2,)))
    timed = Plan(3, 5, 8, mu=0.1, heartbeat_interval=2.0, idle_timeout=5.0, round_timeout=9.0, min_workers=1)
    messages = [
        Hello(name="w1", capabilities=("status",), instance=INSTANCE, features=("dp_clip",)), Challenge(b"n" * 32),
        Auth(b"m" * 32, b"r" * 32),
        Welcome(1, 2, timed, specs_of([np.zeros(2, np.float32)]), has_weights=True, compress="int8",
                reconnect_secret=SECRET, requires=("dp_clip",)),
        Update(1, 10, specs, metrics={"loss": 0.5}), Global(1, specs_of([np.zeros(2)])), Done(3, (), report=2.5),
        EvalRequest(2, specs_of([np.zeros(2)])), EvalResult(2, {"val_loss": 0.5}, final=True),
        Heartbeat(), Error("bad_message", "why"), Chunk(0, 0, b"xy"),
        Status(1, 3, False, 1, 1, 2.5, None, {"loss": 0.5}, (WorkerStatus("w1", 1, True, 0.5, 1, 10, 20),)),
        SecAggKeys(1, bytes(32), bytes(32)), Ack(1, True, 2, 0),
        SecAggRoster(1, 1, 1, 2, 2, 2, (Peer(1, bytes(32), bytes(32)), Peer(2, bytes(32), bytes(32))),
                     ("val_examples", "val_loss")),
    ]
    for m in messages:
        body = _with_unknown_keys(frames.unpack_body(frames.pack_body(m.to_body())))
        assert CLASSES[m.kind].from_body(body) == m, type(m).__name__
    assert {type(m).__name__ for m in messages} >= {c.__name__ for c in CLASSES.values()} - {
        "SecAggShares", "SecAggInbox", "SecAggMasked", "SecAggUnmask", "SecAggReveal", "SecAggAbort"}


def test_a_hello_of_the_previous_release_is_refused_as_documented():
    """protocol.md 11: Hello's instance is required since this revision."""
    with pytest.raises(RemoteProtocolError) as info:
        Hello.from_body({"version": 1, "name": "w1", "capabilities": []})
    assert info.value.code == "bad_message" and str(info.value) == "Hello: missing field 'instance'"
    with pytest.raises(RemoteProtocolError) as info:
        Welcome.from_body({k: v for k, v in Welcome(1, 0, PLAN).to_body().items() if k != "reconnect_secret"})
    assert info.value.code == "bad_message"


def _established(capabilities=()):
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    pump(worker.send(Hello(name="w1", capabilities=capabilities, instance=INSTANCE)), chief)
    pump(chief.send(Challenge(b"n" * 32)), worker)
    pump(worker.send(Auth(b"m" * 32)), chief)
    pump(chief.send(Welcome(1, 0, PLAN, reconnect_secret=SECRET)), worker)
    return worker, chief


def test_ack_goes_only_to_a_worker_that_asked_for_it():
    from fedsock.protocol import ACK_CAPABILITY, Ack

    worker, chief = _established((ACK_CAPABILITY,))
    assert chief.acks and worker.acks
    ack = Ack(round=1, sampled=False, held=2, waiting=1)
    assert pump(chief.send(ack), worker) == [ack]
    worker, chief = _established()
    with pytest.raises(LocalProtocolError):
        chief.send(ack)  # the chief's own state machine refuses
    frame = frames.encode_header(Kind.ACK, len(frames.pack_body(ack.to_body()))) + frames.pack_body(ack.to_body())
    with pytest.raises(RemoteProtocolError) as info:
        pump(frame, worker)  # and a worker that did not ask refuses it on the header
    assert info.value.code == "out_of_order"


@pytest.mark.parametrize("body", [{"round": 1, "sampled": 1, "held": 0, "waiting": 0},
                                  {"round": -1, "sampled": True, "held": 0, "waiting": 0},
                                  {"round": 1, "sampled": True, "held": 0}])
def test_a_malformed_ack_is_bad_message(body):
    from fedsock.protocol import Ack

    with pytest.raises(RemoteProtocolError) as info:
        Ack.from_body(body)
    assert info.value.code == "bad_message"
