"""The final evaluation on the chief: each worker's report on the final model, and their average.

After the last round the chief's ``Done`` asks every worker that can answer
(Hello capability ``"eval"``) for a report (``Done.report``: the seconds it
waits). Each worker evaluates the final model on its validation split and,
with ``--personalize-epochs``, once more after fine-tuning a copy of it, and
sends one ``EvalResult`` with ``final`` true: ``val_*`` with ``val_examples``,
and ``personalized_val_*`` with ``personalized_val_examples``. ``FinalReports``
keeps them (one per worker, only from workers asked, within ``KEPT_METRICS``)
until every worker asked has reported or hung up, or ``--final-eval-timeout``
has passed; ``summarize`` makes ``final_evaluation.json`` of them and
``table`` the log's table. With ``--secure-agg`` nobody is asked: the chief
must not see per-worker values, and the file holds only what the chief has
itself (its holdout metrics, if any).

Nothing here does I/O except ``write``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsock.checkpoint import atomic_write
from fedsock.chief.evaluation import VAL, VAL_EXAMPLES, WorkerMetrics
from fedsock.errors import ErrorCode, RemoteProtocolError

#: Prefix of the metrics a worker measured after fine-tuning the final model locally.
PERSONAL = "personalized_"
#: The file in the state dir.
FILENAME = "final_evaluation.json"


@dataclass
class FinalReports:
    """Who was asked for a final report, and what each sent.

    Args:
        timeout: seconds from the first Done that asked to the end of the wait.
    """

    timeout: float
    expected: dict[int, str] = field(default_factory=dict)  # worker -> name
    deadline: float | None = None
    _kept: WorkerMetrics = field(default_factory=WorkerMetrics)
    _reported: set[int] = field(default_factory=set)

    def expect(self, worker: int, name: str, now: float) -> None:
        """``worker``'s Done asked for a report (sent at ``now``)."""
        self.expected[worker] = name
        if self.deadline is None:
            self.deadline = now + self.timeout

    def add(self, worker: int, metrics: Mapping[str, float]) -> None:
        """``worker``'s final report: its ``val_*`` and ``personalized_val_*`` metrics are kept.

        Raises:
            RemoteProtocolError: ``out_of_order``: it was not asked, or it reported already.
        """
        if worker not in self.expected or worker in self._reported:
            raise RemoteProtocolError("a final EvalResult the chief did not ask for (it asks once, in Done)",
                                      code=ErrorCode.OUT_OF_ORDER)
        self._reported.add(worker)
        self._kept.put(0, worker, 0, {k: v for k, v in metrics.items() if k.startswith((VAL, PERSONAL + VAL))})

    def pending(self, live: Iterable[int]) -> set[int]:
        """Workers asked, still connected, that have not reported."""
        return (set(self.expected) & set(live)) - self._reported

    def waiting(self, live: Iterable[int], now: float) -> bool:
        """Whether the chief still waits: someone asked is connected without having reported, before the deadline."""
        return self.deadline is not None and now < self.deadline and bool(self.pending(live))

    def reports(self) -> dict[str, dict[str, float]]:
        """The reports by worker name (a report without values is left out)."""
        kept = self._kept.get(0, tuple(self.expected))
        return {self.expected[w]: dict(ev.metrics) for w, ev in kept.items()}

    def missing(self) -> list[str]:
        """Names of the workers asked that sent no report."""
        return sorted(n for w, n in self.expected.items() if w not in self._reported)


def _weighted(rows: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Each metric averaged over the rows that have it, weighted by the rows' examples."""
    out = {}
    for name in sorted({k for m, _ in rows for k in m}):
        pairs = [(m[name], n) for m, n in rows if name in m]
        total = sum(n for _, n in pairs)
        if total > 0:
            out[name] = sum(v * n for v, n in pairs) / total
    return out


def _strip(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and k != prefix + "examples"}


def summarize(round_: int, reports: Mapping[str, Mapping[str, float]], missing: Iterable[str] = (),
              holdout: Mapping[str, float] | None = None, secure_agg: bool = False) -> dict[str, Any]:
    """The content of ``final_evaluation.json`` (docs/evaluation.md).

    Args:
        round_: the final model's round.
        reports: each worker's report (``val_*``, ``personalized_val_*`` and their ``*examples``).
        missing: the workers asked that sent no report in time.
        holdout: the chief's own metrics of the final model (``--eval-data``).
        secure_agg: the run used secure aggregation (nobody was asked).
    """
    workers: dict[str, Any] = {}
    final_rows, personal_rows = [], []
    for name, m in sorted(reports.items()):
        examples = int(m.get(VAL_EXAMPLES, 0))
        entry: dict[str, Any] = {"examples": examples, "final": _strip(m, VAL)}
        final_rows.append((entry["final"], float(examples)))
        personal = _strip(m, PERSONAL + VAL)
        if personal:
            n = int(m.get(PERSONAL + VAL_EXAMPLES, examples))
            entry["personalized"], entry["personalized_examples"] = personal, n
            personal_rows.append((personal, float(n)))
        workers[name] = entry
    federated: dict[str, Any] = {"workers": len(final_rows), "examples": int(sum(n for _, n in final_rows)),
                                 "final": _weighted(final_rows)}
    if personal_rows:
        federated.update(personalized=_weighted(personal_rows), personalized_workers=len(personal_rows),
                         personalized_examples=int(sum(n for _, n in personal_rows)))
    return {"round": round_, "secure_agg": secure_agg, "workers": workers, "missing": sorted(missing),
            "federated": federated if workers else None, "holdout": dict(holdout or {})}


def _headline(summary: Mapping[str, Any]) -> str | None:
    names = {k for w in summary["workers"].values() for k in w["final"]}
    return next((m for m in ("accuracy", "loss") if m in names), min(names) if names else None)


def table(summary: Mapping[str, Any], timeout: float) -> str:
    """The log's table: one row per worker (name, examples, final and personalized headline metric),
    then the federated row."""
    head = f"final evaluation of the model of round {summary['round']}"
    if summary["secure_agg"]:
        text = (f"{head}: with --secure-agg the workers keep their evaluation of the final model to themselves "
                "(each logs its own)")
        return text + "".join(f"; holdout {k} {v:.4f}" for k, v in sorted(summary["holdout"].items()))
    metric = _headline(summary)
    if metric is None:
        lines = [f"{head}: no worker reported validation metrics"]
    else:
        lines = [f"{head} on the workers' validation splits:",
                 f"  {'worker':<24} {'examples':>8} {'final ' + metric:>16} {'personalized ' + metric:>24}"]
        rows = [(n, w["examples"], w["final"], w.get("personalized", {})) for n, w in summary["workers"].items()]
        fed = summary["federated"]
        rows.append(("federated", fed["examples"], fed["final"], fed.get("personalized", {})))
        for name, n, final, personal in rows:
            lines.append(f"  {name:<24} {n:>8} {_cell(final.get(metric)):>16} {_cell(personal.get(metric)):>24}")
    if summary["missing"]:
        lines.append(f"  no report within {timeout:g} s from: {', '.join(summary['missing'])}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write(state_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``final_evaluation.json`` atomically (0600, like every file of the state dir)."""
    path = state_dir / FILENAME
    atomic_write(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return path
