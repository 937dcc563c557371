"""``fedsock plot STATE_DIR``: a chief's ``metrics.jsonl`` as a PNG, for people without TensorBoard.

Every panel has whole-number round ticks. Losses and the other holdout
metrics (accuracy and the like, in [0, 1]) have panels of their own, so that
a loss of 2 does not flatten an accuracy curve. Counts and sizes (seconds, MB,
participants) are drawn from zero, so that a constant series is a flat line
and not noise magnified to fill the panel. Rows with federated evaluation
(``per_worker``) add two panels: the federated validation accuracy with the
worst and best worker, and each worker's validation accuracy, against the
round of the model they evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsock.errors import ConfigError

#: Fields of a row that are run counters, not holdout metrics.
COUNTERS = {"round", "workers", "examples", "seconds", "bytes_in", "bytes_out", "time", "participants",
            "fraction", "sampled", "epsilon", "dp_delta", "dp_noise", "dp_clip"}


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


def _evaluation(key: str) -> bool:
    """A federated-evaluation field (drawn in the per-worker panels, not among the holdout metrics)."""
    return key.startswith("fed_") or (key.startswith("val_") and key.rsplit("_", 1)[-1] in
                                      ("worst", "median", "best", "spread"))


def describe_run(rows: Sequence[dict[str, Any]]) -> str:
    """What ran, for a title: rounds, workers per round, and the last holdout accuracy if any."""
    workers = sorted({int(r["workers"]) for r in rows if isinstance(r.get("workers"), (int, float))})
    first, last = rows[0]["round"], rows[-1]["round"]
    parts = [f"rounds {first}-{last}" if first != last else f"round {first}"]
    if workers:
        span = str(workers[0]) if len(workers) == 1 else f"{workers[0]}-{workers[-1]}"
        parts.append(f"{span} worker{'s' if workers[-1] != 1 else ''} per round")
    if isinstance(rows[-1].get("accuracy"), (int, float)):
        parts.append(f"final holdout accuracy {rows[-1]['accuracy']:.3f}")
    if isinstance(rows[-1].get("fed_val_accuracy"), (int, float)):
        parts.append(f"federated {rows[-1]['fed_val_accuracy']:.3f}")
    return ", ".join(parts)


def build_figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """The figure of ``plot_metrics`` (a matplotlib ``Figure``, Agg backend), for saving or inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    metrics = sorted({k for r in rows for k, v in r.items() if k not in COUNTERS and not _evaluation(k)
                      and isinstance(v, (int, float)) and not isinstance(v, bool)})
    losses = [k for k in metrics if "loss" in k]
    scores = [k for k in metrics if "loss" not in k]
    evaluated = [r for r in rows if isinstance(r.get("per_worker"), dict) and r["per_worker"]]
    fig, axes = plt.subplots(4 if evaluated else 3, 2, figsize=(10, 12 if evaluated else 9))
    panels = {name: ax for name, ax in zip(("scores", "loss", "seconds", "mb", "workers", "examples",
                                            "federated", "per_worker"), axes.flat)}

    def series(ax: Any, keys: Sequence[str], scale: float = 1.0) -> None:
        for key in keys:
            ax.plot(rounds, [r[key] / scale if isinstance(r.get(key), (int, float)) else float("nan")
                             for r in rows], marker="o", label=key.removeprefix("bytes_"))
        if len(keys) > 1:
            ax.legend()

    ax = panels["scores"]
    series(ax, scores)
    hint = "the workers' validation is below" if evaluated else "run the chief with --eval-data"
    ax.set_title("holdout metrics" if scores else f"holdout metrics (none: {hint})")
    if scores and all(0 <= r.get(k, 0) <= 1 for r in rows for k in scores):
        ax.set_ylim(0, 1.02)
    ax = panels["loss"]
    series(ax, losses)
    ax.set_title("holdout loss" if losses else "holdout loss (none)")
    _from_zero(ax, [r.get(k, 0) for r in rows for k in losses])
    for name, keys, scale, label in (("seconds", ["seconds"], 1.0, "seconds per round"),
                                     ("mb", ["bytes_in", "bytes_out"], 1e6, "MB per round (in, out)"),
                                     ("workers", ["workers"], 1.0, "participants per round"),
                                     ("examples", ["examples"], 1.0, "examples per round")):
        ax = panels[name]
        series(ax, keys, scale)
        ax.set_title(label)
        _from_zero(ax, [r.get(k, 0) / scale for r in rows for k in keys])
    if evaluated:
        _evaluation_panels(panels["federated"], panels["per_worker"], evaluated)
    panels["workers"].yaxis.set_major_locator(MaxNLocator(integer=True))
    panels["examples"].yaxis.set_major_locator(MaxNLocator(integer=True))
    for a in axes.flat:
        a.set_xlabel("model of round" if a in (panels.get("federated"), panels.get("per_worker")) else "round")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.ticklabel_format(axis="y", useOffset=False, style="plain")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _evaluation_panels(fed: Any, per: Any, rows: Sequence[dict[str, Any]]) -> None:
    """The federated validation accuracy (worst to best worker shaded) and one line per worker."""
    x = [int(r.get("fed_model_round", r["round"] - 1)) for r in rows]

    def col(key: str, source: Sequence[dict[str, Any]]) -> list[float]:
        return [float(d[key]) if isinstance(d.get(key), (int, float)) else float("nan") for d in source]

    fed.plot(x, col("fed_val_accuracy", rows), marker="o", label="federated (weighted by validation examples)")
    if any(k in r for r in rows for k in ("val_accuracy_worst", "val_accuracy_best")):
        fed.fill_between(x, col("val_accuracy_worst", rows), col("val_accuracy_best", rows), alpha=0.25,
                         label="worst to best worker")
    if any("accuracy" in r for r in rows):
        fed.plot([r["round"] for r in rows], col("accuracy", rows), linestyle="--", label="holdout")
    fed.set_title("federated validation accuracy")
    fed.legend(fontsize="small")
    fed.set_ylim(0, 1.02)
    names = sorted({n for r in rows for n in r["per_worker"]})
    for name in names:
        per.plot(x, col("val_accuracy", [r["per_worker"].get(name, {}) for r in rows]), marker=".", label=name)
    per.set_title("validation accuracy per worker")
    per.set_ylim(0, 1.02)
    if len(names) <= 12:
        per.legend(fontsize="small")


def _from_zero(ax: Any, values: Sequence[float]) -> None:
    """Y from 0 to a little above the largest value: a constant series stays flat."""
    finite = [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
    top = max(finite, default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)


def plot_metrics(state_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Render holdout metrics, loss, round time, traffic, participants and examples per round to a PNG.

    Args:
        state_dir: the chief's ``--state-dir``.
        out: the PNG (default ``<state_dir>/metrics.png``).
        title: the figure's title (default: the state dir and what ran, from ``describe_run``).

    Returns:
        The PNG's path.

    Raises:
        ConfigError: no usable metrics.jsonl.
    """
    rows = read_metrics(Path(state_dir) / "metrics.jsonl")
    out = Path(out) if out is not None else Path(state_dir) / "metrics.png"
    fig = build_figure(rows, title or f"fedsock chief {state_dir}: {describe_run(rows)}")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
