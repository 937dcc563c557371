"""Chaos benchmark: N runs that SIGKILL random workers and the chief at random moments.

    python bench/chaos.py [--runs 20] [--rounds 10] [--kills 3] [--workdir /tmp/fedsock-chaos]

Prints one JSON object per run and a summary (runs, kills, rounds lost) as the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedsock.testing.chaos import run_chaos  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="fedsock-chaos-"))
    results = []
    for seed in range(args.runs):
        d = base / f"run-{seed}"
        shutil.rmtree(d, ignore_errors=True)
        r = run_chaos(d, seed, rounds=args.rounds, workers=args.workers, kills=args.kills)
        results.append(r)
        print(json.dumps(r), flush=True)
    summary = {
        "runs": len(results), "passed": sum(r["ok"] for r in results),
        "chief_kills": sum(r["chief_kills"] for r in results),
        "worker_kills": sum(r["worker_kills"] for r in results),
        "rounds_lost": sum(r["rounds_lost"] for r in results),
        "duplicated_rounds": sum(r["duplicated_rounds"] for r in results),
        "max_seconds": max(r["seconds"] for r in results),
        "median_seconds": sorted(r["seconds"] for r in results)[len(results) // 2],
        "workdir": str(base),
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["passed"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
