"""Benchmark: the same round workload through Flower's legacy gRPC server and NumPyClient.

    python bench/flower_round.py --workers 4 --params 1000000 [--rounds 5]

Needs ``flwr`` (``pip install -e '.[bench]'``); prints ``{"skipped": ...}``
without it. Insecure gRPC on 127.0.0.1 (Flower's legacy default), FedAvg,
no evaluation. A round's time is the interval between a client's successive
``fit`` calls (the slowest client's); the first is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MIB, median, reap, shape_for, spawn  # noqa: E402


def run_server(port: int, workers: int, params: int, rounds: int) -> None:
    import logging

    import flwr as fl
    import numpy as np

    logging.getLogger("flwr").setLevel(logging.WARNING)
    init = fl.common.ndarrays_to_parameters([np.zeros(s, np.float32) for s in shape_for(params)])
    strategy = fl.server.strategy.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=workers,
                                         min_available_clients=workers, initial_parameters=init)
    fl.server.start_server(server_address=f"127.0.0.1:{port}", config=fl.server.ServerConfig(num_rounds=rounds),
                           strategy=strategy, grpc_max_message_length=2**31 - 1)


def run_client(port: int, params: int, name: str) -> None:
    import logging

    import flwr as fl
    import numpy as np

    logging.getLogger("flwr").setLevel(logging.WARNING)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    mine = [rng.standard_normal(s, dtype=np.float32) for s in shape_for(params)]
    starts: list[float] = []

    class C(fl.client.NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config):  # type: ignore[no-untyped-def]
            return mine

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            starts.append(time.perf_counter())
            return mine, 10, {}

    fl.client.start_client(server_address=f"127.0.0.1:{port}", client=C().to_client(), insecure=True,
                           grpc_max_message_length=2**31 - 1)
    print(json.dumps([b - a for a, b in zip(starts, starts[1:])]), flush=True)


def bench(workers: int, params: int, rounds: int) -> dict[str, object]:
    """Run one configuration; returns the JSON-able result (or why it was skipped)."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        return {"system": "flower", "workers": workers, "params": params, "skipped": "flwr is not installed"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = spawn([__file__, "_server", str(port), str(workers), str(params), str(rounds + 1)],
                   stdout=-3, stderr=-3)
    time.sleep(3)
    procs = [spawn([__file__, "_client", str(port), str(params), f"w{i}"], stdout=-1, stderr=-3)
             for i in range(workers)]
    outs = [p.communicate()[0] for p in procs]
    peak, cpu = reap(server, timeout=600)
    per = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    n = min(len(t) for t in per)
    times = [max(t[r] for t in per) for r in range(n)]
    return {"system": "flower", "workers": workers, "params": params, "model_mib": round(params * 4 / MIB, 1),
            "rounds": len(times), "round_s_median": round(median(times), 4), "round_s": [round(t, 4) for t in times],
            "server_peak_rss_mib": round(peak, 1), "server_cpu_s": round(cpu, 2)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        run_server(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        run_client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    print(json.dumps(bench(a.workers, a.params, a.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
