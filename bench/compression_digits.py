"""Benchmark: update compression on the digits demo: bytes per round and final accuracy per mode.

    python bench/compression_digits.py [--modes none,fp16,int8,topk:0.1] [--workers 3] [--rounds 20]

For each mode: the same IID split of scikit-learn's digits, the demo's model
(``fedsock.models:digits_mlp``), a chief with ``--compress MODE`` and real
worker processes (``python -m fedsock worker``), as ``fedsock demo`` runs
them. Reads the chief's ``metrics.jsonl``: upload bytes per round (all
workers; the download, always uncompressed, is reported apart) and the
holdout accuracy after the last round. Prints one JSON object per mode and a
Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedsock.data import Partition, split_digits  # noqa: E402
from fedsock.demo import wait_for_address  # noqa: E402


def run_mode(mode: str, workers: int, rounds: int, seed: int, base: Path) -> dict[str, object]:
    work = base / mode.replace(":", "_")
    shards, state = work / "shards", work / "chief"
    split_digits(shards, workers, Partition.parse("iid"), seed=seed)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + ":" + env.get("PYTHONPATH", "")
    py = [sys.executable, "-m", "fedsock"]
    state.mkdir(parents=True)
    t0 = time.monotonic()
    with open(work / "chief.log", "wb") as log:
        chief = subprocess.Popen(py + ["chief", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
                                       "--rounds", str(rounds), "--min-workers", str(workers),
                                       "--round-timeout", "120", "--model", "fedsock.models:digits_mlp",
                                       "--eval-data", str(shards / "holdout"), "--sync-every", "10",
                                       "--batch-size", "32", "--compress", mode],
                                 env=env, stdout=subprocess.DEVNULL, stderr=log)
        address = wait_for_address(state, chief)
        env["FEDSOCK_TOKEN"] = (state / "token").read_text().strip()
        procs = [subprocess.Popen(py + ["worker", "--chief", address, "--data", str(shards / f"worker-{i}"),
                                        "--name", f"w{i}"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(work / f"worker-{i}.log", "wb")) for i in range(workers)]
        code = chief.wait(timeout=1800)
        for p in procs:
            p.wait(timeout=120)
    rows = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]
    return {"mode": mode, "exit": code, "rounds": len(rows),
            "upload_bytes_per_round": int(statistics.median(r["bytes_in"] for r in rows)),
            "download_bytes_per_round": int(statistics.median(r["bytes_out"] for r in rows)),
            "final_accuracy": rows[-1].get("accuracy"), "final_loss": rows[-1].get("loss"),
            "wall_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modes", default="none,fp16,int8,topk:0.1,topk:0.01")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsock-compress-") as tmp:
        for mode in a.modes.split(","):
            r = run_mode(mode, a.workers, a.rounds, a.seed, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    ref = float(results[0]["upload_bytes_per_round"])  # type: ignore[arg-type]
    print("| --compress | upload bytes/round | vs none | download bytes/round | final holdout accuracy |",
          file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for r in results:
        up = float(r["upload_bytes_per_round"])  # type: ignore[arg-type]
        print(f"| {r['mode']} | {int(up):,} | {up / ref:.3f} | {int(r['download_bytes_per_round']):,} | "  # type: ignore[call-overload]
              f"{r['final_accuracy']:.4f} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
