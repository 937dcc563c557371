"""``fedsock demo``: a chief and workers as real processes on 127.0.0.1, real digits data."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedsock.data import Partition, split_digits
from fedsock.errors import FedsockError
from fedsock.quiet import quiet_environment

TARGET_ACCURACY = 0.93
#: Epochs each demo worker fine-tunes the final model locally for, to show what that adds.
PERSONALIZE_EPOCHS = 2
#: A worker's log lines with the final model's validation accuracy, before and after personalization.
FINAL = re.compile(r"final model on the local validation split: val_accuracy=([\d.]+)")
PERSONAL = re.compile(r"after (\d+) epochs of local fine-tuning.*personalized_val_accuracy=([\d.]+)")
#: A per-round line of the chief's plain display (round number, then workers).
ROW = re.compile(r"^\s*\d+\s+\d+\s")


def wait_for_address(state_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> str:
    """Wait until a chief started on ``state_dir`` listens; return ``host:port``.

    Raises:
        FedsockError: the chief exited or did not listen within ``timeout``.
    """
    addr = state_dir / "chief.addr"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if addr.exists() and addr.read_text().strip():
            return addr.read_text().strip()
        if proc.poll() is not None:
            raise FedsockError(f"the chief exited with code {proc.returncode} before listening")
        time.sleep(0.1)
    raise FedsockError(f"the chief did not start listening within {timeout:g} s")


def wait_for_token(state_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The join token of a chief starting on ``state_dir``.

    The chief writes ``<state-dir>/token`` first thing, before it loads
    TensorFlow and the model: workers can start importing TensorFlow while
    the chief still does.

    Raises:
        FedsockError: the chief exited or wrote no token within ``timeout``.
    """
    path = state_dir / "token"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):  # written whole, newline last
            return text.strip()
        if proc.poll() is not None:
            raise FedsockError(f"the chief exited with code {proc.returncode} before writing its token")
        time.sleep(0.05)
    raise FedsockError(f"the chief wrote no token within {timeout:g} s")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for the demo's chief, so that workers know it before it listens)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_demo(workdir: Path, workers: int, rounds: int, partition: str, seed: int) -> int:
    """Run the demo; returns 0 if the final holdout accuracy reaches the target.

    The chief and the workers start together (the workers import TensorFlow
    while the chief does, and join when it listens); the chief's per-round
    lines are relayed, the first one with the seconds since the demo started.
    """
    start = time.monotonic()
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    shards, state = workdir / "shards", workdir / "chief"
    sizes = split_digits(shards, workers, Partition.parse(partition), seed=seed)
    print(f"digits split {partition} into {workers} worker shards "
          f"({', '.join(str(sizes[f'worker-{i}']) for i in range(workers))} examples) "
          f"+ {sizes['holdout']} holdout", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    quiet_environment(env)
    py = [sys.executable, "-m", "fedsock"]
    state.mkdir(parents=True)
    address = f"127.0.0.1:{free_port()}"
    chief_log = open(workdir / "chief.log", "wb")
    chief = subprocess.Popen(
        py + ["chief", "--host", "127.0.0.1", "--port", address.rpartition(":")[2], "--state-dir", str(state),
              "--rounds", str(rounds), "--min-workers", str(workers), "--round-timeout", "60",
              "--model", "fedsock.models:digits_mlp", "--eval-data", str(shards / "holdout"),
              "--sync-every", "10", "--batch-size", "32", "--progress", "plain"],
        env=env, stdout=subprocess.PIPE, stderr=chief_log,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env["FEDSOCK_TOKEN"] = wait_for_token(state, chief)
        print(f"chief starting on {address} (TLS 1.3); starting {workers} workers meanwhile; "
              f"logs in {workdir}/*.log", flush=True)
        for i in range(workers):
            log = open(workdir / f"worker-{i}.log", "wb")
            procs.append(subprocess.Popen(
                py + ["worker", "--chief", address, "--data", str(shards / f"worker-{i}"),
                      "--name", f"demo-worker-{i}", "--personalize-epochs", str(PERSONALIZE_EPOCHS)],
                env=env, stdout=log, stderr=log))
        first_row = None
        assert chief.stdout is not None
        for raw in chief.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if first_row is None and ROW.match(line):
                first_row = time.monotonic() - start
                line += f"   <- first round done {first_row:.1f} s after the demo started"
            print(line, flush=True)
        code = chief.wait()
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in [chief, *procs]:
            if p.poll() is None:
                p.kill()
    wall = time.monotonic() - start
    bad = [i for i, p in enumerate(procs) if p.returncode != 0]
    if code != 0 or bad:
        print(f"demo failed: chief exit {code}, failed workers {bad}; see {workdir}/*.log", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]
    print(evaluation_table(rows))
    print(personalization_table({f"demo-worker-{i}": (workdir / f"worker-{i}.log").read_text(errors="replace")
                                 for i in range(workers)}))
    plot = workdir / "accuracy.png"
    _plot(rows, plot, f"fedsock demo: FedAvg on digits\n{workers} workers, {partition} split, {len(rows)} rounds, "
                     f"final accuracy {rows[-1].get('accuracy', float('nan')):.3f}")
    acc = rows[-1].get("accuracy", 0.0)
    print(f"final holdout accuracy {acc:.4f} after {rows[-1]['round']} rounds in {wall:.1f} s "
          f"(target {TARGET_ACCURACY}); plot {plot}; final model {state / 'final.keras'}")
    return 0 if acc >= TARGET_ACCURACY else 1


def evaluation_table(rows: list[dict[str, Any]]) -> str:
    """Each model's holdout accuracy next to its federated validation accuracy and worst worker, then each
    worker's validation accuracy of the last model they evaluated.

    The workers evaluate the model they receive before training on it, so round N's row holds their
    metrics of the model of round N - 1: the table lines them up by model.
    """
    by_model = {int(r.get("fed_model_round", r["round"] - 1)): r for r in rows if "fed_val_accuracy" in r}
    lines = [f"{'model':>5} {'holdout':>8} {'federated':>9} {'worst':>8}  worst worker"]
    for model in sorted({0, *(int(r["round"]) for r in rows)}):
        hold = next((r.get("accuracy") for r in rows if r["round"] == model), None)
        fed = by_model.get(model, {})
        cells = [f"{v:.4f}" if isinstance(v, float) else "-"
                 for v in (hold, fed.get("fed_val_accuracy"), fed.get("val_accuracy_worst"))]
        lines.append(f"{model:>5} {cells[0]:>8} {cells[1]:>9} {cells[2]:>8}  {fed.get('worst_worker', '-')}")
    if by_model:
        last = by_model[max(by_model)]
        lines.append(f"validation accuracy of each worker on the model of round {max(by_model)} "
                     "(its own validation split, never trained on):")
        width = max(len(n) for n in last["per_worker"])
        for name, m in sorted(last["per_worker"].items()):
            lines.append(f"  {name:<{width}} {m.get('val_accuracy', float('nan')):.4f} "
                         f"on {int(m.get('val_examples', 0))} examples")
    return "\n".join(lines)


def personalization_table(logs: dict[str, str]) -> str:
    """Each worker's validation accuracy of the final model and after fine-tuning it locally (from the
    lines its log ends with)."""
    width = max(6, *(len(n) for n in logs))
    lines = [f"final model on each worker's own validation split, and after {PERSONALIZE_EPOCHS} epochs of "
             "local fine-tuning:", f"  {'worker':<{width}} {'final':>7} {'personalized':>12}"]
    for name, text in sorted(logs.items()):
        final, personal = FINAL.search(text), PERSONAL.search(text)
        cells = [f"{float(m[m.lastindex or 0]):.4f}" if m else "-" for m in (final, personal)]
        lines.append(f"  {name:<{width}} {cells[0]:>7} {cells[1]:>12}")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rows], [r.get("accuracy", float("nan")) for r in rows], marker="o",
            label="holdout (chief)")
    fed = [r for r in rows if "fed_val_accuracy" in r]
    if fed:  # against the model they describe (the round before the row's)
        ax.plot([r.get("fed_model_round", r["round"] - 1) for r in fed], [r["fed_val_accuracy"] for r in fed],
                marker=".", label="federated validation (workers)")
    ax.axhline(TARGET_ACCURACY, color="gray", linestyle="--", label=f"target {TARGET_ACCURACY}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
