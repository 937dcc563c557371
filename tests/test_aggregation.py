"""Aggregation transforms and the chief's round bookkeeping, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from fedsock.aggregation import (
    BufferPool,
    apply_delta,
    chain,
    empty_sum,
    fedavg,
    fedavgm,
    flatten_state,
    fold,
    init_accumulator,
    mean,
    scale,
    trace,
    unflatten_state,
    weighted_mean,
)
from fedsock.chief.rounds import Accepted, Duplicate, NotSelected, RoundController, Stale
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import specs_of

rng = np.random.default_rng(42)


def random_updates(k=4, shapes=((5, 3), (3,))):
    ws = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(k)]
    ns = rng.integers(1, 500, size=k)
    return ws, ns


def test_weighted_mean_matches_numpy():
    ws, ns = random_updates()
    acc = empty_sum([w.shape for w in ws[0]])
    for w, n in zip(ws, ns):
        acc = fold(acc, w, int(n))
    got = mean(acc)
    for t in range(2):
        ref = np.average(np.stack([w[t] for w in ws]).astype(np.float64), axis=0, weights=ns)
        np.testing.assert_allclose(got[t], ref, rtol=1e-12)
    assert acc.updates == 4 and acc.weight == ns.sum()


def test_a_reused_sum_is_not_zeroed_and_still_exact():
    """weighted_mean takes last round's buffers back from the pool without zeroing them:
    the first update of a round overwrites whatever they hold (here: NaN and huge values)."""
    red = weighted_mean()
    shapes = [(5, 3), (3,)]
    pool = BufferPool()
    acc = init_accumulator(red, shapes, pool)
    for w, n in zip(*random_updates()):
        acc = red.add(acc, w, int(n))
    spent = red.result(acc)
    spent[0][...] = np.nan  # garbage left in the buffers
    spent[1][...] = 1e300
    pool.give(spent)
    ws, ns = random_updates()
    acc = init_accumulator(red, shapes, pool)
    assert acc.total[0] is spent[0] and acc.total[1] is spent[1] and len(pool) == 0  # the same buffers
    assert acc.updates == 0 and np.isnan(acc.total[0]).all()  # not zeroed
    for w, n in zip(ws, ns):
        acc = red.add(acc, w, int(n))
    got = red.result(acc)
    for t in range(2):
        ref = np.average(np.stack([w[t] for w in ws]).astype(np.float64), axis=0, weights=ns)
        np.testing.assert_array_equal(got[t], ref)
    fresh = init_accumulator(red, shapes, pool)  # the pool is empty now: new buffers, none shared
    assert not any(np.shares_memory(a, b) for a in fresh.total for b in got)


def test_fold_rejects_bad_input():
    acc = empty_sum([(2,)])
    with pytest.raises(ValueError):
        fold(acc, [np.ones(2)], 0)
    with pytest.raises(ValueError):
        fold(acc, [np.ones(3)], 1)
    with pytest.raises(ValueError):
        mean(acc)


def test_fedavg_gives_the_weighted_mean():
    ws, ns = random_updates()
    params = [np.zeros(s, np.float32) for s in ((5, 3), (3,))]
    acc = empty_sum([p.shape for p in params])
    for w, n in zip(ws, ns):
        acc = fold(acc, w, int(n))
    t = fedavg()
    delta = [m - p for m, p in zip(mean(acc), params)]
    out, _ = t.update(delta, t.init(params), params)
    new = apply_delta(params, out)
    ref = np.average(np.stack([w[0] for w in ws]), axis=0, weights=ns)
    np.testing.assert_allclose(new[0], ref, rtol=1e-6)
    assert new[0].dtype == np.float32


def test_momentum_chain_matches_reference():
    params = [np.zeros(3)]
    t = fedavgm(server_lr=0.5, momentum=0.9)
    state = t.init(params)
    v = np.zeros(3)
    for _ in range(4):
        d = rng.normal(size=3)
        out, state = t.update([d], state, params)
        v = 0.9 * v + d
        np.testing.assert_allclose(out[0], 0.5 * v)


def test_state_flatten_roundtrip_and_mismatch():
    t = chain(trace(0.9), scale(2.0), trace(0.5))
    params = [np.zeros((2, 2)), np.zeros(3)]
    state = t.init(params)
    _, state = t.update([np.ones((2, 2)), np.ones(3)], state, params)
    flat = flatten_state(state)
    assert len(flat) == 4
    back = unflatten_state(t.init(params), flat)
    for a, b in zip(flatten_state(back), flat):
        np.testing.assert_array_equal(a, b)
    assert type(back) is type(state)
    with pytest.raises(ValueError):
        unflatten_state(t.init(params), flat[:-1])
    with pytest.raises(ValueError):
        unflatten_state(t.init(params), flat + [np.zeros(1)])


def controller(min_workers=2, timeout=10.0, rounds=3):
    c = RoundController(rounds=rounds, min_workers=min_workers, round_timeout=timeout, transform=fedavg())
    w = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
    c.set_model(specs_of(w), w)
    return c, w


def test_round_closes_when_everyone_submitted():
    c, w = controller()
    c.join(1), c.join(2)
    assert c.open_if_ready(0.0)
    assert c.submit(1, 1, 10, specs_of(w), [x + 1 for x in w]) == Accepted()
    assert not c.should_close(1.0)
    assert c.submit(2, 1, 30, specs_of(w), [x + 3 for x in w]) == Accepted()
    assert c.should_close(1.0)
    r = c.close(1.0)
    assert r.round == 1 and r.examples == 40 and r.workers == (1, 2)
    np.testing.assert_allclose(r.weights[0], np.full((2, 2), (10 * 1 + 30 * 3) / 40))


@pytest.mark.parametrize("acc_dtype", [np.float64, np.float32])
def test_combined_then_close_or_adopt(acc_dtype):
    """A relay's combined() spends the streaming accumulator once; close() or adopt() after it still works."""
    for adopt in (False, True):
        c = RoundController(rounds=3, min_workers=2, round_timeout=10.0, transform=fedavg(),
                            reducer=weighted_mean(acc_dtype))
        w = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
        c.set_model(specs_of(w), w)
        c.join(1), c.join(2)
        c.open_if_ready(0.0)
        c.submit(1, 1, 10, specs_of(w), [x + 1 for x in w])
        c.submit(2, 1, 30, specs_of(w), [x + 3 for x in w])
        mean, examples = c.combined()
        assert examples == 40 and all(m.dtype == np.float32 for m in mean)
        np.testing.assert_allclose(mean[0], np.full((2, 2), 2.5))
        r = c.adopt(1.0, 7, [m * 2 for m in mean]) if adopt else c.close(1.0)
        assert r.round == (7 if adopt else 1) and r.examples == 40
        np.testing.assert_allclose(r.weights[0], np.full((2, 2), 5.0 if adopt else 2.5))
        assert all(x.dtype == np.float32 for x in r.weights)
        np.testing.assert_allclose(mean[0], np.full((2, 2), 2.5))  # the relay's copy is untouched


