"""What the chief shows while it runs: a live ``rich`` panel on a terminal, plain lines otherwise.

The chief hands a display immutable ``Snapshot``s (``update``) and one row
per finished round (``round_done``, through ``DisplayCallback``); the display
never reads the chief's state itself. ``PlainDisplay`` prints one line per round, for CI logs and
files; ``LiveDisplay`` redraws a small panel a few times a second and prints
the same per-round lines above it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedsock.chief.callbacks import ChiefCallback, RoundRecord, RunInfo

MODES = ("auto", "live", "plain")


@dataclass(frozen=True)
class Snapshot:
    """The chief's progress at one moment.

    Attributes:
        round: the round being collected (1-based; the last round once finished).
        rounds: rounds of the run.
        submitted: updates accepted for this round.
        participants: updates this round waits for in all (submitted + still training).
        connected: workers connected now.
        late: late updates dropped while this round was open.
        min_workers: updates a round needs to close.
        bytes_in: bytes of updates received, whole run.
        bytes_out: bytes of global models sent, whole run.
        opened_at: ``time.monotonic()`` at which the round opened; None while
            waiting for enough workers.
        last_seconds: duration of the last finished round.
        last_metrics: the last finished round's holdout metrics.
        eta_seconds: estimated seconds until the last round closes.
        federated: the last round's federated validation accuracy over the workers (None: none sent).
        worst: the worker with the lowest validation accuracy then, and its accuracy.
        finished: the run is over.
    """

    round: int
    rounds: int
    submitted: int = 0
    participants: int = 0
    connected: int = 0
    late: int = 0
    min_workers: int = 1
    bytes_in: int = 0
    bytes_out: int = 0
    opened_at: float | None = None
    last_seconds: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None
    federated: float | None = None
    worst: tuple[str, float] | None = None
    finished: bool = False


class Display(Protocol):
    """What the chief calls: ``update`` from its event loop, ``round_done`` from the thread that
    records the round (both may run at once: implementations swap immutable values only)."""

    def start(self) -> None: ...
    def update(self, snap: Snapshot) -> None: ...
    def round_done(self, row: dict[str, Any]) -> None: ...
    def stop(self) -> None: ...


def has_federated(row: dict[str, Any]) -> bool:
    """Whether a metrics.jsonl row has federated (workers' validation) metrics."""
    return "fed_val_accuracy" in row or "fed_val_loss" in row


def has_holdout(row: dict[str, Any]) -> bool:
    """Whether a metrics.jsonl row has the chief's holdout metrics (``--eval-data``)."""
    return "accuracy" in row or "loss" in row


def format_header(privacy: bool = False, federated: bool = False, holdout: bool = True) -> str:
    """The column names of the per-round lines.

    With ``privacy`` an epsilon column; with ``federated`` the workers' federated
    validation accuracy (``fed acc``) and the worst worker's (``worst``). Without
    ``holdout`` (no ``--eval-data``) the accuracy and loss columns are the federated ones.
    """
    if federated and not holdout:
        head = f"{'fed acc':>8} {'fed loss':>8} {'worst':>8}"
    else:
        head = f"{'accuracy':>8} {'loss':>8}" + (f" {'fed acc':>8} {'worst':>8}" if federated else "")
    return (f"{'round':>5} {'workers':>7} {'examples':>8} {head} "
            f"{'seconds':>7} {'MB in':>7} {'MB out':>7}" + (f" {'epsilon':>8}" if privacy else ""))


def _num(m: dict[str, Any], key: str) -> str:
    value = m.get(key)
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def format_row(m: dict[str, Any], federated: bool | None = None, holdout: bool | None = None) -> str:
    """One round of ``metrics.jsonl`` as a line under ``format_header`` (same ``federated``,
    ``holdout``; by default what ``m`` has)."""
    federated = has_federated(m) if federated is None else federated
    holdout = has_holdout(m) if holdout is None else holdout
    if federated and not holdout:
        cells = [_num(m, "fed_val_accuracy"), _num(m, "fed_val_loss"), _num(m, "val_accuracy_worst")]
    else:
        cells = [_num(m, "accuracy"), _num(m, "loss")]
        if federated:
            cells += [_num(m, "fed_val_accuracy"), _num(m, "val_accuracy_worst")]
    line = (f"{m['round']:>5} {m['workers']:>7} {m['examples']:>8} {' '.join(f'{c:>8}' for c in cells)} "
            f"{m['seconds']:>7.2f} {m['bytes_in'] / 1e6:>7.2f} {m['bytes_out'] / 1e6:>7.2f}")
    if "epsilon" in m:  # differential privacy: the budget spent so far (null: no noise, no guarantee)
        line += f" {m['epsilon']:>8.3g}" if m["epsilon"] is not None else f" {'inf':>8}"
    return line


class _Table:
    """The per-round table's columns, fixed by its first row."""

    def __init__(self) -> None:
        self.columns: tuple[bool, bool] | None = None  # (federated, holdout)

    def lines(self, row: dict[str, Any]) -> list[str]:
        """The header (before the first row) and the row's line."""
        out = []
        if self.columns is None:
            self.columns = (has_federated(row), has_holdout(row))
            out.append(format_header("epsilon" in row, *self.columns))
        out.append(format_row(row, *self.columns))
        return out


class PlainDisplay:
    """One line per round on stdout, under a header printed once."""

    def __init__(self) -> None:
        self._table = _Table()

    def start(self) -> None:
        pass

    def update(self, snap: Snapshot) -> None:
        pass

    def round_done(self, row: dict[str, Any]) -> None:
        for line in self._table.lines(row):
            print(line, flush=True)

    def stop(self) -> None:
        pass


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def render(snap: Snapshot | None, now: float | None = None) -> Any:
    """The live panel for ``snap`` (a rich renderable)."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    if snap is None:
        grid.add_row(Text("fedsock chief: starting", style="bold"))
        return grid
    now = time.monotonic() if now is None else now
    if snap.finished:
        head = Text(f"round {snap.round}/{snap.rounds}  finished", style="bold green")
    elif snap.opened_at is None:
        head = Text(f"round {snap.round}/{snap.rounds}  waiting for workers: "
                    f"{snap.connected} of {snap.min_workers} connected", style="bold yellow")
    else:
        head = Text(f"round {snap.round}/{snap.rounds}", style="bold")
    total = max(snap.participants, snap.min_workers, 1)
    bar = ProgressBar(total=total, completed=total if snap.finished else snap.submitted, width=30)
    elapsed = None if snap.opened_at is None else now - snap.opened_at
    grid.add_row(head, bar, Text(f"{snap.submitted}/{total} updates  {_duration(elapsed)}"))
    grid.add_row(
        Text(f"workers  connected {snap.connected} · submitted {snap.submitted} · late {snap.late}"),
        Text(f"MB in {snap.bytes_in / 1e6:.2f} · out {snap.bytes_out / 1e6:.2f}"),
        Text(f"ETA {_duration(snap.eta_seconds)}"),
    )
    metrics = " · ".join(f"{k} {v:.4f}" for k, v in snap.last_metrics.items()) or "no holdout metrics"
    last = "-" if snap.last_seconds is None else f"{snap.last_seconds:.2f} s"
    grid.add_row(Text(f"last round  {last} · {metrics}"))
    if snap.federated is not None:
        worst = "" if snap.worst is None else f" · worst worker {snap.worst[0]} {snap.worst[1]:.4f}"
        grid.add_row(Text(f"federated   validation accuracy {snap.federated:.4f}{worst}"))
    return grid


class ConsoleLogHandler(logging.Handler):
    """Log records printed through the live display's console, in the format of the handler it stands in for.

    The records scroll above the panel instead of tearing it, and read exactly
    as before the panel started (``21:22:26 fedsock.chief INFO ...``): the
    old handler's formatter, level and filters, no markup, no wrapping.
    """

    def __init__(self, console: Any, replaces: logging.Handler) -> None:
        super().__init__(replaces.level)
        self.console = console
        self.setFormatter(replaces.formatter)
        for f in replaces.filters:
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        try:
            self.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


class LiveDisplay:
    """A panel redrawn in place by ``rich.live.Live``; per-round lines scroll above it.

    While it runs, log records go through the same console (when stderr is a
    terminal too), so they do not tear the panel, in the format they had before
    (``ConsoleLogHandler``).
    """

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(highlight=False)
        self._snap: Snapshot | None = None
        # The refresh thread only reads ``_snap``, an immutable object swapped whole.
        self._live = Live(get_renderable=lambda: render(self._snap), console=self.console,
                          refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
        self._table = _Table()
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    def start(self) -> None:
        if sys.stderr.isatty():
            root = logging.getLogger()
            for h in list(root.handlers):
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    rh = ConsoleLogHandler(self.console, h)
                    root.removeHandler(h)
                    root.addHandler(rh)
                    self._swapped.append((h, rh))
        self._live.start()

    def update(self, snap: Snapshot) -> None:
        self._snap = snap

    def round_done(self, row: dict[str, Any]) -> None:
        lines = self._table.lines(row)
        for i, line in enumerate(lines):
            self.console.print(line, style="bold" if i < len(lines) - 1 else None)

    def stop(self) -> None:
        self._live.refresh()
        self._live.stop()
        root = logging.getLogger()
        for old, new in self._swapped:
            root.removeHandler(new)
            root.addHandler(old)
        self._swapped.clear()


def make_display(mode: str = "auto") -> Display:
    """``live`` on a terminal (``auto``) or when asked; ``plain`` otherwise.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        terminal = sys.stdout.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
        mode = "live" if terminal else "plain"
    return LiveDisplay() if mode == "live" else PlainDisplay()


class DisplayCallback(ChiefCallback):
    """The display as a chief callback: started with the run, a line per round, stopped at its end.

    The chief also hands it a fresh ``Snapshot`` now and then (``update``).
    """

    def __init__(self, display: Display) -> None:
        self.display = display

    def on_run_begin(self, run: RunInfo) -> None:
        self.display.start()

    def update(self, snap: Snapshot) -> None:
        self.display.update(snap)

    def on_round_end(self, record: RoundRecord) -> None:
        self.display.round_done(record.row())

    def on_run_end(self, rounds: int) -> None:
        self.display.stop()
