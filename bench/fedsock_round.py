"""Benchmark: fedsock sync round time and chief peak RSS, no training.

    python bench/fedsock_round.py --workers 4 --params 1000000 [--rounds 5]

K worker processes (``fedsock.Client``) and one chief (``fedsock.Chief``, its
own process) on 127.0.0.1 over TLS 1.3. Every round each worker uploads P
float32 parameters and waits for the average. The first round (the initial
model proposal plus round 1) is a warm-up and not counted. A round's time is
the slowest worker's ``sync()`` time. Prints one JSON object; the chief's
peak RSS and CPU seconds (all threads, start-up included) come from the
kernel's accounting when it exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, median, reap, round_times, shape_for, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, workers: int, rounds: int, compress: str) -> None:
    import logging

    import fedsock

    logging.basicConfig(level=logging.WARNING)
    kw = {"compress": compress} if compress != "none" else {}
    fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=rounds, min_workers=workers,
                  round_timeout=600, done_grace=2.0, **kw).run()


def run_worker(addr: str, token: str, name: str, params: int) -> None:
    import numpy as np

    import fedsock

    shapes = shape_for(params)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    mine = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    times = []
    with fedsock.Client(addr, token=token, name=name, connect_timeout=120, idle_timeout=600) as c:
        last = c.join([np.zeros(s, np.float32) for s in shapes])
        while not c.finished:
            t0 = time.perf_counter()
            last = c.sync(mine, num_examples=10, reuse=last)  # the model is not kept: its memory is reused
            times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


def bench(workers: int, params: int, rounds: int, compress: str = "none") -> dict[str, object]:
    """Run one configuration; returns the JSON-able result."""
    with tempfile.TemporaryDirectory(prefix="fedsock-bench-") as tmp:
        state = Path(tmp) / "chief"
        chief = spawn([__file__, "_chief", str(state), str(workers), str(rounds + 1), compress], stdout=-3)
        addr = wait_for_address(state, chief, timeout=60)
        token = (state / "token").read_text().strip()
        t0 = time.perf_counter()
        procs = [spawn([__file__, "_worker", addr, token, f"w{i}", str(params)], stdout=-1) for i in range(workers)]
        outs = [p.communicate()[0] for p in procs]
        total = time.perf_counter() - t0
        peak, cpu = reap(chief)
    per_worker = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    times = round_times(per_worker)
    model_mib = params * 4 / MIB
    return {"system": "fedsock", "workers": workers, "params": params, "model_mib": round(model_mib, 1),
            "compress": compress, "rounds": len(times), "round_s_median": round(median(times), 4),
            "round_s": [round(t, 4) for t in times], "chief_peak_rss_mib": round(peak, 1),
            "chief_cpu_s": round(cpu, 2),
            "rss_budget_mib": round(300 + 3 * model_mib, 1), "wall_s": round(total, 2)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compress", default="none")
    a = p.parse_args()
    print(json.dumps(bench(a.workers, a.params, a.rounds, a.compress)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
