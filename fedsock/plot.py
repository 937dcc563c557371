"""``fedsock plot STATE_DIR``: a chief's ``metrics.jsonl`` as a PNG, for people without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsock.errors import ConfigError

#: Fields of a row that are run counters, not holdout metrics.
COUNTERS = {"round", "workers", "examples", "seconds", "bytes_in", "bytes_out", "time", "participants",
            "fraction", "sampled"}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``.

    Raises:
        ConfigError: missing, empty or unreadable file (naming the bad line).
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist: is this a chief's --state-dir, and has a round finished?")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{i} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ConfigError(f"{path}:{i} is not a metrics row (no integer 'round')")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path} has no rounds yet")
    return rows


def plot_metrics(state_dir: Path, out: Path | None = None) -> Path:
    """Render holdout metrics, round time, traffic and participants per round to a PNG.

    Returns:
        The PNG's path (default ``<state_dir>/metrics.png``).

    Raises:
        ConfigError: no usable metrics.jsonl.
    """
    rows = read_metrics(Path(state_dir) / "metrics.jsonl")
    out = Path(out) if out is not None else Path(state_dir) / "metrics.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    holdout = sorted({k for r in rows for k, v in r.items()
                      if k not in COUNTERS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    for key in holdout:
        ax.plot(rounds, [r.get(key, float("nan")) for r in rows], marker="o", label=key)
    ax.set_title("holdout metrics" if holdout else "holdout metrics (none: run the chief with --eval-data)")
    if holdout:
        ax.legend()
    ax = axes[0][1]
    ax.plot(rounds, [r.get("seconds", float("nan")) for r in rows], marker="o")
    ax.set_title("seconds per round")
    ax = axes[1][0]
    ax.plot(rounds, [r.get("bytes_in", 0) / 1e6 for r in rows], marker="o", label="in")
    ax.plot(rounds, [r.get("bytes_out", 0) / 1e6 for r in rows], marker="o", label="out")
    ax.set_title("MB per round")
    ax.legend()
    ax = axes[1][1]
    ax.plot(rounds, [r.get("workers", 0) for r in rows], marker="o")
    ax.set_title("participants per round")
    for a in axes.flat:
        a.set_xlabel("round")
        a.grid(alpha=0.3)
    fig.suptitle(f"fedsock chief {state_dir}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
