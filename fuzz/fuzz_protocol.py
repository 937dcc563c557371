"""Coverage-guided fuzzing of the frame decoder and the Connection state machine (atheris).

    python fuzz/fuzz_protocol.py fuzz/corpus -max_total_time=600     # or: make fuzz FUZZ_SECONDS=600

The invariant under test: whatever bytes arrive, in whatever pieces, a
``Connection`` yields valid events or raises ``RemoteProtocolError``; any
other exception is a crash. The peer is emulated like a real one (the chief
answers Hello and Auth; the worker says Hello and answers Challenge), so the
fuzzer reaches the established phase and weights messages; with the flag
bit 1 set, chunk data is received in place (``direct_chunk``). The corpus holds
real frames (``fuzz/make_corpus.py``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["fedsock", "msgpack"]):
    from fedsock.errors import RemoteProtocolError
    from fedsock.protocol import (
        NEED_DATA,
        Auth,
        Challenge,
        Connection,
        ConnectionClosed,
        Hello,
        Plan,
        Role,
        TensorAssembler,
        Welcome,
    )
    from fedsock.protocol.messages import Chunk, Done, Global, Update

WELCOME = Welcome(1, 0, Plan(3, 1, 1), tensors=(), has_weights=False, reconnect_secret=bytes(32))


def run(data: bytes) -> None:
    """One input: a flags byte (bit 0: the receiver is the chief; bit 1: chunk data is
    placed in place with ``direct_chunk``, as the chief's event loop does), a piece size
    byte, then the stream."""
    if len(data) < 2:
        return
    role = Role.CHIEF if data[0] & 1 else Role.WORKER
    direct = bool(data[0] & 2)
    piece = 1 + data[1]
    stream = data[2:]
    conn = Connection(role)
    if role is Role.WORKER:
        conn.send(Hello(name="fuzz", instance=bytes(16)))
    assembler: TensorAssembler | None = None
    pos = 0
    try:
        while True:
            d = conn.direct_chunk() if direct else None
            if isinstance(d, tuple):
                dest = memoryview(bytearray(d[2]))
                placed = conn.take_chunk_data(dest)
                rest = stream[pos : pos + d[2] - placed]
                pos += len(rest)
                dest[placed : placed + len(rest)] = rest
                conn.chunk_data_received(len(rest))
                if placed + len(rest) < d[2]:
                    conn.receive_data(b"")
                continue
            ev = conn.next_event()
            if ev is NEED_DATA:
                feed = stream[pos : pos + (min(d, piece) if isinstance(d, int) else piece)]
                pos += len(feed)
                conn.receive_data(feed)  # b"" once the stream is exhausted: the peer closed
                continue
            if isinstance(ev, ConnectionClosed):
                break
            if isinstance(ev, Hello):
                conn.send(Challenge(b"c" * 32))
            elif isinstance(ev, Auth):
                conn.send(WELCOME)
            elif isinstance(ev, Challenge):
                conn.send(Auth(b"a" * 32))
            elif isinstance(ev, (Update, Global, Done, Welcome)):
                assembler = TensorAssembler(ev.tensors) if sum(s.nbytes for s in ev.tensors) < 1 << 20 else None
            elif isinstance(ev, Chunk) and assembler is not None:
                assembler.add(ev)
    except RemoteProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
