#!/usr/bin/env python3
"""Soak: one chief, churning workers, for an hour; is anything of the chief growing?

    nice -n 19 python bench/soak.py --seconds 3600 --png docs/soak.png > soak.json

Starts a real chief (``chief.py``, TLS on 127.0.0.1, no ``--model``, a run of
practically unlimited rounds) and one process of ``--workers`` numpy workers
(``python -m fedsock.testing.soak``: real ``fedsock.Client``s, a model of
``--params`` float32s), each of which joins, syncs 2-6 rounds ``--pace``
seconds apart, leaves (half of them with an Error ``shutdown``, half by just
closing), stays away 0.5-3 s and joins again under the same name.

Every ``--every`` seconds (default 60; 5 for runs under 10 minutes) it samples
the chief's resident memory, open file descriptors, threads and state dir
(metrics.jsonl apart). At the end the workers stop, the chief gets SIGTERM,
and the script prints one JSON object: the series, the least-squares slope of
each over the last 80% of the samples with its threshold (``fedsock.testing.soak.
Thresholds``), what the workers did, and ``pass``. The run also stops after
``--max-rounds`` rounds. With ``--png``, the series are drawn with their
fitted lines (matplotlib, Agg). Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedsock.testing.soak import SERIES, Sample, Thresholds, as_json, judge, run  # noqa: E402

KEEP_CHECKPOINTS = 3
LABELS = {"rss_mib": "resident memory (MiB)", "fds": "open file descriptors", "threads": "threads",
          "state_bytes_other": "state dir without metrics.jsonl (KiB)", "metrics_bytes": "metrics.jsonl (KiB)"}


def draw(samples: list[Sample], verdict: dict, path: Path, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(SERIES), 1, figsize=(7, 1.7 * len(SERIES)), sharex=True)
    t = np.array([s.t for s in samples]) / 60
    start = int(len(samples) * warmup)
    for ax, name in zip(axes, SERIES):
        scale = 1024 if name.endswith("bytes") or name.endswith("_other") else 1
        y = np.array([float(getattr(s, name)) for s in samples]) / scale
        ax.plot(t, y, ".-", ms=3, lw=0.8)
        v = verdict[name]
        if len(t) - start >= 2:
            tt, yy = t[start:], y[start:]
            k, b = np.polyfit(tt, yy, 1)
            ax.plot(tt, k * tt + b, "r--", lw=1)
        unit = "KiB" if scale == 1024 else ("MiB" if name == "rss_mib" else "")
        per_h = v["slope_per_hour"] / scale
        mark = "" if v["pass"] is None else ("  pass" if v["pass"] else "  FAIL")
        ax.set_title(f"{LABELS[name]}: slope {per_h:+.3g} {unit}/h{mark}", fontsize=8, loc="left")
        ax.set_ylim(bottom=0, top=max(float(y.max()) * 1.15, 1e-9))
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("minutes (red: least-squares fit over the judged samples)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3600.0, help="how long to run (default 3600)")
    p.add_argument("--max-rounds", type=int, default=10_000, help="stop after this many rounds (default 10000)")
    p.add_argument("--every", type=float, default=None, help="seconds between samples (default 60; 5 if short)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--params", type=int, default=10_000, help="float32 parameters of the model (default 10000)")
    p.add_argument("--pace", type=float, default=0.5, help="seconds of pretended training per round (default 0.5)")
    p.add_argument("--png", type=Path, default=None, help="draw the series here")
    p.add_argument("--warmup", type=float, default=0.2, help="share of samples not judged (default 0.2)")
    args = p.parse_args()
    every = args.every or (60.0 if args.seconds >= 600 else 5.0)

    tmp = Path(tempfile.mkdtemp(prefix="fedsock-soak-"))
    result = run(tmp, args.seconds, every, max_rounds=args.max_rounds, workers=args.workers, params=args.params,
                 pace=args.pace, keep_checkpoints=KEEP_CHECKPOINTS)
    samples, tally = result.samples, result.workers
    verdict = judge(samples, Thresholds(), args.warmup, keep_checkpoints=KEEP_CHECKPOINTS)
    ok = bool(verdict["pass"]) and result.clean
    last = samples[-1] if samples else None
    report = {
        "seconds": round(last.t, 1) if last else 0, "every_s": every, "workers": args.workers,
        "params": args.params, "pace_s": args.pace, "keep_checkpoints": KEEP_CHECKPOINTS,
        "rounds": last.rounds if last else 0,
        "rounds_per_hour": round(last.rounds / last.t * 3600) if last and last.t else 0,
        "joins_per_hour": round(tally.get("joins", 0) / last.t * 3600) if last and last.t else 0,
        "worker_activity": tally, "chief_exit": result.chief_exit, "chief_log_errors": result.chief_log_errors,
        "verdict": verdict, "pass": ok, "series": as_json(samples),
    }
    if args.png is not None and samples:
        draw(samples, verdict, args.png, args.warmup)
        report["png"] = str(args.png)
    print(json.dumps(report))
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"soak failed; logs kept in {tmp}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
