"""Coverage-guided fuzzing of the frame decoder and the Connection state machine (atheris).

    python fuzz/fuzz_protocol.py fuzz/corpus -max_total_time=600     # or: make fuzz SECONDS=600

The invariant under test: whatever bytes arrive, in whatever pieces, a
``Connection`` yields valid events or raises ``RemoteProtocolError``; any
other exception is a crash. The peer is emulated like a real one (the chief
answers Hello and Auth; the worker says Hello and answers Challenge), so the
fuzzer reaches the established phase and weights messages. The corpus holds
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
    """One input: a role byte, a piece size byte, then the stream."""
    if len(data) < 2:
        return
    role = Role.CHIEF if data[0] & 1 else Role.WORKER
    piece = 1 + data[1]
    stream = data[2:]
    conn = Connection(role)
    if role is Role.WORKER:
        conn.send(Hello(name="fuzz", instance=bytes(16)))
    assembler: TensorAssembler | None = None
    try:
        for i in range(0, len(stream) + 1, piece):
            conn.receive_data(stream[i : i + piece] if i < len(stream) else b"")
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
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
            if isinstance(ev, ConnectionClosed):
                break
    except RemoteProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
