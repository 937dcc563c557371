"""Chaos campaign: many runs of a chief and numpy workers under kills, stops and network faults.

    nice -n 19 python bench/chaos.py [--runs 100] [--rounds 12] [--bound 90] [--workdir DIR] [--first-seed 0]

Run ``seed`` follows ``fedsock.testing.chaosplan.plan_run(seed)``: a third of
the runs use --secure-agg, a fifth put two workers in their own network
namespaces behind tbf-shaped veth links (skipped, with the reason printed,
where namespaces cannot be made), and each run carries out 3 to 6 events
(SIGKILL or SIGSTOP of a worker or of the chief, a cut toward either side, a
stall or a delay in a fault proxy) at random moments. Each run is checked by
``fedsock.testing.chaos.run_chaos`` (finished within --bound seconds, no round
lost, repeated or corrupted).

Prints one JSON object per run, then a summary JSON object as the last line;
exits 1 if any run failed. Run directories of passing runs are deleted
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedsock.testing.chaos import run_chaos  # noqa: E402
from fedsock.testing.chaosplan import PROXY_EVENTS, plan_run  # noqa: E402
from fedsock.testing.netlinks import unavailable  # noqa: E402


def summarize(results: list[dict], netns_skipped: str | None, base: Path) -> dict:
    faults: Counter[str] = Counter()
    struck: Counter[str] = Counter()
    for r in results:
        faults.update(r["faults"])
        struck.update({k: v for k, v in r["proxy"].items() if k in ("cuts_up", "cuts_down", "stalls")})
    slowest = max(results, key=lambda r: r["seconds"])
    return {
        "summary": True, "runs": len(results), "passed": sum(r["ok"] for r in results),
        "kills": {k: sum(r["kills"][k] for r in results) for k in ("worker", "chief")},
        "stops": {k: sum(r["stops"][k] for r in results) for k in ("worker", "chief")},
        "faults": {k: faults[k] for k in PROXY_EVENTS},
        "faults_struck": dict(struck), "delayed_pieces": sum(r["proxy"]["delayed"] for r in results),
        "events_skipped": sum(r["events_skipped"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "netns_runs": sum(r["netns"] for r in results), "netns_skipped": netns_skipped,
        "secure_runs": sum(r["secure"] for r in results),
        "rounds": sum(r["rounds_completed"] for r in results),
        "rounds_lost": sum(r["rounds_lost"] for r in results),
        "rounds_repeated": sum(r["rounds_repeated"] for r in results),
        "corrupted_rounds": sum(r["corrupted_rounds"] for r in results),
        "slowest_run": {"seed": slowest["seed"], "seconds": slowest["seconds"]},
        "median_seconds": sorted(r["seconds"] for r in results)[len(results) // 2],
        "bound_seconds": results[0]["bound"],
        "failures": [{"seed": r["seed"], "reasons": r["failures"]} for r in results if not r["ok"]],
        "workdir": str(base),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--bound", type=float, default=90.0, help="wall-clock seconds a run may take (enforced)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the directories of passing runs too")
    args = p.parse_args()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="fedsock-chaos-"))
    netns_skipped = unavailable()
    if netns_skipped:
        print(json.dumps({"netns": "skipped", "reason": netns_skipped}), flush=True)
    results = []
    for seed in range(args.first_seed, args.first_seed + args.runs):
        d = base / f"run-{seed}"
        shutil.rmtree(d, ignore_errors=True)
        plan = plan_run(seed, rounds=args.rounds, netns=False if netns_skipped else None)
        r = run_chaos(d, plan, bound=args.bound)
        results.append(r)
        print(json.dumps(r), flush=True)
        if r["ok"] and not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    summary = summarize(results, netns_skipped, base)
    print(json.dumps(summary), flush=True)
    return 0 if summary["passed"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
