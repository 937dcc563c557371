"""The chief's Session reading an update on the event loop, over a real TLS socket pair."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fedsock import tls
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    Hello,
    Plan,
    Role,
    Update,
    Welcome,
    iter_chunks,
    specs_of,
)
from fedsock.transport import aio_receive as receive_mod
from fedsock.transport.aio import Session


def handshaken() -> tuple[Connection, Connection]:
    """A worker and a chief Connection past the handshake, the chief waiting for an Update."""
    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    for sender, dst, msg in [(w, c, Hello(name="t", instance=bytes(16))),
                             (c, w, Challenge(b"n" * 32)), (w, c, Auth(b"m" * 32)),
                             (c, w, Welcome(1, 0, Plan(2, 5, 8), reconnect_secret=bytes(32)))]:
        dst.receive_data(sender.send(msg))
        while dst.next_event() is not NEED_DATA:
            pass
    return w, c


def tls_pair(tmp_path: Path) -> tuple[socket.socket, socket.socket]:
    """(chief side, non-blocking, handshake done; worker side, blocking)."""
    ident = tls.ensure_identity(tmp_path, ["127.0.0.1"])
    a, b = socket.socketpair()
    chief = tls.server_context(ident.cert_path, ident.key_path).wrap_socket(
        a, server_side=True, do_handshake_on_connect=False)
    worker = tls.client_context().wrap_socket(b, do_handshake_on_connect=False)
    t = threading.Thread(target=worker.do_handshake)
    t.start()
    chief.do_handshake()
    t.join()
    chief.setblocking(False)
    return chief, worker


@pytest.mark.parametrize("yield_bytes", [1 << 24, 1])
def test_an_update_is_read_into_place_yielding_every_yield_bytes(tmp_path, monkeypatch, yield_bytes):
    monkeypatch.setattr(receive_mod, "YIELD_BYTES", yield_bytes)
    arrays = [np.random.default_rng(1).standard_normal((60, 200)).astype(np.float32), np.arange(5.0)]
    specs = specs_of(arrays)
    chunks = list(iter_chunks(arrays, 8192))
    w, c = handshaken()
    chief_sock, worker_sock = tls_pair(tmp_path)
    worker_sock.sendall(w.send(Update(1, 10, specs, {})) + b"".join(w.send(ch) for ch in chunks))

    async def main() -> tuple[list[np.ndarray], int, int]:
        with concurrent.futures.ThreadPoolExecutor(1) as io:
            s = Session(chief_sock, "test", io)
            s.conn = c
            assert isinstance(await s.next_event(10), Update)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1

            t = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)  # the ticker is waiting for its turn
            buf = np.empty(sum(sp.wire_nbytes for sp in specs), np.uint8)
            got, nbytes = await s.read_weights(specs, 10, buf)
            seen = ticks
            t.cancel()
            return got, nbytes, seen

    got, nbytes, ticks = asyncio.run(main())
    for g, a in zip(got, arrays):
        np.testing.assert_array_equal(g, a)
    assert nbytes > sum(a.nbytes for a in arrays)  # the chunk frames, envelopes included
    # Everything had arrived: read in one go, or with a turn for others after every chunk.
    assert ticks == (0 if yield_bytes == 1 << 24 else len(chunks))
    chief_sock.close()
    worker_sock.close()


def test_cancelling_a_read_aborts_the_connection(tmp_path):
    arrays = [np.ones(300_000, np.float32)]
    specs = specs_of(arrays)
    w, c = handshaken()
    chief_sock, worker_sock = tls_pair(tmp_path)
    data = w.send(Update(1, 10, specs, {})) + b"".join(w.send(ch) for ch in iter_chunks(arrays))
    writer = threading.Thread(target=worker_sock.sendall, args=(data[: len(data) // 2],))
    writer.start()  # half an update, then silence

    async def main() -> Session:
        with concurrent.futures.ThreadPoolExecutor(1) as io:
            s = Session(chief_sock, "test", io)
            s.conn = c
            assert isinstance(await s.next_event(10), Update)
            read = asyncio.ensure_future(s.read_weights(specs, 30))
            await asyncio.sleep(0.2)
            assert not read.done()  # waiting for the rest, on the event loop
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            return s

    s = asyncio.run(main())
    writer.join(5)
    assert s._closed  # aborted: it was mid-message
    worker_sock.settimeout(5)
    assert worker_sock.recv(1) == b""  # the peer sees the connection go
    chief_sock.close()
    worker_sock.close()


def test_a_non_direct_chunk_waits_for_room_in_the_frame_budget(tmp_path):
    from fedsock.chief.framebudget import FrameBudget
    from fedsock.protocol import Kind, frames

    arrays = [np.arange(300_000, dtype=np.float32)]  # one chunk of 1.2 MB
    specs = specs_of(arrays)
    w, c = handshaken()
    chief_sock, worker_sock = tls_pair(tmp_path)
    (chunk,) = list(iter_chunks(arrays, 2 << 20))
    head = w.send(Update(1, 10, specs, {}))
    # a valid chunk in another key order than the one direct_chunk reads in place: buffered whole
    body = frames.pack_body({"o": chunk.offset, "t": chunk.tensor, "d": bytes(chunk.data)})
    writer = threading.Thread(target=worker_sock.sendall,
                              args=(head + frames.encode_header(Kind.CHUNK, len(body)) + body,))
    writer.start()

    async def main() -> tuple[list[np.ndarray], int, int]:
        budget = FrameBudget(limit=2 << 20, per_address=2 << 20)
        with concurrent.futures.ThreadPoolExecutor(1) as io:
            s = Session(chief_sock, "peer:1", io)
            s.conn, s.frames = c, budget
            assert isinstance(await s.next_event(10), Update)
            await budget.take("peer", 1 << 20, 0.0)  # another connection of that address holds 1 MiB
            read = asyncio.ensure_future(s.read_weights(specs, 10))
            await asyncio.sleep(0.3)
            assert not read.done() and budget.counts.total == 1 << 20  # waiting for room, unread
            budget.give("peer", 1 << 20)
            got, _ = await read
            return got, budget.peak, budget.counts.total

    got, peak, left = asyncio.run(main())
    writer.join(5)
    np.testing.assert_array_equal(got[0], arrays[0])
    assert peak == len(body) and left == 0  # the frame's room was taken, then given back
    chief_sock.close()
    worker_sock.close()