def test_round_closes_at_deadline_with_quorum_only():
    c, w = controller(min_workers=2, timeout=5.0)
    for i in (1, 2, 3):
        c.join(i)
    c.open_if_ready(0.0)
    c.submit(1, 1, 1, specs_of(w), w)
    assert not c.should_close(100.0)  # past deadline but below quorum
    c.submit(2, 1, 1, specs_of(w), w)
    assert not c.should_close(4.0)  # quorum, but worker 3 may still come
    assert c.should_close(5.0)


def test_round_waits_for_min_workers_to_start():
    c, w = controller(min_workers=2)
    c.join(1)
    assert not c.open_if_ready(0.0)
    assert c.submit(1, 1, 5, specs_of(w), w) == Accepted()  # early update kept
    assert not c.should_close(1000.0)
    c.join(2)
    assert c.open_if_ready(1.0)
    c.submit(2, 1, 5, specs_of(w), w)
    assert c.should_close(1.0)


def test_stale_future_duplicate_and_bad_updates():
    c, w = controller(min_workers=1)
    c.join(1), c.join(2)
    c.open_if_ready(0.0)
    with pytest.raises(RemoteProtocolError, match="round 2"):
        c.submit(1, 2, 1, specs_of(w), w)
    c.submit(1, 1, 1, specs_of(w), w)
    with pytest.raises(RemoteProtocolError, match="second update"):
        c.submit(1, 1, 1, specs_of(w), w)
    bad = [np.zeros((2, 3), np.float32), w[1]]
    with pytest.raises(RemoteProtocolError) as ei:
        c.submit(2, 1, 1, specs_of(bad), bad)
    assert ei.value.code == "signature_mismatch" and "tensor 0" in str(ei.value) and "[2, 3]" in str(ei.value)
    nan = [w[0], np.array([0.0, np.nan], np.float32)]
    with pytest.raises(RemoteProtocolError) as ei:
        c.submit(2, 1, 1, specs_of(nan), nan)
    assert ei.value.code == "invalid_weights" and "t1" in str(ei.value)
    inf = [np.full((2, 2), np.inf, np.float32), w[1]]
    with pytest.raises(RemoteProtocolError):
        c.submit(2, 1, 1, specs_of(inf), inf)
    c.close(1.0)
    assert c.submit(2, 1, 1, specs_of(w), w) == Stale(1, 2)
    # rejected updates were never averaged in: the model is still all zeros
    assert all((x == 0).all() for x in c.weights)


