"""Property tests: whatever bytes arrive, a Connection yields valid events or
RemoteProtocolError, never another exception (the fuzzing invariant).

The invariant holds only because nothing in the Connection turns an unexpected
exception into a RemoteProtocolError: ``test_the_property_fails_on_a_planted_decoder_bug``
shows that the property finds a bug planted in a decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import Phase as HypothesisPhase
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
    Phase,
    Plan,
    Role,
    TensorAssembler,
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


# --- perturbed real bodies: every decoder, through a Connection in the right phase -------

def _real_messages() -> list:
    """(sender, phase the receiver is in, message) for every kind a peer can send."""
    from fedsock.protocol import (
        Peer,
        SecAggAbort,
        SecAggInbox,
        SecAggKeys,
        SecAggMasked,
        SecAggReveal,
        SecAggRoster,
        SecAggShares,
        SecAggUnmask,
        Status,
        TensorSpec,
        WorkerStatus,
    )
    from fedsock.protocol.compression import Encoding

    specs = specs_of([np.zeros((2, 3), np.float32), np.zeros(1, np.int64)])
    enc = (TensorSpec("a", "float32", (4,), Encoding("int8", 0.5, 0.0)),
           TensorSpec("b", "float32", (4,), Encoding("topk", k=2)), TensorSpec("c", "float16", (2,), Encoding("fp16")))
    u64 = (TensorSpec("m", "uint64", (2,)), TensorSpec("weight", "uint64", (1,)))
    key = bytes(32)
    W, C, E = Role.WORKER, Role.CHIEF, Phase.ESTABLISHED
    return [
        (W, Phase.HELLO, Hello("w-1", capabilities=("status",), instance=INSTANCE)),
        (W, Phase.AUTH, Auth(bytes(32), resume=bytes(32))),
        (W, E, Update(1, 5, specs, {"loss": 0.5})),
        (W, E, Update(2, 5, enc, {})),
        (W, E, Heartbeat()),
        (W, E, Error("shutdown", "bye")),
        (W, E, SecAggKeys(1, key, key)),
        (W, E, SecAggShares(1, 1, ((2, b"s" * 60), (3, b"t" * 60)))),
        (W, E, SecAggMasked(1, 1, u64)),
        (W, E, SecAggReveal(1, 1, ((1, b"x" * 66),), ((2, b"y" * 66),))),
        (C, Phase.CHALLENGE, Challenge(bytes(32))),
        (C, Phase.WELCOME, Welcome(3, 1, Plan(5, 2, 8, mu=0.1, dp_clip=1.0, dp_noise=0.5), specs, "{}", None,
                                   True, "topk:0.25", SECRET)),
        (C, Phase.STATUS, Status(1, 3, False, 1, 2, 9.5, "up:1", {"acc": 0.5},
                                 (WorkerStatus("w-1", 1, True, 0.5, 1, 10, 20),))),
        (C, E, Global(1, specs)),
        (C, E, Done(3, specs)),
        (C, E, SecAggRoster(1, 1, 1, 2, 2, 3, (Peer(1, key, key), Peer(2, key, key)))),
        (C, E, SecAggRoster(1, 1, 1, 2, 2, 3, (Peer(1, key, key), Peer(2, key, key)), ("val_examples", "val_loss"))),
        (C, E, SecAggInbox(1, 1, ((2, b"s" * 60),))),
        (C, E, SecAggUnmask(1, 1, (1, 2), (3,))),
        (C, E, SecAggAbort(1, 1, "too few")),
    ]


REAL = _real_messages()
LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
          | st.text(max_size=80) | st.binary(max_size=80))
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=8)


def perturb(data: st.DataObject, value, depth: int = 0):
    """A copy of a msgpack value with some entries deleted, replaced or perturbed further."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            action = data.draw(st.sampled_from(["keep", "keep", "perturb", "replace", "delete"]))
            if action == "keep":
                out[k] = v
            elif action == "perturb":
                out[k] = perturb(data, v, depth + 1)
            elif action == "replace":
                out[k] = data.draw(VALUES)
        if data.draw(st.booleans()):
            out[data.draw(st.text(max_size=8))] = data.draw(VALUES)
        return out
    if isinstance(value, list):
        items = [perturb(data, v, depth + 1) if data.draw(st.booleans()) else v for v in value]
        if data.draw(st.integers(0, 3)) == 0:
            items.append(data.draw(VALUES))
        return items
    return data.draw(st.sampled_from([value, value]) | VALUES)


