"""Run the round benchmark through fedsock, the raw TLS floor and Flower side by side.

    python bench/compare.py [--configs 4x1M,16x1M,4x10M,8x10M,4x25M] [--rounds 5] [--trials 3]
                            [--compress none] [--no-flower] [--no-duties] [--flower-python PY] [--baseline DIR]

For each configuration (workers x parameters) the floor and fedsock run
``--trials`` times, alternately (floor, fedsock, floor, fedsock, ...), so that
a noisy stretch of the machine hits both alike; Flower runs once insecure
(its legacy default and best case) and once over TLS (its rounds take
seconds; ``--flower-python`` names an interpreter that has ``flwr``). A system's round time is the
median over all its timed rounds of all trials. Each trial also runs the
floor with the chief's duties (``tls_floor.py --duties``: staging, the NaN/Inf
check, a float64 sum, a checkpoint fsynced before the model's end), the same
minute of the machine: what fedsock's guarantees alone cost over the floor,
apart from its own code. With ``--baseline DIR`` (another checkout of fedsock, e.g. a
``git worktree`` of the previous commit), each trial also runs that
checkout's ``bench/fedsock_round.py`` right after this one's, and the summary
gives both ratios to the floor and their quotient, per trial too: a no-regression
check taken in one run (with the same commit on both sides, it measures the
machine's noise). Prints one JSON object per run, then a summary object with the
ratios (fedsock / floor, Flower / fedsock), the spread of the per-trial ratio,
and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fedsock_round  # noqa: E402
import flower_round  # noqa: E402
import tls_floor  # noqa: E402


def parse_config(text: str) -> tuple[int, int]:
    k, _, p = text.lower().partition("x")
    mult = {"k": 1_000, "m": 1_000_000}.get(p[-1], 1)
    return int(k), int(float(p.rstrip("km")) * mult)


def per_trial(runs: list[dict[str, object]], floors: list[dict[str, object]]) -> list[float]:
    """Each trial's median round time in ``runs`` over the same trial's in ``floors``."""
    return [round(float(r["round_s_median"]) / float(f["round_s_median"]), 2)  # type: ignore[arg-type]
            for r, f in zip(runs, floors)]


def baseline_bench(tree: Path, workers: int, params: int, rounds: int, compress: str) -> dict[str, object]:
    """``bench/fedsock_round.py`` of another checkout, in its own process with that tree importable."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(tree / "bench" / "fedsock_round.py"), "--workers", str(workers),
                          "--params", str(params), "--rounds", str(rounds), "--compress", compress],
                         env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["system"] = f"fedsock@{tree.name}"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="4x1M,16x1M,4x10M,8x10M,4x25M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--compress", default="none")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--no-duties", action="store_true", help="skip the floor with the chief's duties")
    ap.add_argument("--flower-python", help="an interpreter that has flwr (default: this one)")
    ap.add_argument("--baseline", type=Path, help="another fedsock checkout to run alternately with this one")
    a = ap.parse_args()
    rows = []
    for text in a.configs.split(","):
        k, p = parse_config(text)
        floors, runs, bases, duties = [], [], [], []
        sides = ["this", *(["base"] if a.baseline is not None else []), *([] if a.no_duties else ["duties"])]
        for trial in range(a.trials):
            floors.append(tls_floor.bench(k, p, a.rounds))
            print(json.dumps(floors[-1]), flush=True)
            # the other runs take turns after the floor, so none always runs right after it
            for side in sides[trial % len(sides):] + sides[:trial % len(sides)]:
                if side == "duties":
                    duties.append(tls_floor.bench(k, p, a.rounds, duties=True))
                    print(json.dumps(duties[-1]), flush=True)
                elif side == "this":
                    runs.append(fedsock_round.bench(k, p, a.rounds, a.compress))
                    print(json.dumps(runs[-1]), flush=True)
                else:
                    bases.append(baseline_bench(a.baseline.resolve(), k, p, a.rounds, a.compress))
                    print(json.dumps(bases[-1]), flush=True)
        fl = {"skipped": "--no-flower"} if a.no_flower else flower_round.bench(k, p, a.rounds,
                                                                              python=a.flower_python)
        print(json.dumps(fl), flush=True)
        fl_tls = {"skipped": "--no-flower"} if a.no_flower else flower_round.bench(k, p, a.rounds, tls=True,
                                                                                  python=a.flower_python)
        print(json.dumps(fl_tls), flush=True)
        floor_s = statistics.median(t for r in floors for t in r["round_s"])
        fedsock_s = statistics.median(t for r in runs for t in r["round_s"])
        extra: dict[str, object] = {}
        if duties:
            duties_s = statistics.median(t for r in duties for t in r["round_s"])  # type: ignore[attr-defined]
            extra = {"duties_s": round(duties_s, 4), "duties_over_floor": round(duties_s / floor_s, 2),
                     "duties_over_floor_per_trial": per_trial(duties, floors),
                     "fedsock_over_duties": round(fedsock_s / duties_s, 2)}
        if bases:
            base_s = statistics.median(t for r in bases for t in r["round_s"])  # type: ignore[attr-defined]
            extra |= {"baseline_s": round(base_s, 4), "baseline_over_floor": round(base_s / floor_s, 2),
                      "baseline_over_floor_per_trial": per_trial(bases, floors),
                      "this_over_baseline": round(fedsock_s / base_s, 3),
                      "this_over_baseline_per_trial": per_trial(runs, bases)}
        rows.append({
            "config": text, "model_mib": runs[0]["model_mib"], "trials": a.trials,
            "floor_s": round(floor_s, 4), "fedsock_s": round(fedsock_s, 4),
            "flower_s": fl.get("round_s_median"), "flower_tls_s": fl_tls.get("round_s_median"),
            "fedsock_over_floor": round(fedsock_s / floor_s, 2),
            "fedsock_over_floor_per_trial": per_trial(runs, floors),
            "flower_over_fedsock": (round(float(fl["round_s_median"]) / fedsock_s, 1)
                                    if "round_s_median" in fl else None),
            "flower_tls_over_fedsock": (round(float(fl_tls["round_s_median"]) / fedsock_s, 1)
                                        if "round_s_median" in fl_tls else None),
            "fedsock_rss_mib": max(r["chief_peak_rss_mib"] for r in runs),
            "rss_budget_mib": runs[0]["rss_budget_mib"],
            "floor_rss_mib": max(f["server_peak_rss_mib"] for f in floors),
            "flower_rss_mib": fl.get("server_peak_rss_mib"), "flower_tls_rss_mib": fl_tls.get("server_peak_rss_mib"),
            **extra,
        })
    print(json.dumps({"summary": rows}), flush=True)
    print("| workers x params | model MiB | TLS floor s | floor + duties s | fedsock s | Flower s (insecure) |"
          " Flower s (TLS) | fedsock/floor (per trial) | duties/floor (per trial) | Flower TLS/fedsock |"
          " fedsock chief RSS MiB (budget) | Flower server RSS MiB (TLS) |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        trials = ", ".join(f"{x:.2f}" for x in r["fedsock_over_floor_per_trial"])
        dtrials = ", ".join(f"{x:.2f}" for x in r.get("duties_over_floor_per_trial", []))
        print(f"| {r['config']} | {r['model_mib']} | {r['floor_s']} | {r.get('duties_s')} | {r['fedsock_s']} | "
              f"{r['flower_s']} | {r['flower_tls_s']} | **{r['fedsock_over_floor']}** ({trials}) | "
              f"{r.get('duties_over_floor')} ({dtrials}) | {r['flower_tls_over_fedsock']} | "
              f"{r['fedsock_rss_mib']} ({r['rss_budget_mib']}) | {r['flower_tls_rss_mib']} |", file=sys.stderr)
    if any("this_over_baseline" in r for r in rows):
        print("\n| workers x params | this/floor (per trial) | baseline/floor (per trial) | this/baseline"
              " (per trial) |", file=sys.stderr)
        print("|---|---|---|---|", file=sys.stderr)
        for r in rows:
            mine = ", ".join(f"{x:.2f}" for x in r["fedsock_over_floor_per_trial"])
            base = ", ".join(f"{x:.2f}" for x in r["baseline_over_floor_per_trial"])
            quot = ", ".join(f"{x:.2f}" for x in r["this_over_baseline_per_trial"])
            print(f"| {r['config']} | {r['fedsock_over_floor']} ({mine}) | {r['baseline_over_floor']} ({base}) | "
                  f"{r['this_over_baseline']} ({quot}) |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