def test_first_proposal_becomes_round_zero():
    c = RoundController(rounds=1, min_workers=1, round_timeout=1.0, transform=fedavg())
    w = [np.ones(3, np.float32)]
    assert c.propose_initial(specs_of(w), w) is True
    assert c.propose_initial(specs_of(w), [np.zeros(3, np.float32)]) is False
    np.testing.assert_array_equal(c.weights[0], 1)
    with pytest.raises(RemoteProtocolError):
        c.propose_initial(specs_of([np.ones(4, np.float32)]), [np.ones(4, np.float32)])


def test_resent_update_after_reconnect_counts_once():
    c, w = controller(min_workers=2)
    c.join(1), c.join(2)
    c.open_if_ready(0.0)
    assert c.submit(1, 1, 10, specs_of(w), [x + 1 for x in w], connection=7) == Accepted()
    assert c.submit(1, 1, 10, specs_of(w), [x + 5 for x in w], connection=8) == Duplicate()
    c.submit(2, 1, 10, specs_of(w), [x + 3 for x in w], connection=9)
    r = c.close(1.0)
    assert r.examples == 20
    np.testing.assert_allclose(r.weights[0], 2.0)  # (1 + 3) / 2: the re-sent copy was not added


def test_quorum_miss_extends_the_round_and_keeps_updates():
    c, w = controller(min_workers=2, timeout=5.0)
    c.join(1), c.join(2)
    c.open_if_ready(0.0)
    c.submit(1, 1, 4, specs_of(w), [x + 1 for x in w])
    c.leave(2)
    assert not c.should_close(6.0)
    assert c.past_deadline_without_quorum(6.0)
    c.extend(6.0)
    assert not c.past_deadline_without_quorum(7.0) and c.seconds_left(7.0) == pytest.approx(4.0)
    c.join(3)
    c.submit(3, 1, 4, specs_of(w), [x + 3 for x in w])
    assert c.should_close(7.0)
    np.testing.assert_allclose(c.close(7.0).weights[0], 2.0)


def test_fraction_samples_reproducibly_and_holds_the_rest():
    def run(seed):
        c = RoundController(rounds=5, min_workers=2, round_timeout=1.0, transform=fedavg(), fraction=0.5, seed=seed)
        w = [np.zeros(2, np.float32)]
        c.set_model(specs_of(w), w)
        for i in range(1, 7):
            c.join(i)
        c.open_if_ready(0.0)
        picks = []
        for r in range(1, 4):
            sel = sorted(c.selected)
            picks.append(sel)
            assert len(sel) == 3
            outsider = next(i for i in range(1, 7) if i not in sel)
            assert c.submit(outsider, r, 1, specs_of(w), w) == NotSelected()
            for i in sel:
                c.submit(i, r, 1, specs_of(w), w)
            assert c.should_close(0.5)
            c.close(0.5)
        return picks

    assert run(1) == run(1)
    assert run(1) != run(2)