def decode_perturbed(data: st.DataObject) -> None:
    """One perturbed body of a real message, framed and fed to a Connection in the
    phase where it is legal, with random trailing bytes: the fuzzing invariant."""
    from fedsock.protocol import frames

    sender, phase, msg = data.draw(st.sampled_from(REAL))
    body = perturb(data, msg.to_body())
    packed = frames.pack_body(body)
    receiver = Connection(Role.CHIEF if sender is Role.WORKER else Role.WORKER, phase=phase)
    if phase is Phase.STATUS:
        receiver.status_query = True
    receiver.receive_data(frames.encode_header(msg.kind, len(packed)) + packed + data.draw(st.binary(max_size=40)))
    receiver.receive_data(b"")
    try:
        for _ in range(100):
            ev = receiver.next_event()
            if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                break
            assert isinstance(ev, (*MESSAGE_TYPES, *(type(m) for _, _, m in REAL))), ev
    except RemoteProtocolError:
        pass


property_on_real_code = settings(max_examples=600, deadline=None)(given(st.data())(decode_perturbed))
property_with_planted_bug = settings(max_examples=600, deadline=None, database=None, derandomize=True,
                                     phases=[HypothesisPhase.generate])(
    given(st.data())(decode_perturbed))


def test_perturbed_bodies_yield_events_or_remote_errors():
    property_on_real_code()


def test_the_property_fails_on_a_planted_decoder_bug(monkeypatch):
    """With a bug planted in Hello's decoder (a key it does not know divides by zero),
    the property above finds an input on which it fails: nothing in the Connection turns
    the bug into a RemoteProtocolError."""
    real = Hello.from_body.__func__

    def planted(cls, body):
        if set(body) - {"version", "name", "capabilities", "instance"}:
            return 1 / 0
        return real(cls, body)

    monkeypatch.setattr(Hello, "from_body", classmethod(planted))
    with pytest.raises(ZeroDivisionError):
        property_with_planted_bug()


def drain_direct(conn: Connection, data: bytes, piece: int) -> None:
    """Receive ``data`` ``piece`` bytes at a time the way the chief's event loop does,
    placing chunk data in place with ``direct_chunk`` whenever it applies."""
    pos = 0
    assembler = None
    while True:
        d = conn.direct_chunk()
        if isinstance(d, tuple):
            assert assembler is not None
            dest = assembler.target(*d)
            got = conn.take_chunk_data(dest)
            while got < len(dest):
                b = data[pos : pos + min(piece, len(dest) - got)]
                pos += len(b)
                if not b:
                    conn.receive_data(b"")
                    break
                dest[got : got + len(b)] = b
                conn.chunk_data_received(len(b))
                got += len(b)
            continue
        ev = conn.next_event()
        if ev is NEED_DATA:
            b = data[pos : pos + (min(d, piece) if d is not None else piece)]
            pos += len(b)
            conn.receive_data(b)
            continue
        if isinstance(ev, ConnectionClosed):
            return
        assert isinstance(ev, MESSAGE_TYPES), ev
        if isinstance(ev, Update):
            assembler = TensorAssembler(ev.tensors)
        elif isinstance(ev, Chunk):
            assert assembler is not None
            assembler.add(ev)
        elif isinstance(ev, Hello):
            conn.send(Challenge(b"c" * 32))
        elif isinstance(ev, Auth):
            conn.send(Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=SECRET))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 64))
def test_mutated_frames_through_direct_chunk_reception(data, piece):
    """The in-place chunk path (``direct_chunk``) keeps the invariant too; a header that
    announces an empty Chunk body once crashed it with an IndexError."""
    buf = bytearray(STREAM)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(CHUNKS_START, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[pos] ^= data.draw(st.integers(1, 255))
        else:
            del buf[pos : pos + data.draw(st.integers(1, 16))]
    try:
        drain_direct(Connection(Role.CHIEF), bytes(buf), piece)
    except RemoteProtocolError:
        pass


def test_an_empty_chunk_body_on_the_direct_path_is_a_protocol_error():
    from fedsock.protocol import frames

    conn = Connection(Role.CHIEF)
    with pytest.raises(RemoteProtocolError) as ei:
        drain_direct(conn, STREAM[:CHUNKS_START] + frames.encode_header(10, 0), 64)
    assert ei.value.code == "bad_frame"
