"""Benchmark: one chief, 1000 workers, a 100k-parameter model.

    python bench/thousand_workers.py [--workers 1000] [--procs 4] [--params 100000] [--rounds 3]

The chief is the real ``fedsock.Chief`` in its own process. The workers are
simulated: ``--procs`` processes each run ``workers / procs`` threads, and
every thread is a complete ``fedsock.Client`` with its own TLS 1.3
connection, authentication and heartbeat thread (so 1000 TLS connections
and 1000 sessions on the chief). Threads connect at most 16 at a time per
process, staying under the chief's pre-authentication connection cap. Round
times are wall-clock, from the earliest worker's ``sync()`` call to the last
worker's return, over rounds after the first (which includes joining).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, PeakRss, median, shape_for, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, workers: int, rounds: int) -> None:
    import logging

    import fedsock

    logging.basicConfig(level=logging.WARNING)
    fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=rounds, min_workers=workers,
                  round_timeout=3600, idle_timeout=600, done_grace=5.0).run()


def run_proc(addr: str, token: str, prefix: str, threads: int, params: int) -> None:
    import numpy as np

    import fedsock

    shapes = shape_for(params)
    gate = threading.Semaphore(16)
    spans: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    joined: list[float] = [0.0] * threads
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            with gate:
                c = fedsock.Client(addr, token=token, name=f"{prefix}-{i}", connect_timeout=600,
                                   idle_timeout=1200, heartbeat_interval=30)
            with c:
                w = c.join([np.zeros(s, np.float32) for s in shapes])
                joined[i] = time.time()
                mine = [a + np.float32(0.001 * (i % 7)) for a in w]
                while not c.finished:
                    t0 = time.time()
                    c.sync(mine, num_examples=1 + i % 5)
                    spans[i].append((t0, time.time()))
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            errors.append(f"{prefix}-{i}: {exc!r}")

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({"spans": spans, "joined": joined, "errors": errors}), flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_proc":
        run_proc(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--params", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    per = [a.workers // a.procs + (1 if i < a.workers % a.procs else 0) for i in range(a.procs)]
    with tempfile.TemporaryDirectory(prefix="fedsock-1000-") as tmp:
        state = Path(tmp) / "chief"
        chief = spawn([__file__, "_chief", str(state), str(a.workers), str(a.rounds)], stdout=-3)
        rss = PeakRss(chief.pid, interval=0.2)
        addr = wait_for_address(state, chief)
        token = (state / "token").read_text().strip()
        t0 = time.time()
        procs = [spawn([__file__, "_proc", addr, token, f"p{j}", str(n), str(a.params)], stdout=-1)
                 for j, n in enumerate(per)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.time() - t0
        chief.wait(timeout=600)
        peak = rss.stop()
    spans = [s for o in outs for s in o["spans"]]
    errors = [e for o in outs for e in o["errors"]]
    joined = [j for o in outs for j in o["joined"] if j]
    rounds = min((len(s) for s in spans), default=0)
    times = [max(s[r][1] for s in spans) - min(s[r][0] for s in spans) for r in range(1, rounds)]
    print(json.dumps({"workers": a.workers, "worker_processes": a.procs, "params": a.params,
                      "model_mib": round(a.params * 4 / MIB, 2),
                      "workers_completed": sum(len(s) == rounds for s in spans),
                      "errors": errors[:5], "all_joined_s": round(max(joined) - t0, 2) if joined else None,
                      "round_s": [round(t, 3) for t in times], "round_s_median": round(median(times), 3),
                      "wall_s": round(wall, 1), "chief_peak_rss_mib": round(peak, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
