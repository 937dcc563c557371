"""Property tests: whatever bytes arrive, a Connection yields valid events or
RemoteProtocolError, never another exception (the fuzzing invariant)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsock.errors import RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    ConnectionClosed,
    EndOfMessage,
    Error,
    Global,
    Heartbeat,
    Hello,
    Plan,
    Role,
    Update,
    Welcome,
    iter_chunks,
    specs_of,
)
from fedsock.protocol.messages import Chunk, Done

INSTANCE = bytes(16)
SECRET = bytes(32)
MESSAGE_TYPES = (Hello, Challenge, Auth, Welcome, Update, Global, Done, Heartbeat, Error, Chunk, EndOfMessage)


def drain(conn: Connection, data: bytes, eof: bool = True) -> list:
    """Feed ``data`` to ``conn`` while answering like a real peer would
    (the chief answers Hello with Challenge and Auth with Welcome; the worker
    says Hello first and answers Challenge with Auth). Returns the events, or
    raises RemoteProtocolError."""
    if conn.role is Role.WORKER:
        conn.send(Hello(name="fuzz", instance=INSTANCE))
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    events = []
    for _ in range(10_000):
        ev = conn.next_event()
        if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
            break
        assert isinstance(ev, MESSAGE_TYPES), ev
        events.append(ev)
        if isinstance(ev, Hello):
            conn.send(Challenge(b"c" * 32))
        elif isinstance(ev, Auth):
            conn.send(Welcome(1, 0, Plan(1, 1, 1), tensors=(), has_weights=False, reconnect_secret=SECRET))
        elif isinstance(ev, Challenge):
            conn.send(Auth(b"a" * 32))
    return events


def _deliver(data: bytes, dst: Connection) -> None:
    dst.receive_data(data)
    while dst.next_event() is not NEED_DATA:
        pass


def real_worker_stream() -> bytes:
    """The worker -> chief bytes of a real conversation: Hello, Auth, Update + chunks, Heartbeat."""
    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, np.float32)]
    out = b""

    def worker_sends(msg) -> None:
        nonlocal out
        data = w.send(msg)
        out += data
        _deliver(data, c)

    worker_sends(Hello(name="fuzz", instance=INSTANCE))
    _deliver(c.send(Challenge(b"c" * 32)), w)
    worker_sends(Auth(b"a" * 32))
    _deliver(c.send(Welcome(1, 0, Plan(1, 1, 1), tensors=(), has_weights=False, reconnect_secret=SECRET)), w)
    worker_sends(Update(1, 3, specs_of(arrays), {"loss": 1.0}))
    global CHUNKS_START
    CHUNKS_START = len(out)
    for ch in iter_chunks(arrays, 16):
        worker_sends(ch)
    worker_sends(Heartbeat())
    return out


CHUNKS_START = 0
STREAM = real_worker_stream()


def test_real_stream_is_valid():
    events = drain(Connection(Role.CHIEF), STREAM)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["Hello", "Auth", "Update"] and kinds[-2:] == ["EndOfMessage", "Heartbeat"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from(list(Role)))
def test_random_bytes(data, role):
    try:
        drain(Connection(role), data)
    except RemoteProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_real_frames(data):
    buf = bytearray(STREAM)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 16))]
        else:
            del buf[pos:]
    try:
        drain(Connection(Role.CHIEF), bytes(buf))
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(6)), min_size=1, max_size=12))
def test_valid_frames_in_random_order(order):
    """Well-formed frames of every kind, in any order: events or RemoteProtocolError."""
    frames_ = [_frame(i) for i in order]
    try:
        drain(Connection(Role.CHIEF), b"".join(frames_))
    except RemoteProtocolError:
        pass


def _frame(i: int) -> bytes:
    from fedsock.protocol import frames

    msgs = [
        Hello(name="x", instance=INSTANCE), Auth(b"a" * 32), Update(1, 1, specs_of([np.zeros(2, np.float32)])),
        Heartbeat(), Error("internal", "x"), Global(1, ()),
    ]
    m = msgs[i]
    body = frames.pack_body(m.to_body())
    return frames.encode_header(m.kind, len(body)) + body


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2**32 - 1))
def test_chunk_frames_with_random_bounds(data, offset):
    """A chunk with random offset and length right after a real Update header:
    accepted only if it is exactly the next expected piece of tensor 0."""
    from fedsock.protocol import frames

    body = frames.pack_body(Chunk(0, offset, data).to_body())
    stream = STREAM[:CHUNKS_START] + frames.encode_header(10, len(body)) + body
    valid = offset == 0 and len(data) <= 12 * 4
    try:
        events = drain(Connection(Role.CHIEF), stream, eof=False)
    except RemoteProtocolError:
        assert not valid
    else:
        assert valid and isinstance(events[-1], Chunk) and events[-1].data == data
