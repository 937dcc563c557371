"""protocol.md 7.11, the worker's states: every row of its table, driven through WorkerEngine."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedsock.protocol import (
    Ack,
    ConnectionClosed,
    Done,
    Error,
    EvalRequest,
    EvalResult,
    Global,
    Heartbeat,
    Plan,
    Update,
    Welcome,
    specs_of,
)
from fedsock.protocol.secagg import SecAggAbort, SecAggKeys, SecAggMasked, SecAggReveal, SecAggShares
from fedsock.secagg.chief import ChiefRound
from fedsock.worker.engine import Action, Deliver, Fail, ReadEval, ReadModel, Reconnect, Send, WorkerEngine

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
PLAIN = Plan(rounds=3, sync_every=1, batch_size=1)
SECURE = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
MODEL = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
SPECS = specs_of(MODEL, ["a", "b"])


def table() -> list[tuple[str, str, str]]:
    text = DOC.split("### 7.11 The worker's states")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([A-Z_]+) \| (.+?) \| .+? \| ([A-Z_]+) \|$", text, flags=re.M)
    return [(state, event, nxt) for state, event, nxt in rows]


def welcome(round_: int, plan: Plan, weights: bool = True) -> Welcome:
    return Welcome(worker_id=1, round=round_, plan=plan, tensors=SPECS if weights else (), has_weights=weights)


class Pair:
    """Worker 1's engine and, for the secure states, a real ChiefRound with a second worker."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.engine = WorkerEngine(welcome(0, plan), [a.copy() for a in MODEL])
        self.other = WorkerEngine(welcome(0, plan), [a.copy() for a in MODEL])
        self.chief = ChiefRound(1, 1, sum(a.size for a in MODEL) + 1)
        self.state = "TRAINING"

    def start(self) -> list[Action]:
        if not self.plan.secure_agg:
            return self.engine.start_plain(Update(1, 10, SPECS), MODEL)
        for wid, eng in ((1, self.engine), (2, self.other)):
            [send] = eng.start_secure(Update(1, 10, SPECS), MODEL)
            self.chief.add_keys(wid, send.msg)
            if wid == 1:
                first = [send]
        return first

    def to(self, state: str) -> None:
        """Drive the engine from TRAINING to ``state``."""
        steps = ["TRAINING", "KEYS_SENT", "SHARES_SENT", "MASKED_SENT", "REVEALED"]
        if state == "PROPOSING":
            self.engine = WorkerEngine(welcome(0, self.plan, weights=False), None)
            self.engine.start_plain(Update(0, 0, SPECS), MODEL)
        elif state == "DONE":
            self.start()
            [read] = self.engine.receive(Done(3, SPECS, report=60.0))
            assert isinstance(read, ReadModel)
            self.engine.model_read(read.msg, [a.copy() for a in MODEL])
        elif state in ("WAITING", "RECONNECTING"):
            self.start()
            if state == "RECONNECTING":
                assert isinstance(self.engine.lost("cut")[0], Reconnect)
        elif state in steps[1:]:
            self.start()
            for nxt in steps[2 : steps.index(state) + 1]:
                self.chief_step(nxt)
        self.state = state

    def chief_step(self, nxt: str) -> list[Action]:
        """The chief's message that moves both workers on to ``nxt``; worker 1's actions."""
        c = self.chief
        if nxt == "SHARES_SENT":
            msgs = c.rosters(min_workers=2)
            add: Callable = c.add_shares
        elif nxt == "MASKED_SENT":
            msgs = c.inboxes()
            add = lambda wid, m, arrays: (c.check_masked(wid, 1, 1, m.tensors, [a.shape for a in MODEL]),  # noqa: E731
                                          c.add_masked(wid, [np.ascontiguousarray(a) for a in arrays]))
        else:
            unmask = c.unmask()
            msgs = {1: unmask, 2: unmask}
            add = c.add_reveal
        out: list[Action] = []
        for wid, eng in ((2, self.other), (1, self.engine)):
            actions = eng.receive(msgs[wid])
            [send] = actions
            assert isinstance(send, Send)
            if nxt == "MASKED_SENT":
                add(wid, send.msg, send.arrays)
            else:
                add(wid, send.msg)
            out = actions
        return out


