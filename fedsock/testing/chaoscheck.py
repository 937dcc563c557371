"""The checks of a chaos run, from what it left on disk (no processes).

The chief keeps every round's checkpoint (``--keep-checkpoints`` >= rounds)
and its metrics.jsonl; each worker keeps a copy of every update it sent
(``--save-updates <updates>/<name>``). Workers are numpy workers: worker
``p``'s update for round ``r`` is the model it holds plus
``step_for(p, r)``. ``check_run`` then tells, for the finished run:

* **lost**: a round missing from metrics.jsonl or from the checkpoints, or
  a round seen checkpointed during the run that the final record lacks;
* **repeated**: a round in metrics.jsonl more than once, a round whose line
  changed after its checkpoint was seen (it was redone after it had been
  recorded), or a checkpoint carrying another attempt's line;
* **corrupted**: a round whose checkpointed model is not the weighted mean
  of the saved updates of the workers its line names (by their saved
  ``num_examples``, which must add up to its ``examples``), within the
  bound (float32 rounding; plus the fixed-point error under secure
  aggregation); or whose workers trained from a model other than the
  previous round's checkpoint (what was published); or a final model that
  is not the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import checkpoint
from fedsock.errors import ConfigError
from fedsock.secagg import fixedpoint
from fedsock.testing.numpy_worker import step_for


def metrics_rows(state: Path) -> list[dict[str, Any]]:
    """The lines of ``state/metrics.jsonl`` (a torn last line is skipped)."""
    path = state / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def checkpointed(state: Path) -> list[int]:
    """Rounds with a checkpoint file, oldest first."""
    d = state / "checkpoints"
    return sorted(int(f.stem.split("-")[1]) for f in d.glob("round-*.fsck")) if d.is_dir() else []


class Watch:
    """Polled during the run: the metrics 'time' of every round once its checkpoint exists."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.recorded: dict[int, float] = {}

    def poll(self) -> None:
        done = set(checkpointed(self.state))
        for row in metrics_rows(self.state):
            if row["round"] in done and row["round"] not in self.recorded:
                self.recorded[row["round"]] = row["time"]


def bound(expected: np.ndarray, secure: bool) -> float:
    """What the published model may differ from the float64 weighted mean by, per element."""
    ulp = float(np.spacing(np.float32(np.max(np.abs(expected))))) if expected.size else 0.0
    return ulp + (fixedpoint.MAX_ERROR if secure else 0.0)


def _update(updates: Path, name: str, round_: int) -> tuple[int, list[np.ndarray]] | str:
    path = updates / name / f"round-{round_:06d}.npz"
    try:
        with np.load(path) as f:
            return int(f["num_examples"]), [f[k] for k in sorted(f.files) if k != "num_examples"]
    except (OSError, ValueError, KeyError) as exc:
        return f"{name}'s saved update of round {round_} is unreadable ({exc})"


def check_round(row: dict[str, Any], ckpt: checkpoint.Checkpoint, previous: list[np.ndarray],
                updates: Path, shapes: list[tuple[int, ...]], secure: bool) -> list[str]:
    """Why round ``row['round']``'s checkpoint is not the mean of its updates (empty: it is)."""
    r, problems = row["round"], []
    got = [np.asarray(w) for w in ckpt.weights]
    total, acc = 0, [np.zeros(s, np.float64) for s in shapes]
    for name in row["participants"]:
        saved = _update(updates, name, r)
        if isinstance(saved, str):
            return [saved]
        n, tensors = saved
        for i, (t, prev, step) in enumerate(zip(tensors, previous, step_for(name, r, shapes))):
            if not np.array_equal(t, prev + step):
                off = float(np.max(np.abs(t.astype(np.float64) - (prev + step))))
                problems.append(f"round {r}: {name} trained tensor {i} from a model that is not round {r - 1}'s "
                                f"checkpoint (off by up to {off:.3g})")
        total += n
        for a, t in zip(acc, tensors):
            a += n * t.astype(np.float64)
    if total != row["examples"]:
        problems.append(f"round {r}: its line says {row['examples']} examples, the saved updates of "
                        f"{row['participants']} hold {total}")
    for i, (a, g) in enumerate(zip(acc, got)):
        expected = a / max(total, 1)
        err = float(np.max(np.abs(g.astype(np.float64) - expected)))
        if err > bound(expected, secure):
            problems.append(f"round {r}: tensor {i} is off the weighted mean of its updates by {err:.3g} "
                            f"(bound {bound(expected, secure):.3g})")
    return problems


def check_run(state: Path, updates: Path, rounds: int, shapes: list[tuple[int, ...]], secure: bool,
              watch: Watch | None = None) -> dict[str, Any]:
    """The run's verdicts: ``lost``, ``repeated``, ``corrupted`` (lists of rounds) and ``problems``."""
    rows = metrics_rows(state)
    seen = [row["round"] for row in rows]
    by_round = {row["round"]: row for row in rows}
    files = set(checkpointed(state))
    lost = sorted({r for r in range(1, rounds + 1) if r not in by_round or r not in files}
                  | {r for r in (watch.recorded if watch else {}) if r not in by_round})
    repeated = {r for r in seen if seen.count(r) > 1}
    problems: list[str] = [f"round {r} is missing from {'metrics.jsonl' if r not in by_round else 'checkpoints'}"
                           for r in lost]
    for r, t in (watch.recorded if watch else {}).items():
        if r in by_round and by_round[r]["time"] != t:
            repeated.add(r)
            problems.append(f"round {r} was recorded and checkpointed, then redone")
    corrupted: set[int] = set()
    previous = [np.zeros(s, np.float32) for s in shapes]
    for r in range(1, rounds + 1):
        if r not in by_round or r not in files:
            continue
        try:
            ckpt = checkpoint.load(checkpoint.round_path(state / "checkpoints", r))
        except ConfigError as exc:
            corrupted.add(r)
            problems.append(str(exc))
            continue
        last = ckpt.meta.get("last_row")
        if isinstance(last, str) and json.loads(last).get("time") != by_round[r]["time"]:
            repeated.add(r)
            problems.append(f"round {r}: its checkpoint carries another attempt's metrics line")
        found = check_round(by_round[r], ckpt, previous, updates, shapes, secure)
        if found:
            corrupted.add(r)
            problems += found
        previous = [np.asarray(w) for w in ckpt.weights]
    final = state / "final_weights.npz"
    if final.exists() and rounds in files:
        with np.load(final) as f:
            if not all(np.array_equal(f[k], p) for k, p in zip(sorted(f.files), previous)):
                corrupted.add(rounds)
                problems.append("final_weights.npz is not the last round's checkpoint")
    elif rounds in files:
        problems.append("no final_weights.npz")
    return {"rounds_completed": len(set(seen)), "lost": lost, "repeated": sorted(repeated),
            "corrupted": sorted(corrupted), "problems": problems}
