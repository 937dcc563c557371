"""NVFlare's large-model benchmark replicated: GPT-2 Large (3.35 GB of float32), 6 clients, one server.

    python bench/large_model.py [--layout gpt2-large] [--workers 2,4,6] [--rounds 3] [--floor-rounds 2]

NVFlare 2.7 published (examples/advanced/tensor-stream/COMPARISON.md) a
model-only exchange of GPT-2 Large (437 tensors, 3,353,436,160 bytes) between
one server and 6 clients, no training. This runs the same workload through
fedsock on this machine, for each worker count in ``--workers`` (the chief's
memory must not grow with it):

- fedsock: ``bench/huge_model.py``'s run (the real ``fedsock.Chief`` with a
  float32 sum, streaming workers that send from one shared read-only
  memory-mapped copy of each weight file and check every byte of every model
  they receive), ``--rounds`` rounds after worker 0's initial proposal.
- the raw TLS floor for the same bytes: ``bench/tls_floor.py``'s server (one
  float32 accumulator of the model's size, a thread per connection) with
  streaming clients that send the same bytes from the same memory-mapped file
  and read the sum back through a 4 MiB buffer; ``--floor-rounds`` timed
  rounds after one warm-up.

A round, in both, is from the first worker's send to the last worker's whole
model back (monotonic clock, one machine). fedsock's round 1 includes the
other workers' joins (each downloads the model in its Welcome), so its
median is over rounds 2 and later. The floor runs first for each worker
count, then fedsock. Every process runs at the caller's nice level; all of
them are killed if the machine's available memory falls below 3 GiB.
Prints one JSON object per run, then a summary object, and a Markdown table on
stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import huge_model  # noqa: E402
import tls_floor  # noqa: E402
from _common import MIB, reap, spawn  # noqa: E402

BUF = 4 * MIB


def run_floor_client(port: int, weights_file: str, nbytes: int, rounds: int) -> None:
    """Send ``nbytes`` from the memory-mapped file, read the sum back into a reusable buffer; per round times."""
    import mmap

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw)
    with open(weights_file, "rb") as f:
        mine = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[:nbytes]
    back = memoryview(bytearray(BUF))
    memory = huge_model.MemorySampler("self", interval=0.2, every=math.inf)
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        for off in range(0, nbytes, BUF):
            sock.sendall(mine[off : off + BUF])
        t1 = time.monotonic()
        left = nbytes
        while left:
            tls_floor._recv_exact(sock, back[: min(BUF, left)])
            left -= min(BUF, left)
        times.append({"start": t0, "sent": t1, "end": time.monotonic()})
    sock.close()
    print(json.dumps({"rounds": times, **memory.stop()}), flush=True)


def floor(nbytes: int, workers: int, rounds: int, weights_file: Path, tmp: Path) -> dict[str, Any]:
    """The raw TLS floor: ``workers`` clients x ``nbytes``, one warm-up round and ``rounds`` timed ones."""
    from fedsock import tls

    cert_dir = tmp / f"floor-{workers}"
    cert_dir.mkdir()
    key, cert = tls.make_self_signed(["127.0.0.1"])
    (cert_dir / "cert.pem").write_bytes(cert)
    (cert_dir / "key.pem").write_bytes(key)
    port_file = cert_dir / "port"
    server = spawn([tls_floor.__file__, "_server", str(port_file), str(workers), str(nbytes // 4), str(rounds + 1),
                    str(cert_dir)])
    procs = [server]
    guard = huge_model.MemoryGuard(procs)
    try:
        while not port_file.exists():
            if server.poll() is not None:
                raise RuntimeError("the floor server did not start")
            time.sleep(0.05)
        port = port_file.read_text()
        for _ in range(workers):
            procs.append(spawn([__file__, "_floor_client", port, str(weights_file), str(nbytes), str(rounds + 1)],
                               stdout=-1))
        outs = []
        for p in procs[1:]:
            text = p.communicate()[0]
            if p.returncode != 0:
                raise RuntimeError(f"floor client exited with {p.returncode}")
            outs.append(json.loads(text.strip().splitlines()[-1]))
        peak_mib, cpu_s = reap(server, timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        lowest = guard.stop()
    if guard.tripped:
        raise RuntimeError("stopped: the machine's available memory fell below 3 GiB")
    spans = [max(o["rounds"][r]["end"] for o in outs) - min(o["rounds"][r]["start"] for o in outs)
             for r in range(1, rounds + 1)]
    return {"system": "tls_floor", "workers": workers, "rounds": rounds, "model_gb": round(nbytes / 1e9, 3),
            "round_s": [round(s, 2) for s in spans], "round_s_median": round(statistics.median(spans), 2),
            "server_peak_rss_gib": round(peak_mib / 1024, 2), "server_cpu_s": round(cpu_s, 1),
            "client_peak_rss_anon_mib": max(o["RssAnon_peak_mib"] for o in outs),
            "lowest_mem_available_gib": lowest, "loadavg_end": os.getloadavg()[0]}


def table(rows: list[dict[str, Any]], model_gb: float) -> str:
    """The side-by-side Markdown table: NVFlare's published figures, then fedsock here per worker count."""
    out = ["| | clients | round time | vs raw TLS floor | server peak RAM | client peak RAM |",
           "|---|---|---|---|---|---|",
           "| NVFlare 2.7, no tensor streaming (published) | 6 | ~158 s (crashed after 9 rounds) | - "
           "| 137.8 GiB | ~19 GiB |",
           "| NVFlare 2.7, tensor streaming (published) | 6 | ~154 s | - | ~81.75 GiB | ~9-15 GiB |"]
    for r in rows:
        f = r["fedsock"]
        out.append(f"| fedsock, this machine | {f['workers']} | {f['round_s_median']} s (rounds {f['round_s']}) | "
                   f"{r['ratio']}x (floor {r['floor']['round_s_median']} s) | {f['chief_peak_rss_gib']} GiB "
                   f"({f['chief_peak_rss_x_model']}x the model) | {f['worker_peak_rss_gib']} GiB "
                   f"({f['worker_peak_rss_anon_mib']:.0f} MiB of it private) |")
    return "\n".join(out) + f"\n\nmodel: {model_gb} GB"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_floor_client":
        run_floor_client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=("gpt2-large", "gpt2-small", "even"), default="gpt2-large")
    p.add_argument("--gib", type=float, default=0.5, help="model size with --layout even")
    p.add_argument("--tensors", type=int, default=24, help="tensors with --layout even")
    p.add_argument("--workers", default="2,4,6", help="worker counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="fedsock rounds after the initial proposal")
    p.add_argument("--floor-rounds", type=int, default=2, help="timed floor rounds after a warm-up")
    p.add_argument("--no-floor", action="store_true")
    a = p.parse_args()
    counts = [int(k) for k in a.workers.split(",")]
    if not all(1 <= k <= 16 for k in counts):
        p.error("each worker count must be 1..16")
    shapes = [s for _, s in huge_model.layout(a.layout, a.gib, a.tensors)]
    nbytes = sum(4 * math.prod(s) for s in shapes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsock-large-") as tmp:
        files = [Path(tmp) / "a.f32", Path(tmp) / "b.f32"]
        t0 = time.monotonic()
        for kind, f in enumerate(files):
            huge_model.write_weights(f, kind, shapes)
        print(json.dumps({"layout": a.layout, "tensors": len(shapes), "model_bytes": nbytes,
                          "weight_files_written_s": round(time.monotonic() - t0, 1),
                          "loadavg": os.getloadavg()[0]}), flush=True)
        for k in counts:
            fl = None if a.no_floor else floor(nbytes, k, a.floor_rounds, files[0], Path(tmp))
            if fl is not None:
                print(json.dumps(fl), flush=True)
            fs = huge_model.bench(shapes, k, a.rounds, files, Path(tmp))
            print(json.dumps({"layout": a.layout, **fs}), flush=True)
            ratio = round(fs["round_s_median"] / fl["round_s_median"], 2) if fl else None
            rows.append({"workers": k, "fedsock": fs, "floor": fl or {"round_s_median": None}, "ratio": ratio})
            # the chief's state dir holds two copies of the model (checkpoint, final weights): free the disk
            for f in (Path(tmp) / f"chief-{k}").rglob("*"):
                if f.is_file() and f.stat().st_size > MIB:
                    f.unlink()
    summary = {"summary": "large_model", "layout": a.layout, "model_gb": round(nbytes / 1e9, 3),
               "model_gib": round(nbytes / 1024**3, 3),
               "rows": [{"workers": r["workers"], "round_s_median": r["fedsock"]["round_s_median"],
                         "floor_s_median": r["floor"]["round_s_median"], "ratio": r["ratio"],
                         "chief_peak_rss_gib": r["fedsock"]["chief_peak_rss_gib"],
                         "chief_peak_rss_x_model": r["fedsock"]["chief_peak_rss_x_model"],
                         "worker_peak_rss_gib": r["fedsock"]["worker_peak_rss_gib"],
                         "worker_peak_rss_anon_mib": r["fedsock"]["worker_peak_rss_anon_mib"]} for r in rows]}
    print(json.dumps(summary), flush=True)
    print(table(rows, round(nbytes / 1e9, 3)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
