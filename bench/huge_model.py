"""Benchmark: one round of a model larger than 4 GiB through a fedsock chief.

    python bench/huge_model.py [--gib 4.5] [--tensors 3] [--workers 1]

The chief is the real ``fedsock.Chief`` (own process, TLS 1.3 on 127.0.0.1,
checkpoints and final model written as usual) with a float32 accumulator
(``weighted_mean(np.float32)``: a float64 sum would double its memory). A
model of ``--tensors`` float32 tensors totalling ``--gib`` GiB travels in 4 MiB
chunks: the frame limit bounds each frame, not the model.

Each worker is a streaming protocol worker (the sans-I/O ``Connection`` over a
TLS socket): it sends its weights from a memory-mapped file and checks the
averages it receives chunk by chunk without keeping them, so the chief, not
the workers, is what is measured on one machine. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, PeakRss, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, workers: int) -> None:
    import logging

    import numpy as np

    import fedsock
    from fedsock.aggregation import weighted_mean

    logging.basicConfig(level=logging.WARNING)
    chief = fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=1, min_workers=workers,
                          round_timeout=3600, idle_timeout=600, done_grace=2.0, keep_checkpoints=1)
    chief.controller.reducer = weighted_mean(np.float32)
    chief.run()


def run_worker(addr: str, token: str, name: str, weights_file: str, sizes: list[int], value: float) -> None:
    import numpy as np

    from fedsock import tls
    from fedsock.protocol import (
        NEED_DATA,
        Auth,
        Challenge,
        Chunk,
        Connection,
        Done,
        EndOfMessage,
        Global,
        Heartbeat,
        Hello,
        Role,
        Update,
        Welcome,
        iter_chunks,
    )
    from fedsock.protocol.messages import TensorSpec
    from fedsock.worker.client import parse_address

    tok = tls.JoinToken.parse(token)
    host, port = parse_address(addr)
    sock = tls.client_context().wrap_socket(socket.create_connection((host, port)), server_hostname=host)
    tls.check_pinned(sock, tok.fingerprint)
    conn = Connection(Role.WORKER)
    buf = bytearray(1 << 20)

    def events():  # type: ignore[no-untyped-def]
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                n = sock.recv_into(buf)
                conn.receive_data(memoryview(buf)[:n] if n else b"")
                continue
            yield ev

    def send(msg, arrays=()):  # type: ignore[no-untyped-def]
        sock.sendall(conn.send(msg))
        for chunk in iter_chunks(arrays):
            for part in conn.send_parts(chunk):
                sock.sendall(part)

    def read_and_check(it, expect: float) -> int:  # type: ignore[no-untyped-def]
        got = 0
        for ev in it:
            if isinstance(ev, Chunk):
                a = np.frombuffer(ev.data, np.float32)
                assert a[0] == expect and a[-1] == expect, (a[0], expect)
                got += len(ev.data)
            elif isinstance(ev, EndOfMessage):
                return got
            elif not isinstance(ev, Heartbeat):
                raise AssertionError(f"unexpected {ev!r}")
        raise AssertionError("no end of message")

    it = events()
    send(Hello(name=name, instance=os.urandom(16)))
    ch = next(it)
    assert isinstance(ch, Challenge)
    send(Auth(tls.auth_mac(tok.secret, ch.nonce, tok.fingerprint, name)))
    welcome = next(it)
    assert isinstance(welcome, Welcome)
    if not welcome.has_weights:
        assert isinstance(next(it), EndOfMessage)
    mm = np.memmap(weights_file, np.float32, mode="r")
    arrays, off = [], 0
    for n in sizes:
        arrays.append(mm[off : off + n])
        off += n
    specs = tuple(TensorSpec(f"t{i}", "float32", (n,)) for i, n in enumerate(sizes))
    times = {}
    if not welcome.has_weights:
        t0 = time.perf_counter()
        send(Update(0, 0, specs), arrays)
        ev = next(e for e in it if not isinstance(e, Heartbeat))
        assert isinstance(ev, Global), ev
        read_and_check(it, value)
        times["initial_s"] = time.perf_counter() - t0
    else:
        read_and_check(it, next(iter([0.0])))
    t0 = time.perf_counter()
    send(Update(1, 10, specs), arrays)
    ev = next(e for e in it if not isinstance(e, Heartbeat))
    assert isinstance(ev, (Global, Done)), ev
    times["bytes_back"] = read_and_check(it, value)
    times["round_s"] = time.perf_counter() - t0
    sock.close()
    print(json.dumps(times), flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(*sys.argv[2:6], json.loads(sys.argv[6]), float(sys.argv[7]))  # type: ignore[misc]
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gib", type=float, default=4.5)
    p.add_argument("--tensors", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    total = int(a.gib * 1024**3) // 4
    sizes = [total // a.tensors] * a.tensors
    sizes[-1] += total - sum(sizes)
    with tempfile.TemporaryDirectory(prefix="fedsock-huge-") as tmp:
        wfile = Path(tmp) / "weights.f32"
        with open(wfile, "wb") as f:  # all 0.25: every average is 0.25 again
            block = (b"\x00\x00\x80\x3e") * (MIB // 4)
            left = total * 4
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        state = Path(tmp) / "chief"
        chief = spawn([__file__, "_chief", str(state), str(a.workers)])
        rss = PeakRss(chief.pid, interval=0.2)
        addr = wait_for_address(state, chief)
        token = (state / "token").read_text().strip()
        t0 = time.perf_counter()
        procs = [spawn([__file__, "_worker", addr, token, f"w{i}", str(wfile), json.dumps(sizes), "0.25"],
                       stdout=-1) for i in range(a.workers)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t0
        chief.wait(timeout=3600)
        peak = rss.stop()
        disk = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    print(json.dumps({"model_gib": round(total * 4 / 1024**3, 3), "tensors": a.tensors, "workers": a.workers,
                      "largest_tensor_gib": round(max(sizes) * 4 / 1024**3, 3), "workers_out": outs,
                      "wall_s": round(wall, 1), "chief_peak_rss_gib": round(peak / 1024, 2),
                      "chief_state_dir_gib": round(disk / 1024**3, 2), "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
