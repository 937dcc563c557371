"""A fuzzing campaign: each target in turn, on one core, with a given number of executions; prints JSON.

    nohup nice -n 19 python fuzz/campaign.py --runs protocol=4000000,secagg=1600000 > campaign.json &

Each target runs ``fuzz/fuzz.py TARGET`` (one process, one core) from a work directory
``fuzz/work/TARGET`` seeded with its corpus, for exactly ``-runs`` executions (fewer if it
crashes). The JSON has, per target, the executions, seconds, executions per second,
libFuzzer's final ``cov:``/``ft:`` figures, the corpus it grew, and any crash (the input is
in ``fuzz/work/TARGET-crash-*``, the log in ``fuzz/work/TARGET.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = {"protocol": HERE / "corpus", "secagg": HERE / "corpus-secagg", "status": HERE / "corpus-status",
          "checkpoint": HERE / "corpus-checkpoint"}
PROGRESS = re.compile(r"^#(\d+)\s+(?:INITED|NEW|REDUCE|pulse|DONE|RELOAD)\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def run_target(target: str, runs: int, work_root: Path, timeout_s: int, env: dict[str, str]) -> dict[str, object]:
    work = work_root / target
    work.mkdir(parents=True, exist_ok=True)
    for seed in CORPUS[target].iterdir():
        if not (work / seed.name).exists():
            shutil.copy(seed, work / seed.name)
    log = work_root / f"{target}.log"
    cmd = [sys.executable, str(HERE / "fuzz.py"), target, str(work), f"-runs={runs}", "-print_final_stats=1",
           f"-timeout={timeout_s}", f"-artifact_prefix={work_root}/{target}-"]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work_root).returncode
    seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    first = last = None
    for line in text.splitlines():
        m = PROGRESS.match(line)
        if m:
            first = first or m
            last = m
    executions = int(stats.get("number_of_executed_units", last.group(1) if last else 0))
    crashes = sorted(p.name for p in work_root.glob(f"{target}-crash-*")) + sorted(
        p.name for p in work_root.glob(f"{target}-timeout-*"))
    return {
        "target": target, "command": " ".join(cmd), "exit_code": rc, "executions": executions,
        "seconds": round(seconds, 1), "exec_per_s": round(executions / seconds) if seconds else None,
        "cov_start": int(first.group(2)) if first else None, "cov": int(last.group(2)) if last else None,
        "ft": int(last.group(3)) if last else None, "corpus": int(last.group(4)) if last else None,
        "seeds": len(list(CORPUS[target].iterdir())), "crashes": crashes, "log": str(log),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="TARGET=N,... executions per target, run in this order")
    p.add_argument("--work", default=str(HERE / "work"), help="work directory (corpora, logs, crashes)")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a crash")
    args = p.parse_args()
    plan = [(t, int(n)) for t, n in (item.split("=") for item in args.runs.split(","))]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    work_root = Path(args.work).resolve()
    work_root.mkdir(parents=True, exist_ok=True)
    results = []
    for target, runs in plan:
        results.append(run_target(target, runs, work_root, args.timeout, env))
        (work_root / "campaign.json").write_text(json.dumps(results, indent=2))
    total = sum(int(r["executions"]) for r in results)  # type: ignore[call-overload]
    print(json.dumps({"targets": results, "total_executions": total,
                      "total_seconds": round(sum(float(r["seconds"]) for r in results), 1),  # type: ignore[arg-type]
                      "crashes": sum(len(r["crashes"]) for r in results)}, indent=2))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
