"""The round controller and each round closer, without sockets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from fedsock.aggregation import fedavg, identity, weighted_mean
from fedsock.chief.closers import LocalCloser, RelayCloser, SecureCloser
from fedsock.chief.config import ChiefConfig
from fedsock.chief.relay import Relay
from fedsock.chief.rounds import Accepted, Duplicate, NotSelected, RoundController, Stale
from fedsock.chief.secure import SecureAggregation
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import TensorSpec, specs_of
from fedsock.protocol.secagg import SecAggInbox, SecAggRoster, SecAggUnmask
from fedsock.secagg import fixedpoint
from fedsock.secagg.worker import WorkerRound

SHAPES = [(3,), (2, 2)]


def controller(min_workers: int = 2, **kw) -> RoundController:
    c = RoundController(rounds=3, min_workers=min_workers, round_timeout=10.0, transform=kw.pop("transform", fedavg()),
                        **kw)
    w = [np.zeros(s, np.float32) for s in SHAPES]
    c.set_model(specs_of(w), w)
    for worker in (1, 2, 3):
        c.join(worker)
    assert c.open_if_ready(0.0)
    return c


def update(value: float) -> list[np.ndarray]:
    return [np.full(s, value, np.float32) for s in SHAPES]


def close(closer, c: RoundController):
    return asyncio.run(closer.close(c, 1.0))


def test_controller_verdicts_and_quorum():
    c = controller()
    assert isinstance(c.submit(1, 1, 10, specs_of(update(1)), update(1), connection=1), Accepted)
    assert isinstance(c.submit(1, 1, 10, specs_of(update(1)), update(1), connection=2), Duplicate)
    with pytest.raises(RemoteProtocolError, match="second update"):
        c.submit(1, 1, 10, specs_of(update(1)), update(1), connection=1)
    with pytest.raises(RemoteProtocolError, match="round 5"):
        c.submit(2, 5, 10, specs_of(update(1)), update(1))
    assert not c.should_close(1.0)  # one of two updates
    assert isinstance(c.submit(2, 1, 30, specs_of(update(3)), update(3)), Accepted)
    assert not c.should_close(1.0)  # worker 3 is still expected, before the deadline
    assert c.should_close(10.0)
    assert isinstance(c.submit(3, 0, 5, specs_of(update(1)), update(1)), Stale)


def test_prefold_and_decode_hooks_see_each_accepted_update():
    seen = []

    def prefold(weights, base):
        seen.append(float(weights[0][0]))
        return [w / 2 for w in weights]

    c = controller(decode=lambda specs, arrays, base: [a + 1 for a in arrays], prefold=prefold)
    c.submit(1, 1, 1, specs_of(update(1)), update(1))
    c.submit(2, 1, 1, specs_of(update(3)), update(3))
    assert seen == [2.0, 4.0]
    np.testing.assert_allclose(close(LocalCloser(), c).weights[0], np.full(3, 1.5))


def test_local_closer_averages_by_examples_and_opens_the_next_round():
    c = controller(min_workers=2, reducer=weighted_mean())
    c.submit(1, 1, 10, specs_of(update(1)), update(1))
    c.submit(2, 1, 30, specs_of(update(3)), update(3))
    r = close(LocalCloser(), c)
    assert (r.round, r.workers, r.examples, r.extra) == (1, (1, 2), 40, {})
    np.testing.assert_allclose(r.weights[1], np.full((2, 2), 2.5))
    assert c.round == 1 and c.is_open and c.submitted == {}


def test_relay_closer_sends_the_mean_upstream_and_adopts_the_answer():
    calls = []

    def sync(mean, examples, metrics=None):
        calls.append((np.array(mean[0]), examples))
        client.round += 9
        return [m * 2 for m in mean]

    client = SimpleNamespace(sync=sync, round=0, finished=False)
    c = controller()
    c.rounds = 100
    c.submit(1, 1, 10, specs_of(update(1)), update(1))
    c.submit(2, 1, 30, specs_of(update(3)), update(3))
    r = close(RelayCloser(Relay(client, "upstream:1")), c)  # type: ignore[arg-type]
    assert calls[0][1] == 40
    np.testing.assert_allclose(calls[0][0], np.full(3, 2.5))
    assert r.round == 9 and c.round == 9 and r.examples == 40
    np.testing.assert_allclose(r.weights[0], np.full(3, 5.0))
    client.finished = True
    c.submit(1, 10, 1, specs_of(update(1)), update(1))
    c.submit(2, 10, 1, specs_of(update(1)), update(1))
    close(RelayCloser(Relay(client, "upstream:1")), c)  # type: ignore[arg-type]
    assert c.rounds == c.round == 18 and c.finished  # the upstream's Done ends the run


class Workers:
    """Workers' secure-aggregation state machines, answering the chief's messages at once."""

    def __init__(self, sec: SecureAggregation, updates: dict[int, list[np.ndarray]], examples: dict[int, int],
                 vanish: frozenset[int] = frozenset(), rejoin: frozenset[int] = frozenset()) -> None:
        self.sec, self.updates, self.examples, self.vanish = sec, updates, examples, vanish
        self.rejoin = rejoin  # reconnect right after masking: a new connection, without the attempt's secrets
        self.states: dict[int, WorkerRound] = {}
        self.sent: list[tuple[int, str]] = []
        for w in updates:
            self.states[w], keys = WorkerRound.start(1)
            assert isinstance(sec.on_keys(w, keys, connection=w), Accepted)

    async def send(self, w: int, msg: object) -> bool:
        self.sent.append((w, type(msg).__name__))
        st = self.states[w]
        if isinstance(msg, SecAggRoster):
            self.sec.on_shares(w, st.on_roster(msg))
        elif isinstance(msg, SecAggInbox):
            if w in self.vanish:
                return True
            st.on_inbox(msg)
            masked = st.mask(fixedpoint.encode(self.updates[w], self.examples[w], len(self.updates)))
            specs = [TensorSpec(f"t{i}", "uint64", s) for i, s in enumerate([*SHAPES, (1,)])]
            assert self.sec.check_masked(w, 1, 1, specs)
            self.sec.add_masked(w, 1, 1, [masked[:3], masked[3:7], masked[7:]])
            if w in self.rejoin:
                self.states[w] = WorkerRound.start(1)[0]  # what a reconnected worker holds
                self.sec.joined(w)
        elif isinstance(msg, SecAggUnmask):
            self.sec.on_reveal(w, st.on_unmask(msg))
        return True

    def alive(self, w: int) -> bool:
        return w not in self.vanish


def test_secure_closer_closes_with_the_unmasked_average_and_holds_its_workers():
    c = controller(min_workers=2, transform=identity())
    sec = SecureAggregation(ChiefConfig(min_workers=2, secure_agg=True, secagg_timeout=1.0), c)
    updates = {w: update(float(w)) for w in (1, 2, 3)}
    workers = Workers(sec, updates, {1: 10, 2: 20, 3: 30})
    held: list[int] = []
    r = close(SecureCloser(sec, workers.send, workers.alive, held.append), c)
    assert r is not None and r.round == 1 and r.workers == (1, 2, 3) and r.examples == 60
    np.testing.assert_allclose(r.weights[0], np.full(3, (10 + 40 + 90) / 60), atol=1e-4)
    assert r.extra["secure_agg"]["attempt"] == 1 and r.extra["secure_agg"]["dropped"] == 0
    assert sorted(held) == [1, 2, 3]
    assert {kind for _, kind in workers.sent} == {"SecAggRoster", "SecAggInbox", "SecAggUnmask"}


def test_secure_closer_leaves_the_round_open_when_too_few_survive():
    c = controller(min_workers=2, transform=identity())
    sec = SecureAggregation(ChiefConfig(min_workers=2, secure_agg=True, secagg_threshold=3, secagg_timeout=0.2), c)
    workers = Workers(sec, {w: update(1.0) for w in (1, 2, 3)}, {1: 1, 2: 1, 3: 1}, vanish=frozenset({3}))
    held: list[int] = []
    assert close(SecureCloser(sec, workers.send, workers.alive, held.append), c) is None
    assert c.round == 0 and c.is_open and c.submitted == {}  # starts over with fresh keys
    assert ("SecAggAbort" in {kind for _, kind in workers.sent}) and held == []
    assert isinstance(c.submit(1, 1, 1, specs_of(update(1)), update(1)), Accepted)


def test_a_worker_that_reconnects_during_an_attempt_gets_none_of_its_messages():
    """Found by bench/chaos.py: a worker restarted (or reconnected) while the attempt it had masked in
    went on; the chief sent the attempt's next message to its new connection, which had started over
    with fresh keys, and that worker stopped with "message for phase 'masked' in phase 'keys'". Its
    masked update stays in the sum; its new connection is left out of the attempt."""
    c = controller(min_workers=2, transform=identity())
    sec = SecureAggregation(ChiefConfig(min_workers=2, secure_agg=True, secagg_timeout=1.0), c)
    workers = Workers(sec, {w: update(float(w)) for w in (1, 2, 3)}, {1: 10, 2: 20, 3: 30}, rejoin=frozenset({3}))
    held: list[int] = []
    r = close(SecureCloser(sec, workers.send, workers.alive, held.append), c)
    assert r is not None and r.workers == (1, 2, 3)  # its masked update counts, once
    np.testing.assert_allclose(r.weights[0], np.full(3, (10 + 40 + 90) / 60), atol=1e-4)
    assert (3, "SecAggUnmask") not in workers.sent and (2, "SecAggUnmask") in workers.sent
    assert 3 in held  # it gets the round's model on its new connection

    c = controller(min_workers=2, transform=identity())  # before the roster, its old keys just go
    sec = SecureAggregation(ChiefConfig(min_workers=2, secure_agg=True, secagg_timeout=1.0), c)
    Workers(sec, {w: update(1.0) for w in (1, 2, 3)}, {1: 1, 2: 1, 3: 1})
    sec.joined(3)
    assert sorted(sec.current().keys) == [1, 2] and 3 not in c.submitted


def test_a_worker_not_sampled_waits():
    c = RoundController(rounds=3, min_workers=1, round_timeout=10.0, transform=fedavg(), fraction=0.5, seed=1)
    w = update(0)
    c.set_model(specs_of(w), w)
    for worker in (1, 2, 3, 4):
        c.join(worker)
    c.open_if_ready(0.0)
    assert c.selected is not None and len(c.selected) == 2
    out = next(x for x in (1, 2, 3, 4) if x not in c.selected)
    assert isinstance(c.submit(out, 1, 1, specs_of(w), w), NotSelected)


def test_close_writes_in_place_exactly_when_no_hold_is_outstanding():
    c = RoundController(rounds=6, min_workers=2, round_timeout=10.0, transform=fedavg())
    w = [np.zeros(s, np.float32) for s in SHAPES]
    c.set_model(specs_of(w), w)
    c.join(1), c.join(2)
    assert c.open_if_ready(0.0)
    held: list[tuple[list[np.ndarray], list[np.ndarray]]] = []  # (held model, its bytes when acquired)

    def run_round(r: int, hold_before: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        before = c.weights
        if hold_before:
            held.append((c.holds.acquire(before), [a.copy() for a in before]))
        olds = [x.astype(np.float64) for x in before]
        a, b = update(0.1 * r), update(0.3 * r + 1)
        c.submit(1, r, 10, specs_of(a), a)
        c.submit(2, r, 30, specs_of(b), b)
        new = close(LocalCloser(), c).weights
        for x, y, w0, got in zip(a, b, olds, new):  # exactly numpy's FedAvg step in float64, rounded to float32
            mean = np.average(np.stack([x, y]).astype(np.float64), axis=0, weights=[10, 30])
            np.testing.assert_array_equal(got, (w0 + (mean - w0)).astype(np.float32))
        return before, new

    before, new = run_round(1, hold_before=False)
    assert all(x is y for x, y in zip(before, new))  # nobody held it: overwritten in place
    before, new = run_round(2, hold_before=True)
    assert not any(np.shares_memory(x, y) for x, y in zip(before, new))
    before, new = run_round(3, hold_before=False)  # the held model is not current any more
    assert all(x is y for x, y in zip(before, new))
    before, new = run_round(4, hold_before=True)
    assert not any(np.shares_memory(x, y) for x, y in zip(before, new))
    for model, copy in held:  # held models stayed bit for bit what they were while later rounds closed
        for x, y in zip(model, copy):
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
    model, _ = held.pop(0)
    c.holds.release(model)  # round 1's model is free: its buffers may take a later model
    assert any(a is b for a in c.holds.pool._order.values() for b in model)
    c.holds.release(held.pop()[0])
    assert c.holds.current_free
    before, new = run_round(5, hold_before=False)
    assert all(x is y for x, y in zip(before, new))


def test_sends_and_threads_hold_the_model_until_their_io_has_stopped():
    from fedsock.aggregation import BufferPool, ModelHolds
    from fedsock.chief.callbacks import ChiefCallback
    from fedsock.chief.publish import Publisher, on_thread_holding

    holds = ModelHolds(BufferPool())
    model = update(1.0)
    holds.adopt(model)
    thread_done = []

    class FakeSession:
        address, worker_id, label = "127.0.0.1", 1, "worker 1"

        async def send(self, msg, arrays=(), release=None, *, timeout):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # Session.send: the I/O thread stops before the cancellation ends
                thread_done.append(holds.current_free)
                raise

        def abort(self):
            pass

    async def main():
        pub = Publisher(5.0, ChiefCallback(), lambda w: {}, holds)
        task = asyncio.ensure_future(pub.send_weights(FakeSession(), None, model))
        await asyncio.sleep(0.01)
        assert not holds.current_free
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert thread_done == [False] and holds.current_free  # released only after the "thread" stopped

        seen = []
        await on_thread_holding(holds, model, lambda: seen.append(holds.current_free))
        await asyncio.sleep(0)  # the thread hands the release to the loop
        assert seen == [False] and holds.current_free

    asyncio.run(main())


def test_the_pool_keeps_at_most_a_sum_and_one_spare_model():
    c = RoundController(rounds=9, min_workers=1, round_timeout=10.0, transform=fedavg())
    w = [np.zeros(s, np.float32) for s in SHAPES]
    c.set_model(specs_of(w), w)
    c.join(1)
    assert c.open_if_ready(0.0)
    model_bytes = sum(a.nbytes for a in w)
    held = []
    for r in range(1, 8):  # every model held through later closes, then all released
        held.append(c.holds.acquire(c.weights))
        c.submit(1, r, 1, specs_of(update(r)), update(r))
        close(LocalCloser(), c)
    for model in held:
        c.holds.release(model)
    assert 0 < c.holds.pool.nbytes <= 2 * model_bytes + model_bytes  # the float64 sum and one float32 model