def outcome(actions: list[Action], engine: WorkerEngine, state: str) -> str:
    """The state the table calls what the engine did (from ``state``)."""
    if not actions:
        return "WAITING" if engine.busy or engine.round >= engine.plan.rounds else "TRAINING"
    first = actions[0]
    if isinstance(first, Reconnect):
        return "RECONNECTING"
    if isinstance(first, Fail):
        return "FAILED"
    if isinstance(first, Deliver):
        return "TRAINING"
    if isinstance(first, ReadEval):  # the caller evaluates the weights; the engine answers
        [send] = engine.evaluated(first.msg, {"val_accuracy": 0.5, "val_examples": 4.0, "train_loss": 1.0})
        assert isinstance(send, Send) and send.msg == EvalResult(first.msg.round, {"val_accuracy": 0.5,
                                                                                    "val_examples": 4.0})
        return "WAITING" if engine.busy else "FAILED"
    if isinstance(first, ReadModel):
        after = engine.model_read(first.msg, [a.copy() for a in MODEL])
        if not after:  # a repeat of the model held: the sync goes on
            assert engine.busy
            return state
        [deliver] = after
        assert isinstance(deliver, Deliver)
        return "DONE" if engine.finished else "TRAINING"
    assert isinstance(first, Send)
    if isinstance(first.msg, EvalResult):
        return "DONE" if first.msg.final and engine.finished else "FAILED"
    return {Update: "WAITING", SecAggKeys: "KEYS_SENT", SecAggShares: "SHARES_SENT", SecAggMasked: "MASKED_SENT",
            SecAggReveal: "REVEALED"}[type(first.msg)]


def apply(pair: Pair, event: str) -> list[Action]:
    eng = pair.engine
    if event.startswith("local training done"):
        return pair.start()
    if event == "EvalRequest":
        return eng.receive(EvalRequest(0, SPECS))
    if event.startswith("final evaluation done"):
        return eng.final_report({"val_accuracy": 0.75, "val_examples": 4.0, "personalized_val_accuracy": 0.875})
    if event == "Heartbeat":
        return eng.receive(Heartbeat())
    if event == "Ack":
        return eng.receive(Ack(1, False, 0, 1))
    if event in ("Global", "Global{r}, r ≥ the update's round"):
        return eng.receive(Global(1, SPECS))
    if event == "Global{r}, r < the update's round":
        return eng.receive(Global(0, SPECS))
    if event == "Done":
        return eng.receive(Done(3, SPECS))
    if event.startswith("Error `shutdown`"):
        return eng.receive(Error("shutdown", "the chief is stopping"))
    if event == "connection lost":
        return eng.receive(ConnectionClosed())
    if event == "another Error":
        return eng.receive(Error("signature_mismatch", "wrong shapes"))
    if event == "any other message":
        return eng.receive(welcome(0, pair.plan))
    if event == "SecAggAbort":
        return eng.receive(SecAggAbort(1, 1, "too few workers"))
    if event in ("SecAggRoster", "SecAggInbox", "SecAggUnmask"):
        nxt = {"SecAggRoster": "SHARES_SENT", "SecAggInbox": "MASKED_SENT", "SecAggUnmask": "REVEALED"}[event]
        return pair.chief_step(nxt)
    if event.startswith("Welcome, round = the update's round − 1"):
        return eng.reconnected(welcome(0, pair.plan), [a.copy() for a in MODEL])
    if event == "Welcome, round ≥ `plan.rounds`":
        return eng.reconnected(welcome(3, pair.plan), [a.copy() for a in MODEL])
    if event == "Welcome, another round":
        return eng.reconnected(welcome(2, pair.plan), [a.copy() for a in MODEL])
    raise AssertionError(f"protocol.md 7.11 has an event this test does not know: {event!r}")


def test_the_table_covers_every_state_of_the_diagram():
    rows = table()
    states = {s for s, _, _ in rows} | {n for _, _, n in rows}
    assert states == {"PROPOSING", "TRAINING", "WAITING", "KEYS_SENT", "SHARES_SENT", "MASKED_SENT", "REVEALED",
                      "RECONNECTING", "DONE", "FAILED"}
    assert len(rows) >= 20


@pytest.mark.parametrize("state,event,expected", table())
def test_each_row_is_what_the_engine_does(state, event, expected):
    secure = "secure_agg" in event or state in ("KEYS_SENT", "SHARES_SENT", "MASKED_SENT", "REVEALED")
    pair = Pair(SECURE if secure else PLAIN)
    pair.to(state)
    assert outcome(apply(pair, event), pair.engine, state) == expected
