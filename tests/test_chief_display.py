"""The live display: log lines keep their format under the panel; the final panel counts the last round."""

from __future__ import annotations

import io
import logging
import re

import numpy as np

from fedsock.aggregation import fedavg
from fedsock.chief.callbacks import RoundRecord, WorkerJoined
from fedsock.chief.display import ConsoleLogHandler, LiveDisplay, render
from fedsock.chief.monitor import Monitor
from fedsock.chief.rounds import RoundController
from fedsock.protocol import specs_of

FORMAT, DATEFMT = "%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"  # the CLI's (cli._setup_logging)


def test_log_lines_through_the_live_console_keep_the_cli_format(monkeypatch):
    from rich.console import Console

    old = logging.StreamHandler(io.StringIO())
    old.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    old.setLevel(logging.INFO)
    buf = io.StringIO()
    handler = ConsoleLogHandler(Console(file=buf, width=40, highlight=False), old)
    log = logging.getLogger("fedsock.chief")
    for h in (old, handler):
        h.handle(log.makeRecord("fedsock.chief", logging.INFO, __file__, 1,
                                "round %d: [bold]3 updates[/bold] " + "x" * 60, (2,), None))
    before, after = old.stream.getvalue().rstrip("\n"), buf.getvalue().rstrip("\n")
    assert re.match(r"^\d\d:\d\d:\d\d fedsock\.chief INFO round 2: \[bold\]3 updates", after), after
    assert after == before  # same text: no markup eaten, no wrapping at the console's width
    assert handler.level == logging.INFO


def test_the_live_display_swaps_the_terminal_handler_for_one_with_its_format_and_back(monkeypatch):
    root = logging.getLogger()
    saved = list(root.handlers)
    old = logging.StreamHandler(io.StringIO())
    old.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    for h in saved:
        root.removeHandler(h)
    root.addHandler(old)
    display = LiveDisplay()
    try:
        display.start()
        live = [h for h in root.handlers if isinstance(h, ConsoleLogHandler)]
        assert len(live) == 1 and old not in root.handlers and live[0].formatter is old.formatter
    finally:
        display.stop()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
    assert not display._swapped


def _record(round_: int, workers: int) -> RoundRecord:
    ids = tuple(range(1, workers + 1))
    return RoundRecord(round=round_, workers=ids, names=tuple(f"w{i}" for i in ids), examples=10 * workers,
                       seconds=1.0, bytes_in=0, bytes_out=0, time=0.0)


def test_the_final_panel_shows_the_last_round_s_updates():
    from rich.console import Console

    m = Monitor(min_workers=2)
    for wid in (1, 2, 3):
        m.on_worker_joined(WorkerJoined(wid, f"w{wid}", "127.0.0.1:1"))
    ctrl = RoundController(rounds=2, min_workers=2, round_timeout=1.0, transform=fedavg())
    weights = [np.zeros(3, np.float32)]
    ctrl.restore(2, specs_of(weights), weights, ctrl.transform.init(weights), None)  # the run is over
    m.on_round_end(_record(1, 2))
    m.on_round_end(_record(2, 3))
    snap = m.snapshot(ctrl, 3)
    assert snap.finished and (snap.submitted, snap.participants) == (3, 3)
    console = Console(record=True, width=120)
    console.print(render(snap, now=1.0))
    text = console.export_text()
    assert re.search(r"round 2/2\s+finished", text) and "3/3 updates" in text and "0/2" not in text, text
    assert "submitted 3" in text
