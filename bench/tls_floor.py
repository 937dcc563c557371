"""Benchmark: the raw TLS floor for the fedsock round workload.

    python bench/tls_floor.py --workers 4 --params 1000000 [--rounds 5]

K client processes each send M = 4 P bytes over TLS 1.3 to one server; the
server (a thread per connection) reads them with ``recv_into`` a reusable
buffer, adds them into one float32 accumulator, and when all K have arrived
sends the sum back to each. No framing, no authentication, no protocol: what
any real protocol on this machine must pay at least. A round's time is the
slowest client's send-to-receive time; the first round is a warm-up.

``--duties`` adds, in the same program, only what fedsock's chief promises
beyond moving bytes (docs/performance.md): each upload is received whole into
its own staging buffer and checked for NaN/Inf before it is added; the sum is
float64; the average is divided and cast back to float32; and the new model is
written to a checkpoint file (overwritten in place, fsynced, renamed, the
directory fsynced) while it streams out, its last 4 KiB held until the
checkpoint is on disk. No framing, authentication or protocol still: the
cost of those guarantees alone, on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, median, reap, round_times, spawn  # noqa: E402

BUF = 4 * MIB


def _recv_exact(sock: ssl.SSLSocket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _serve_clients(port_file: str, cert_dir: str, workers: int, serve: Callable[[ssl.SSLSocket], None]) -> None:
    """Listen on 127.0.0.1 (the port goes to ``port_file``), accept ``workers`` TLS 1.3 clients and run
    ``serve`` for each on a thread of its own, until all have returned."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(Path(cert_dir) / "cert.pem", Path(cert_dir) / "key.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    Path(port_file + ".tmp").write_text(str(srv.getsockname()[1]))
    Path(port_file + ".tmp").rename(port_file)
    threads = []
    for _ in range(workers):
        raw, _ = srv.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=serve, args=(ctx.wrap_socket(raw, server_side=True),))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def run_server(port_file: str, workers: int, params: int, rounds: int, cert_dir: str, duties: bool = False) -> None:
    import numpy as np

    if duties:
        run_duties_server(port_file, workers, params, rounds, cert_dir)
        return

    acc = np.zeros(params, np.float32)
    lock = threading.Lock()
    barrier = threading.Barrier(workers, action=lambda: None)
    done_round = threading.Barrier(workers, action=lambda: acc.fill(0))
    nbytes = params * 4

    def serve(sock: ssl.SSLSocket) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        for _ in range(rounds):
            off = 0
            while off < nbytes:
                n = min(BUF, nbytes - off)
                _recv_exact(sock, view[:n])
                with lock:
                    acc[off // 4 : (off + n) // 4] += np.frombuffer(buf, np.float32, n // 4)
                off += n
            barrier.wait()
            sock.sendall(acc.data)
            done_round.wait()
        sock.close()

    _serve_clients(port_file, cert_dir, workers, serve)


HELD = 4096  # bytes of the model held back until its checkpoint is on disk (as fedsock's chief does)
FOLD = 65536  # elements per block of the float64 fold


def run_duties_server(port_file: str, workers: int, params: int, rounds: int, cert_dir: str) -> None:
    """The floor plus the chief's duties (see the module docstring)."""
    import numpy as np

    total = np.zeros(params, np.float64)
    model = np.zeros(params, np.float32)
    ckpt_dir = Path(cert_dir) / "ckpt"
    ckpt_dir.mkdir()
    lock = threading.Lock()
    state = {"saved": threading.Event(), "folded": 0}

    def checkpoint() -> None:  # overwrite the older file in place, fsync, rename, fsync the directory
        tmp, final = ckpt_dir / "next", ckpt_dir / "model"
        if final.exists():
            os.replace(final, tmp)
        with open(tmp, "r+b" if tmp.exists() else "wb") as f:
            f.write(model.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dfd = os.open(ckpt_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        state["saved"].set()

    def close_round() -> None:  # the last upload is in: average, then checkpoint on a thread
        np.divide(total, workers, out=total)
        model[:] = total
        state["saved"] = threading.Event()
        state["folded"] = 0
        threading.Thread(target=checkpoint).start()

    barrier = threading.Barrier(workers, action=close_round)
    nbytes = params * 4

    def serve(sock: ssl.SSLSocket) -> None:
        staged = np.empty(params, np.float32)  # one staging buffer per upload, reused
        view = memoryview(staged).cast("B")
        for _ in range(rounds):
            _recv_exact(sock, view)
            if not np.isfinite(staged).all():
                raise ValueError("NaN/Inf in an upload")
            with lock:
                first = state["folded"] == 0
                state["folded"] += 1
                for a in range(0, params, FOLD):
                    b = min(a + FOLD, params)
                    if first:
                        total[a:b] = staged[a:b]
                    else:
                        np.add(total[a:b], staged[a:b], out=total[a:b])
            barrier.wait()
            out = memoryview(model).cast("B")
            sock.sendall(out[: nbytes - HELD])
            state["saved"].wait()
            sock.sendall(out[nbytes - HELD :])
        sock.close()

    _serve_clients(port_file, cert_dir, workers, serve)


def run_client(port: int, params: int, rounds: int) -> None:
    import numpy as np

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw)
    mine = np.ones(params, np.float32)
    back = np.empty(params, np.float32)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sock.sendall(mine.data)
        _recv_exact(sock, memoryview(back).cast("B"))
        times.append(time.perf_counter() - t0)
    sock.close()
    print(json.dumps(times), flush=True)


def bench(workers: int, params: int, rounds: int, duties: bool = False) -> dict[str, object]:
    """Run one configuration; returns the JSON-able result."""
    from fedsock import tls

    with tempfile.TemporaryDirectory(prefix="fedsock-floor-") as tmp:
        key, cert = tls.make_self_signed(["127.0.0.1"])
        (Path(tmp) / "cert.pem").write_bytes(cert)
        (Path(tmp) / "key.pem").write_bytes(key)
        port_file = str(Path(tmp) / "port")
        server = spawn([__file__, "_server", port_file, str(workers), str(params), str(rounds + 1), tmp,
                                  *(["duties"] if duties else [])])
        while not Path(port_file).exists():
            if server.poll() is not None:
                raise RuntimeError("the floor server did not start")
            time.sleep(0.02)
        port = Path(port_file).read_text()
        procs = [spawn([__file__, "_client", port, str(params), str(rounds + 1)], stdout=-1) for _ in range(workers)]
        outs = [p.communicate()[0] for p in procs]
        peak, cpu = reap(server)
    times = round_times([json.loads(o.strip().splitlines()[-1]) for o in outs])
    system = "tls_floor+duties" if duties else "tls_floor"
    return {"system": system, "workers": workers, "params": params, "model_mib": round(params * 4 / MIB, 1),
            "rounds": len(times), "round_s_median": round(median(times), 4), "round_s": [round(t, 4) for t in times],
            "server_peak_rss_mib": round(peak, 1), "server_cpu_s": round(cpu, 2)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        run_server(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6],
                   duties=sys.argv[7:] == ["duties"])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        run_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duties", action="store_true", help="add the chief's duties (staging, NaN check, float64 sum, "
                                                          "checkpoint before the model's end)")
    a = p.parse_args()
    print(json.dumps(bench(a.workers, a.params, a.rounds, a.duties)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
