"""Ack (protocol.md 7.4) from a real chief: "accepted, waiting" and "not sampled" are told apart
for a worker that asked, and a worker that did not ask never sees the kind."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedsock.protocol import (
    ACK_CAPABILITY,
    Ack,
    Chunk,
    EndOfMessage,
    Error,
    Global,
    Heartbeat,
    Hello,
    Update,
    Welcome,
    specs_of,
)
from fedsock.testing.attacker import Hostile

pytestmark = pytest.mark.integration

MODEL = [np.zeros((2, 2), np.float32)]
SPECS = specs_of(MODEL)


def asking(chief) -> Hostile:
    h = Hostile(chief.address, chief.token)
    original = h.send

    def send(msg, arrays=()):  # every Hello this connection sends asks for acks
        if isinstance(msg, Hello):
            msg = Hello(name=msg.name, capabilities=(ACK_CAPABILITY,), instance=msg.instance)
        original(msg, arrays)

    h.send = send  # type: ignore[method-assign]
    return h


def events_for(h: Hostile, seconds: float) -> list:
    """What the chief sends within ``seconds`` (no Chunks or Heartbeats)."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ev = h.next(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if not isinstance(ev, (Chunk, Heartbeat, EndOfMessage)):
            out.append(ev)
        if isinstance(ev, Error):
            break
    return out


def test_accepted_and_not_sampled_are_acknowledged_to_a_worker_that_asked(chiefs):
    chief = chiefs("--rounds", "1000000", "--round-timeout", "1", "--heartbeat-interval", "1", "--min-workers",
                   "1", "--fraction", "0.5", "--progress", "plain")
    a = asking(chief)
    assert isinstance(a.join("acked-a"), Welcome)
    a.send(Update(0, 0, SPECS), MODEL)  # the initial model: round 1 opens with a alone in its sample
    assert isinstance(a.answer(timeout=10), Global)
    b = asking(chief)
    welcome = b.join("acked-b")
    assert isinstance(welcome, Welcome) and welcome.round == 0
    b.send(Update(1, 5, SPECS), MODEL)  # joined after round 1 opened: not in its sample
    [ack] = [ev for ev in events_for(b, 2.0) if isinstance(ev, Ack)]
    assert ack == Ack(round=1, sampled=False, held=0, waiting=1)
    a.send(Update(1, 5, SPECS), MODEL)
    got = events_for(a, 3.0)
    acks = [ev for ev in got if isinstance(ev, Ack)]
    assert acks == [Ack(round=1, sampled=True, held=1, waiting=0)], got
    # round 1 closed with a's update; its Global goes to whichever of them round 2 samples (7.4)
    got += events_for(b, 3.0)
    assert any(isinstance(ev, Global) and ev.round == 1 for ev in got), got
    a.close()
    b.close()


def test_a_worker_that_did_not_ask_gets_no_ack(chiefs):
    chief = chiefs("--rounds", "1000000", "--round-timeout", "1", "--heartbeat-interval", "1", "--min-workers",
                   "1", "--progress", "plain")
    h = Hostile(chief.address, chief.token)
    assert isinstance(h.join("silent"), Welcome)
    h.send(Update(0, 0, SPECS), MODEL)
    assert isinstance(h.answer(timeout=10), Global)
    h.send(Update(1, 5, SPECS), MODEL)
    got = events_for(h, 3.0)  # an Ack would be out_of_order for this Connection: it would raise here
    assert [type(ev) for ev in got] == [Global], got
    h.close()
