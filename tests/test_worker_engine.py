"""The worker's round logic without sockets: ``WorkerEngine`` fed events, its actions checked."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedsock.errors import FedsockError, PeerError, RemoteProtocolError
from fedsock.protocol import ConnectionClosed, Done, Error, Global, Heartbeat, Plan, Update, Welcome, specs_of
from fedsock.protocol.secagg import SecAggAbort, SecAggKeys, SecAggMasked, SecAggReveal, SecAggShares, SecAggUnmask
from fedsock.secagg import fixedpoint
from fedsock.secagg.chief import ChiefRound
from fedsock.transport.errors import ConnectionLost
from fedsock.worker.engine import Deliver, Fail, ReadModel, Reconnect, Send, WorkerEngine

PLAN = Plan(rounds=3, sync_every=1, batch_size=1)
MODEL = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
SPECS = specs_of(MODEL, ["a", "b"])


def welcome(round_: int = 0, plan: Plan = PLAN, weights: bool = True) -> Welcome:
    return Welcome(worker_id=1, round=round_, plan=plan, tensors=SPECS if weights else (), has_weights=weights)


def engine(round_: int = 0, plan: Plan = PLAN, reconnect: bool = True) -> WorkerEngine:
    return WorkerEngine(welcome(round_, plan), list(MODEL), reconnect=reconnect)


def update(round_: int) -> Update:
    return Update(round_, 10, SPECS)


def model_of(value: float) -> list[np.ndarray]:
    return [np.full(a.shape, value, a.dtype) for a in MODEL]


def test_plain_round_sends_the_update_then_reads_and_delivers_the_global():
    eng = engine()
    wire = model_of(5)
    assert eng.start_plain(update(1), wire) == [Send(update(1), wire)]
    assert eng.busy
    assert eng.receive(Heartbeat()) == []
    g = Global(1, SPECS)
    assert eng.receive(g) == [ReadModel(g)]
    new = model_of(2)
    assert eng.model_read(g, new) == [Deliver(new)]
    assert (eng.round, eng.model, eng.finished, eng.busy) == (1, new, False, False)


def test_done_ends_the_run():
    eng = engine(round_=2)
    eng.start_plain(update(3), model_of(1))
    d = Done(3, SPECS)
    assert eng.receive(d) == [ReadModel(d)]
    final = model_of(9)
    assert eng.model_read(d, final) == [Deliver(final)]
    assert eng.finished and eng.round == 3 and eng.model is final


def test_errors_from_the_chief_hang_up_or_fail():
    eng = engine()
    eng.start_plain(update(1), model_of(1))
    # shutdown: the chief will be back (announced); busy and timeout are only transient
    assert eng.receive(Error(code="shutdown", message="bye")) == [Reconnect("the chief hung up: bye", True)]
    assert eng.receive(Error(code="busy", message="full")) == [Reconnect("the chief hung up: full", False)]
    assert eng.receive(ConnectionClosed()) == [Reconnect("the chief closed the connection")]
    [fail] = eng.receive(Error(code="signature_mismatch", message="tensor 0"))
    assert isinstance(fail, Fail) and isinstance(fail.error, PeerError) and fail.error.code == "signature_mismatch"
    [fail] = eng.receive(SecAggAbort(1, 1, "why"))  # a plain round expects no secure aggregation
    assert isinstance(fail, Fail) and "unexpected SecAggAbort" in str(fail.error)


def test_without_reconnect_a_lost_connection_is_raised():
    eng = engine(reconnect=False)
    eng.start_plain(update(1), model_of(1))
    [fail] = eng.lost("reset")
    assert isinstance(fail, Fail) and isinstance(fail.error, ConnectionLost) and fail.notify is None


def test_reconnect_mid_round_resends_the_update_while_the_round_is_open():
    eng = engine()
    wire = model_of(4)
    eng.start_plain(update(1), wire)
    assert eng.lost("cut") == [Reconnect("cut")]
    again = model_of(0)
    assert eng.reconnected(welcome(0), again) == [Send(update(1), wire)]
    assert eng.busy and eng.model is again


def test_reconnect_after_the_round_closed_continues_from_the_chiefs_model():
    eng = engine()
    eng.start_plain(update(1), model_of(4))
    newer = model_of(7)
    assert eng.reconnected(welcome(2), newer) == [Deliver(newer)]
    assert not eng.busy and eng.round == 2


def test_reconnect_after_the_last_round_waits_for_done():
    eng = engine(round_=2)
    eng.start_plain(update(3), model_of(4))
    assert eng.reconnected(welcome(3), model_of(3)) == []
    d = Done(3, SPECS)
    assert eng.receive(d) == [ReadModel(d)]


def test_initial_proposal_is_resent_until_the_chief_has_a_model():
    eng = WorkerEngine(welcome(0, weights=False), None)
    proposal = model_of(1)
    upd0 = Update(0, 0, SPECS)
    eng.start_plain(upd0, proposal)
    assert eng.reconnected(welcome(0, weights=False), None) == [Send(upd0, proposal)]
    winner = model_of(3)  # another worker's proposal won meanwhile
    assert eng.reconnected(welcome(0), winner) == [Deliver(winner)]


def _secure_round(workers: dict[int, WorkerEngine], weights: dict[int, list[np.ndarray]]) -> np.ndarray:
    """Drive the engines through one attempt with a real ChiefRound; returns the unmasked sum."""
    words = sum(a.size for a in MODEL) + 1
    chief = ChiefRound(1, 1, words)
    for wid, eng in workers.items():
        [send] = eng.start_secure(update(1), weights[wid])
        assert isinstance(send.msg, SecAggKeys)
        chief.add_keys(wid, send.msg)
    for wid, roster in chief.rosters(min_workers=len(workers)).items():
        [send] = workers[wid].receive(roster)
        assert isinstance(send.msg, SecAggShares)
        chief.add_shares(wid, send.msg)
    for wid, inbox in chief.inboxes().items():
        [send] = workers[wid].receive(inbox)
        assert isinstance(send.msg, SecAggMasked) and len(send.arrays) == len(MODEL) + 1
        chief.check_masked(wid, 1, 1, send.msg.tensors, [a.shape for a in MODEL])
        chief.add_masked(wid, [np.ascontiguousarray(a) for a in send.arrays])
    unmask = chief.unmask()
    for wid, eng in workers.items():
        [send] = eng.receive(unmask)
        assert isinstance(send.msg, SecAggReveal)
        chief.add_reveal(wid, send.msg)
    return chief.finish()


def test_secure_round_masks_so_that_only_the_sum_comes_out():
    plan = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
    workers = {w: engine(plan=plan) for w in (1, 2, 3)}
    weights = {w: model_of(float(w)) for w in workers}
    total = _secure_round(workers, weights)
    avg, weight = fixedpoint.decode(total, [a.shape for a in MODEL])
    assert weight == 30  # 10 examples each
    for a in avg:
        np.testing.assert_allclose(a, 2.0, atol=1e-4)  # the mean of 1, 2 and 3
    assert all(eng.busy for eng in workers.values())  # the model comes with the Global
    g = Global(1, SPECS)
    assert workers[1].receive(g) == [ReadModel(g)]


def test_secure_round_starts_over_on_abort_and_on_reconnect():
    plan = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
    eng = engine(plan=plan)
    [first] = eng.start_secure(update(1), model_of(1))
    [again] = eng.receive(SecAggAbort(1, 1, "too few workers"))
    assert isinstance(again.msg, SecAggKeys) and again.msg.round == 1
    assert again.msg.share_key != first.msg.share_key  # fresh keys for the new attempt
    assert eng.lost("cut") == [Reconnect("cut")]
    [resumed] = eng.reconnected(welcome(0, plan), model_of(0))
    assert isinstance(resumed.msg, SecAggKeys) and resumed.msg.share_key not in (first.msg.share_key,
                                                                                 again.msg.share_key)
    newer = model_of(2)
    eng.start_secure(update(1), model_of(1))
    assert eng.reconnected(welcome(1, plan), newer) == [Deliver(newer)]


def test_a_repeat_of_the_model_held_does_not_end_the_next_sync():
    """Found by bench/chaos.py: a worker whose masked upload was cut reconnected and sent fresh keys
    for round 2, which then closed without it. The chief sent it Global 2 twice on that connection
    (its round's fan-out, and the answer to its stale keys); the second one ended the worker's round-3
    attempt, whose keys were already in the chief's roster, and the worker failed with "the roster
    does not carry this worker's keys". A Global of a round before the sync's is not its answer."""
    plan = Plan(rounds=5, sync_every=1, batch_size=1, secure_agg=True)
    eng = engine(round_=2, plan=plan)
    held = eng.model
    [keys] = eng.start_secure(update(3), model_of(1))
    repeat = Global(2, SPECS)
    assert eng.receive(repeat) == [ReadModel(repeat)]  # its weights must still be read off the wire
    assert eng.model_read(repeat, model_of(2)) == []
    assert eng.busy and eng.round == 2 and eng.model is held
    assert eng._sync is not None and eng._sync.attempt is not None
    assert eng._sync.update.round == 3 and isinstance(keys.msg, SecAggKeys)

    eng.drop_model()  # the repeat was read into the held model's memory: it is the model now
    again = model_of(2)
    assert eng.model_read(repeat, again) == [] and eng.model is again

    plain = engine(round_=2)
    plain.start_plain(update(3), model_of(1))
    assert plain.model_read(Global(1, SPECS), model_of(1)) == [] and plain.busy
    answer = model_of(3)
    assert plain.model_read(Global(3, SPECS), answer) == [Deliver(answer)] and plain.round == 3


def test_a_roster_with_keys_sent_before_a_crossing_abort_is_answered():
    """Found by bench/chaos.py: a worker reconnected during a failing attempt and sent fresh keys at
    once; the chief put them into its next attempt, and the Abort of the failed attempt (which the
    worker's old keys had been in) reached the worker afterwards, so it sent yet fresher keys. The
    next roster named the keys of before the Abort, and the worker stopped with "the roster does not
    carry this worker's keys". A roster is answered with whichever pending keys it names."""
    plan = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
    workers = {w: engine(plan=plan) for w in (1, 2)}
    chief = ChiefRound(1, 2, sum(a.size for a in MODEL) + 1)
    sent = {}
    for wid, eng in workers.items():
        [send] = eng.start_secure(update(1), model_of(float(wid)))
        sent[wid] = send.msg
        chief.add_keys(wid, send.msg)
    [fresher] = workers[1].receive(SecAggAbort(1, 1, "2 workers revealed shares; not enough"))  # crossed
    assert isinstance(fresher.msg, SecAggKeys) and fresher.msg.share_key != sent[1].share_key
    for wid, roster in chief.rosters(min_workers=2).items():  # names worker 1's keys of before the Abort
        [send] = workers[wid].receive(roster)
        assert isinstance(send.msg, SecAggShares), send
        chief.add_shares(wid, send.msg)
    for wid, inbox in chief.inboxes().items():
        [send] = workers[wid].receive(inbox)
        chief.check_masked(wid, 1, 2, send.msg.tensors, [a.shape for a in MODEL])
        chief.add_masked(wid, [np.ascontiguousarray(a) for a in send.arrays])
    unmask = chief.unmask()
    for wid, eng in workers.items():
        [send] = eng.receive(unmask)
        chief.add_reveal(wid, send.msg)
    avg, weight = fixedpoint.decode(chief.finish(), [a.shape for a in MODEL])
    assert weight == 20 and all(np.allclose(a, 1.5, atol=1e-6) for a in avg)

    # keys a roster was answered with are never used again, nor the ones that were pending beside them
    [again] = workers[1].receive(SecAggAbort(1, 2, "say it failed after all"))
    retry = ChiefRound(1, 3, sum(a.size for a in MODEL) + 1)
    retry.add_keys(1, sent[1])
    retry.add_keys(2, SecAggKeys(1, again.msg.share_key, again.msg.mask_key))
    [fail] = workers[1].receive(retry.rosters(min_workers=2)[1])
    assert isinstance(fail, Fail) and "does not carry this worker's keys" in str(fail.error)


def test_secure_round_refuses_weights_it_cannot_encode_and_tells_the_chief():
    plan = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
    workers = {w: engine(plan=plan) for w in (1, 2)}
    bad = model_of(1)
    bad[0][0, 0] = np.nan
    chief = ChiefRound(1, 1, sum(a.size for a in MODEL) + 1)
    for wid, eng in workers.items():
        [send] = eng.start_secure(update(1), bad if wid == 1 else model_of(1))
        chief.add_keys(wid, send.msg)
    for wid, roster in chief.rosters(min_workers=2).items():
        chief.add_shares(wid, workers[wid].receive(roster)[0].msg)
    [fail] = workers[1].receive(chief.inboxes()[1])
    assert isinstance(fail, Fail) and "cannot take part in secure aggregation" in str(fail.error)
    assert fail.notify is not None and fail.notify.code == "invalid_weights"


def test_a_bad_secure_aggregation_message_is_answered_with_its_error():
    plan = Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True)
    eng = engine(plan=plan)
    eng.start_secure(update(1), model_of(1))
    [fail] = eng.receive(SecAggUnmask(1, 1, (1, 2), ()))  # unmasking before any roster
    assert isinstance(fail, Fail) and isinstance(fail.error, RemoteProtocolError)
    assert fail.notify is not None and fail.notify.code == fail.error.code


def test_unexpected_messages_fail():
    eng = engine()
    eng.start_plain(update(1), model_of(1))
    [fail] = eng.receive(welcome())
    assert isinstance(fail, Fail) and isinstance(fail.error, FedsockError)


@pytest.mark.parametrize("module", ["engine.py", "pipeline.py", "buffers.py"])
def test_the_worker_core_does_no_io(module):
    tree = ast.parse((Path(__file__).resolve().parent.parent / "fedsock" / "worker" / module).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"socket", "ssl", "asyncio", "select", "fedsock.transport.channel",
                           "fedsock.transport.handshake", "fedsock.worker.client"}, imported
