"""Run the round benchmark through fedsock, the raw TLS floor and Flower side by side.

    python bench/compare.py [--configs 4x1M,16x1M,4x10M,8x10M,4x25M] [--rounds 5] [--compress none]

For each configuration (workers x parameters) the three systems run one
after the other (interleaved, so machine noise hits them alike). Prints one
JSON object per run, then a summary object with the ratios (fedsock / floor,
Flower / fedsock) and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="4x1M,16x1M,4x10M,8x10M,4x25M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compress", default="none")
    ap.add_argument("--no-flower", action="store_true")
    a = ap.parse_args()
    rows = []
    for text in a.configs.split(","):
        k, p = parse_config(text)
        floor = tls_floor.bench(k, p, a.rounds)
        print(json.dumps(floor), flush=True)
        fs = fedsock_round.bench(k, p, a.rounds, a.compress)
        print(json.dumps(fs), flush=True)
        fl = {"skipped": "--no-flower"} if a.no_flower else flower_round.bench(k, p, a.rounds)
        print(json.dumps(fl), flush=True)
        rows.append({
            "config": text, "model_mib": fs["model_mib"],
            "floor_s": floor["round_s_median"], "fedsock_s": fs["round_s_median"],
            "flower_s": fl.get("round_s_median"),
            "fedsock_over_floor": round(float(fs["round_s_median"]) / float(floor["round_s_median"]), 2),
            "flower_over_fedsock": (round(float(fl["round_s_median"]) / float(fs["round_s_median"]), 1)
                                    if "round_s_median" in fl else None),
            "fedsock_rss_mib": fs["chief_peak_rss_mib"], "rss_budget_mib": fs["rss_budget_mib"],
            "floor_rss_mib": floor["server_peak_rss_mib"], "flower_rss_mib": fl.get("server_peak_rss_mib"),
        })
    print(json.dumps({"summary": rows}), flush=True)
    print("| workers x params | model MiB | TLS floor s | fedsock s | Flower s | fedsock/floor | Flower/fedsock"
          " | fedsock chief RSS MiB (budget) | Flower server RSS MiB |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['config']} | {r['model_mib']} | {r['floor_s']} | {r['fedsock_s']} | {r['flower_s']} | "
              f"{r['fedsock_over_floor']} | {r['flower_over_fedsock']} | {r['fedsock_rss_mib']} "
              f"({r['rss_budget_mib']}) | {r['flower_rss_mib']} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
