"""finish_round, BufferPool and ModelHolds: exact against plain numpy, and never writing what a caller holds."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from fedsock.aggregation import (
    BufferPool,
    ModelHolds,
    Strategy,
    Transform,
    fedadam,
    fedavg,
    fedavgm,
    finish_round,
    finish_round_with_holds,
    init_accumulator,
    median,
    weighted_mean,
)

SHAPES = [(6, 4), (4,), (6, 4), (3,)]  # two tensors of one shape: a spare of one may serve the other


def reference(weights, combined, transform, state):
    """The round in plain numpy, with fresh arrays everywhere (FedAvg: the combined weights, cast)."""
    if transform.passthrough:
        return [np.asarray(c).astype(w.dtype) for c, w in zip(combined, weights)], state
    delta = [np.asarray(c) - w for c, w in zip(combined, weights)]
    out, state = transform.update(delta, state, weights)
    new = [(w.astype(np.float64) + np.asarray(d, np.float64)).astype(w.dtype) for w, d in zip(weights, out)]
    return new, state


def updates(rng, k=3, dtype=np.float32):
    return [([rng.normal(size=s).astype(dtype) for s in SHAPES], int(rng.integers(1, 100))) for _ in range(k)]


def combine(reducer, rounds_updates, pool=None):
    acc = init_accumulator(reducer, SHAPES, pool) if pool is not None else reducer.init(SHAPES)
    for w, n in rounds_updates:
        acc = reducer.add(acc, w, n)
    return reducer.result(acc), acc


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


STRATEGIES = [
    Strategy(weighted_mean(), fedavg(), name="fedavg"),
    Strategy(weighted_mean(np.float32), fedavg(), name="fedavg, float32 sum"),
    Strategy(weighted_mean(), fedadam(server_lr=0.1), name="fedadam"),
    Strategy(weighted_mean(), fedavgm(0.5, 0.9), name="fedavgm"),
    Strategy(median(), fedavgm(0.7, 0.9), name="median+momentum"),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
@pytest.mark.parametrize("model_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reuse_weights", [False, True])
def test_rounds_with_reuse_equal_plain_numpy_bit_for_bit(strategy, model_dtype, reuse_weights):
    rng = np.random.default_rng(3)
    start = [rng.normal(size=s).astype(model_dtype) for s in SHAPES]
    weights, state = [w.copy() for w in start], strategy.transform.init(start)
    ref_w, ref_state = [w.copy() for w in start], strategy.transform.init(start)
    pool = BufferPool()
    seen = list(weights)  # every array the run has had (kept alive, so their ids stay theirs)
    reused = 0
    for _ in range(5):
        ups = [([u.astype(model_dtype) for u in w], n) for w, n in updates(rng)]
        combined, acc = combine(strategy.reducer, ups, pool)
        acc_buffers = list(getattr(acc, "total", ()))
        reused += sum(any(a is b for b in seen) for a in acc_buffers)
        seen += acc_buffers
        done = finish_round(weights, combined, strategy.transform, state, pool, spent=True,
                            reuse_weights=reuse_weights)
        ref_combined, _ = combine(strategy.reducer, ups)
        ref_w, ref_state = reference(ref_w, ref_combined, strategy.transform, ref_state)
        assert_same(done.weights, ref_w)
        for a, b in zip(done.state, ref_state):
            assert type(a) is type(b)
        reused += sum(any(a is b for b in seen) for a in done.weights)
        seen += done.weights
        if not reuse_weights:
            pool.give(done.retired)  # as a caller does once its sends of the old model are over
        weights, state = done.weights, done.state
    assert reused > 0  # the reuse under test did happen


def test_old_weights_a_caller_still_holds_are_never_written():
    """Without reuse_weights the old model stays intact, though the pool is full of spare buffers."""
    rng = np.random.default_rng(5)
    s = Strategy(weighted_mean(np.float32), fedavg())
    weights = [rng.normal(size=sh).astype(np.float32) for sh in SHAPES]
    state, pool = s.transform.init(weights), BufferPool()
    pool.give([np.full(sh, 7.0, np.float32) for sh in SHAPES])  # spare buffers nobody holds
    held = []
    for _ in range(4):
        combined, _ = combine(s.reducer, updates(rng), pool)
        snapshot = [w.copy() for w in weights]
        done = finish_round(weights, combined, s.transform, state, pool, spent=True)
        assert_same(weights, snapshot)  # still being sent, say: untouched
        assert not any(np.shares_memory(n, o) for n in done.weights for o in weights)
        held.append((weights, snapshot))
        weights, state = done.weights, done.state
    for w, snap in held:  # nothing later wrote into any of them either
        assert_same(w, snap)


def test_combined_arrays_that_are_not_spent_stay_untouched():
    rng = np.random.default_rng(6)
    weights = [rng.normal(size=sh) for sh in SHAPES]
    combined = [rng.normal(size=sh) for sh in SHAPES]
    copy = [c.copy() for c in combined]
    pool = BufferPool()
    t = fedavgm(0.5, 0.9)
    done = finish_round(weights, combined, t, t.init(weights), pool)
    assert_same(combined, copy)
    assert not any(c in pool for c in combined)
    assert_same(done.weights, reference(weights, copy, t, t.init(weights))[0])


class Kept(NamedTuple):
    delta: tuple[np.ndarray, ...]
    params: tuple[np.ndarray, ...]


def keeping() -> Transform:
    """A pure transform whose state keeps the very delta and params arrays it was given."""

    def init(params):
        return Kept(tuple(np.zeros(np.shape(p)) for p in params), tuple(params))

    def update(delta, state, params):
        return list(delta), Kept(tuple(delta), tuple(params))

    return Transform(init, update)


def test_buffers_a_transform_state_keeps_are_not_reused():
    """The state holds the delta (the spent sum) and the params: neither is overwritten or pooled,
    in the new state or in the old one (a checkpoint may still be writing it)."""
    rng = np.random.default_rng(8)
    s = Strategy(weighted_mean(), keeping())
    weights = [rng.normal(size=sh) for sh in SHAPES]  # float64: the delta could become the weights
    state, pool = s.transform.init(weights), BufferPool()
    ref_w, ref_state = [w.copy() for w in weights], s.transform.init(weights)
    for _ in range(4):
        ups = [([u.astype(np.float64) for u in w], n) for w, n in updates(rng)]
        combined, _ = combine(s.reducer, ups, pool)
        kept = [a.copy() for a in (*state.delta, *state.params)]  # a checkpoint may still be writing it
        done = finish_round(weights, combined, s.transform, state, pool, spent=True, reuse_weights=True)
        assert_same([*state.delta, *state.params], kept)
        ref_w, ref_state = reference(ref_w, combine(s.reducer, ups)[0], s.transform, ref_state)
        assert_same(done.weights, ref_w)
        assert_same(list(done.state.delta), list(ref_state.delta))
        assert_same(list(done.state.params), list(ref_state.params))
        assert not any(a in pool for a in done.state.delta)
        assert done.retired == []  # the state holds every old tensor
        pool.give(done.retired)
        weights, state = done.weights, done.state


def test_a_secure_aggregation_style_average_of_views_is_finished_exactly():
    """Secure aggregation decodes its average as views of one vector; reuse must not mix them up."""
    rng = np.random.default_rng(9)
    weights = [rng.normal(size=sh).astype(np.float32) for sh in SHAPES]
    flat = rng.normal(size=sum(int(np.prod(sh)) for sh in SHAPES))
    views, pos = [], 0
    for sh in SHAPES:
        n = int(np.prod(sh))
        views.append(flat[pos:pos + n].reshape(sh))
        pos += n
    want = reference([w.copy() for w in weights], [v.copy() for v in views], fedadam(), fedadam().init(weights))[0]
    t = fedadam()
    done = finish_round(weights, views, t, t.init(weights), BufferPool(), spent=True, reuse_weights=True)
    assert_same(done.weights, want)
    assert all(n is w for n, w in zip(done.weights, weights))  # written in place: the views (float64) cannot


def test_what_the_call_reads_is_not_written_even_if_the_pool_offers_it():
    """Even a pool that wrongly holds the current weights and the transform's state cannot make
    finish_round write into them: tensor 0 must not land in tensor 2's buffer (same shape)
    before tensor 2 is read, nor in the old momentum a checkpoint may still be writing."""
    rng = np.random.default_rng(11)
    t = fedavgm(0.5, 0.9)
    weights = [rng.normal(size=sh) for sh in SHAPES]
    state = t.update([rng.normal(size=sh) for sh in SHAPES], t.init(weights), weights)[1]
    combined = [rng.normal(size=sh) for sh in SHAPES]
    before = [a.copy() for a in (*weights, *state.inner[0].trace)]
    want = reference([w.copy() for w in weights], [c.copy() for c in combined], t, state)[0]
    pool = BufferPool()
    pool.give([*weights, *state.inner[0].trace])
    done = finish_round(weights, combined, t, state, pool, spent=True)
    assert_same(done.weights, want)
    assert_same([*weights, *state.inner[0].trace], before)


def test_finish_round_refuses_mismatched_tensors():
    w = [np.zeros((2, 2))]
    with pytest.raises(ValueError, match="shape"):
        finish_round(w, [np.zeros(4)], fedavg(), fedavg().init(w), BufferPool())
    with pytest.raises(ValueError, match="2 combined tensors"):
        finish_round(w, [np.zeros((2, 2))] * 2, fedavg(), fedavg().init(w), BufferPool())


def test_pool_takes_only_what_was_given_and_honours_its_bound():
    pool = BufferPool(max_bytes=2 * 8 * 10)
    a, b, c = (np.zeros(10) for _ in range(3))
    pool.give([a, a[2:], np.zeros(5)])  # a view is refused
    assert len(pool) == 2 and a in pool
    assert pool.take((10,), np.float32) is None  # another dtype
    assert pool.take((10,), np.float64, avoid={id(a)}) is None
    pool.give([b, c])  # over the bound: the oldest go
    assert a not in pool and len(pool) == 2 and pool.nbytes == 160
    assert pool.take((10,), np.float64) is c and pool.take((10,), np.float64) is b
    assert pool.take((10,), np.float64) is None
    ro = np.zeros(3)
    ro.flags.writeable = False
    pool.give([ro])
    assert len(pool) == 0


def test_model_holds_pools_a_replaced_model_after_its_last_use():
    rng = np.random.default_rng(10)
    s = Strategy(weighted_mean(), fedavg())
    pool = BufferPool()
    holds = ModelHolds(pool)
    weights = [rng.normal(size=sh).astype(np.float32) for sh in SHAPES]
    state = s.transform.init(weights)
    with pytest.raises(ValueError, match="adopt the first"):
        holds.replace(weights, [])
    holds.adopt(weights)
    assert holds.current_free
    sending = holds.acquire(list(weights))  # a send of the current Global starts (any list of its arrays)
    assert not holds.current_free
    combined, _ = combine(s.reducer, updates(rng), pool)
    done = finish_round(weights, combined, s.transform, state, pool, spent=True, reuse_weights=holds.current_free)
    assert not any(np.shares_memory(n, o) for n in done.weights for o in weights)
    holds.replace(done.weights, done.retired)
    assert not any(w in pool for w in weights)  # still being sent
    assert holds.current_free  # the new model has no use yet
    holds.release(sending)
    assert all(w in pool for w in weights)  # the send ended: the old model's buffers are spare
    combined, _ = combine(s.reducer, updates(rng), pool)
    ref = reference(done.weights, [c.copy() for c in combined], s.transform, done.state)[0]
    again = finish_round(done.weights, combined, s.transform, done.state, pool, spent=True)
    assert_same(again.weights, ref)
    assert {id(a) for a in again.weights} == {id(w) for w in weights}  # written into the released buffers
    with pytest.raises(ValueError, match="no use under way"):
        holds.release(sending)


def test_a_model_replaced_by_adopt_is_never_pooled():
    """adopt (a restored or upstream model) cannot know what else holds the old one: it is dropped."""
    pool = BufferPool()
    holds = ModelHolds(pool)
    old, new = [np.zeros(4)], [np.ones(4)]
    holds.adopt(old)
    sending = holds.acquire(old)
    holds.adopt(new)
    assert holds.current_free
    holds.release(sending)
    assert len(pool) == 0
    holds.replace([np.full(4, 2.0)], new)  # new was current and unused: its retired buffers are spare now
    assert new[0] in pool and old[0] not in pool


def test_finish_round_with_holds_reuses_the_model_only_when_no_send_holds_it():
    """The loop a chief runs: a send of each Global ends at some point; the model is
    overwritten in place when none is under way, and stays exact either way."""
    rng = np.random.default_rng(12)
    s = Strategy(weighted_mean(), fedadam(server_lr=0.1))
    holds = ModelHolds(BufferPool())
    weights = [rng.normal(size=sh).astype(np.float32) for sh in SHAPES]
    state = s.transform.init(weights)
    holds.adopt(weights)
    ref_w, ref_state = [w.copy() for w in weights], s.transform.init(weights)
    pending = None
    for r in range(6):
        ups = updates(rng)
        combined, _ = combine(s.reducer, ups, holds.pool)
        sent = [w.copy() for w in pending] if pending is not None else None
        in_place = holds.current_free
        done = finish_round_with_holds(holds, weights, combined, s.transform, state, spent=True)
        ref_w, ref_state = reference(ref_w, combine(s.reducer, ups)[0], s.transform, ref_state)
        assert_same(done.weights, ref_w)
        assert all(n is o for n, o in zip(done.weights, weights)) == in_place
        if pending is not None:
            assert_same(pending, sent)  # the model being sent was not touched
            holds.release(pending)
            pending = None
        if r % 2 == 0:  # every other Global is still being sent at the next close
            pending = holds.acquire(done.weights)
        weights, state = done.weights, done.state


@pytest.mark.parametrize("transform", [fedavg(), fedavgm()], ids=["fedavg", "fedavgm"])
def test_a_spent_float64_sum_goes_back_to_the_pool_for_the_next_round(transform):
    pool = BufferPool()
    weights = [np.zeros((4, 3), np.float32), np.zeros(5, np.float32)]
    state = transform.init(weights)
    for _ in range(3):
        combined = [pool.take_or_empty(w.shape, np.float64) for w in weights]  # the round's sum
        for c in combined:
            c[...] = 0.5
        weights, state, _ = finish_round(weights, combined, transform, state, pool, spent=True, reuse_weights=True)
        assert all(c in pool for c in combined)  # used up: the next round's sum takes them again
        assert not any(np.shares_memory(c, w) for c in combined for w in weights)
