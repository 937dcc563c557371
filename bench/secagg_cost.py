"""Benchmark: what secure aggregation costs, in round time and bytes, against plain FedAvg.

    python bench/secagg_cost.py [--workers 4 16 64] [--params 1000000] [--rounds 3] [--neighbours 0 8]

For each K: one chief process and K worker processes (``fedsock.Client``) on
127.0.0.1 over TLS 1.3, no training; every round each worker sends P float32
parameters and waits for the average. Run once plain and once with
``--secure-agg`` (and once more per ``--neighbours`` k > 0, SecAgg+).
Bytes are the chief's own count (metrics.jsonl ``bytes_in``/``bytes_out``: every
frame of the round, keys, shares and reveals included) per worker and round.
The first round is a warm-up and not counted. Prints one JSON object per
configuration, then a summary with the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, PeakRss, median, round_times, shape_for, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, workers: int, rounds: int, secure: int, neighbours: int) -> None:
    import logging

    import fedsock

    logging.basicConfig(level=logging.WARNING)
    fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=rounds, min_workers=workers,
                  round_timeout=1200, idle_timeout=600, heartbeat_interval=30, done_grace=2.0,
                  secure_agg=bool(secure), secagg_neighbours=neighbours, secagg_timeout=600).run()


def run_worker(addr: str, token: str, name: str, params: int) -> None:
    import numpy as np

    import fedsock
    import fedsock.worker.engine as engine_module  # the engine masks each update (fedsock.worker.secure)

    masking: list[float] = []  # CPU seconds: what the step costs a worker on a machine of its own
    plain_masked_update = engine_module.masked_update

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.process_time()
        out = plain_masked_update(*args, **kwargs)
        masking.append(time.process_time() - t0)
        return out

    engine_module.masked_update = timed  # type: ignore[assignment]
    shapes = shape_for(params)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    mine = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    times = []
    with fedsock.Client(addr, token=token, name=name, connect_timeout=300, idle_timeout=600,
                        heartbeat_interval=30) as c:
        c.join([np.zeros(s, np.float32) for s in shapes])
        while not c.finished:
            t0 = time.perf_counter()
            c.sync(mine, num_examples=10)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "mask_s": masking}), flush=True)


def bench(workers: int, params: int, rounds: int, secure: bool, neighbours: int = 0) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fedsock-secagg-") as tmp:
        state = Path(tmp) / "chief"
        chief = spawn([__file__, "_chief", str(state), str(workers), str(rounds + 1), str(int(secure)),
                       str(neighbours)], stdout=-3)
        rss = PeakRss(chief.pid)
        addr = wait_for_address(state, chief, timeout=60)
        from fedsock.chief import tokens

        # secure aggregation admits only per-worker tokens (the shared one would let one holder be many workers)
        names = [f"w{i}" for i in range(workers)]
        creds = {n: str(tokens.create(state, n)) if secure else (state / "token").read_text().strip() for n in names}
        procs = [spawn([__file__, "_worker", addr, creds[n], n, str(params)], stdout=-1) for n in names]
        outs = [p.communicate()[0] for p in procs]
        chief.wait(timeout=300)
        peak = rss.stop()
        rows = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()][1:]
    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    times = round_times([r["times"] for r in reports])
    mask_s = [t for r in reports for t in r["mask_s"][1:]]
    up = median([r["bytes_in"] / workers for r in rows])
    down = median([r["bytes_out"] / workers for r in rows])
    return {"system": "fedsock", "secure_agg": secure, "neighbours": neighbours, "workers": workers,
            "params": params, "rounds": len(times), "round_s_median": round(median(times), 3),
            "round_s": [round(t, 3) for t in times], "up_bytes_per_worker": int(up),
            "down_bytes_per_worker": int(down), "float32_payload_bytes": params * 4,
            "worker_mask_cpu_s_median": round(median(mask_s), 3) if secure else 0.0,
            "chief_unmask_s_median": round(median([r["secure_agg"]["unmask_s"] for r in rows]), 3) if secure else 0.0,
            "chief_peak_rss_mib": round(peak, 1), "model_mib": round(params * 4 / MIB, 1)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--neighbours", type=int, nargs="+", default=[0, 8],
                   help="secure runs: 0 = everyone masks with everyone; k = SecAgg+ with k neighbours")
    a = p.parse_args()
    summary = []
    for k in a.workers:
        plain = bench(k, a.params, a.rounds, secure=False)
        print(json.dumps(plain), flush=True)
        for nb in a.neighbours:
            if nb and nb >= k - 1:
                continue  # the same as everyone
            sec = bench(k, a.params, a.rounds, secure=True, neighbours=nb)
            print(json.dumps(sec), flush=True)
            summary.append({
                "workers": k, "neighbours": nb,
                "time_ratio": round(float(sec["round_s_median"]) / float(plain["round_s_median"]), 2),  # type: ignore[arg-type]
                "up_expansion": round(int(sec["up_bytes_per_worker"]) / int(plain["up_bytes_per_worker"]), 3),  # type: ignore[call-overload]
                "total_expansion": round(
                    (int(sec["up_bytes_per_worker"]) + int(sec["down_bytes_per_worker"]))  # type: ignore[call-overload]
                    / (int(plain["up_bytes_per_worker"]) + int(plain["down_bytes_per_worker"])), 3),  # type: ignore[call-overload]
                "plain_round_s": plain["round_s_median"], "secure_round_s": sec["round_s_median"]})
    print(json.dumps({"summary": summary, "bonawitz_2017_expansion": 1.73}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
