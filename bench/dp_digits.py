"""Benchmark: differential privacy on the digits demo: final accuracy against epsilon.

    python bench/dp_digits.py [--runs none,0.5:0,0.5:0.3,0.5:1] [--workers 3] [--rounds 20]

Each entry of ``--runs`` is ``none`` (plain FedAvg) or ``C:Z`` (``--dp-clip C
--dp-noise Z``). For each: the same IID split of scikit-learn's digits, the
demo's model (``fedsock.models:digits_mlp``), a chief and real worker
processes (``python -m fedsock worker``) as ``fedsock demo`` runs them. Reads
the chief's ``metrics.jsonl`` (holdout accuracy and epsilon after the last
round) and the workers' debug logs (the update norms before clipping, to
help choose C). Prints one JSON object per run and a Markdown table on
stderr. The noise is drawn fresh every run (not seeded, by design), so the
accuracy of noised runs varies from run to run; ``--repeat`` averages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedsock.data import Partition, split_digits  # noqa: E402
from fedsock.demo import wait_for_address  # noqa: E402

NORM = re.compile(r"update delta L2 norm ([0-9.eE+-]+) before clipping")


def run_one(spec: str, workers: int, rounds: int, fraction: float, seed: int, work: Path) -> dict[str, object]:
    shards, state = work / "shards", work / "chief"
    split_digits(shards, workers, Partition.parse("iid"), seed=seed)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="-1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + ":" + env.get("PYTHONPATH", "")
    py = [sys.executable, "-m", "fedsock"]
    dp: list[str] = []
    clip = noise = 0.0
    if spec != "none":
        clip, noise = (float(x) for x in spec.split(":"))
        dp = ["--dp-clip", str(clip), "--dp-noise", str(noise)]
    state.mkdir(parents=True)
    t0 = time.monotonic()
    with open(work / "chief.log", "wb") as log:
        chief = subprocess.Popen(py + ["chief", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
                                       "--rounds", str(rounds), "--min-workers", str(max(1, round(fraction * workers))),
                                       "--fraction", str(fraction), "--round-timeout", "120",
                                       "--model", "fedsock.models:digits_mlp", "--eval-data", str(shards / "holdout"),
                                       "--sync-every", "10", "--batch-size", "32", "--seed", str(seed),
                                       "--no-tensorboard", "--progress", "plain", *dp],
                                 env=env, stdout=subprocess.DEVNULL, stderr=log)
        address = wait_for_address(state, chief)
        env["FEDSOCK_TOKEN"] = (state / "token").read_text().strip()
        logs = [work / f"worker-{i}.log" for i in range(workers)]
        procs = [subprocess.Popen(py + ["-v", "worker", "--chief", address, "--data", str(shards / f"worker-{i}"),
                                        "--name", f"w{i}", "--seed", str(seed + i), "--progress", "plain"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(logs[i], "wb"))
                 for i in range(workers)]
        code = chief.wait(timeout=1800)
        for p in procs:
            p.wait(timeout=120)
    rows = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]
    norms = [float(m) for f in logs for m in NORM.findall(f.read_text(errors="replace"))]
    return {"run": spec, "dp_clip": clip, "dp_noise": noise, "fraction": fraction, "workers": workers,
            "exit": code, "rounds": len(rows), "epsilon": rows[-1].get("epsilon") if dp else None,
            "dp_delta": rows[-1].get("dp_delta"), "final_accuracy": rows[-1].get("accuracy"),
            "final_loss": rows[-1].get("loss"),
            "median_update_norm": round(statistics.median(norms), 4) if norms else None,
            "wall_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="none,0.5:0,0.5:0.1,0.5:0.3,0.5:0.7,0.5:1,0.5:2",
                    help="comma-separated: none (no DP) or C:Z (clip norm, noise multiplier)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=1.0, help="--fraction of the chief (sampling)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per setting (the table shows the mean)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsock-dp-") as tmp:
        for spec in a.runs.split(","):
            for rep in range(a.repeat):
                r = run_one(spec.strip(), a.workers, a.rounds, a.fraction, a.seed,
                            Path(tmp) / f"{spec.replace(':', '_')}-{rep}")
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"| setting ({a.workers} workers, {a.rounds} rounds, q = {a.fraction:g}) | epsilon at delta 1e-5 | "
          "final holdout accuracy | median update norm before clipping |", file=sys.stderr)
    print("|---|---|---|---|", file=sys.stderr)
    for spec in a.runs.split(","):
        rs = [r for r in results if r["run"] == spec.strip()]
        accs = [float(r["final_accuracy"]) for r in rs if r["final_accuracy"] is not None]  # type: ignore[arg-type]
        acc = f"{statistics.mean(accs):.4f}" + (f" (min {min(accs):.4f})" if len(accs) > 1 else "") if accs else "-"
        first = rs[0]
        if spec.strip() == "none":
            name, eps = "no DP", "-"
        else:
            name = f"C = {first['dp_clip']:g}, z = {first['dp_noise']:g}"
            eps = "∞ (no noise)" if first["epsilon"] is None else f"{float(first['epsilon']):.3g}"  # type: ignore[arg-type]
        norm = first["median_update_norm"]
        print(f"| {name} | {eps} | {acc} | {norm if norm is not None else '-'} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
