"""Robust reducers against brute-force references written from the papers' definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsock.aggregation import fedavg, krum, median, multikrum, trimmed_mean
from fedsock.chief.rounds import RoundController
from fedsock.errors import AggregationError
from fedsock.protocol import specs_of

SHAPES = ((2, 3), (4,))


def updates(seed: int, n: int, outliers: int = 0):
    rng = np.random.default_rng(seed)
    ws = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(n)]
    for w in ws[:outliers]:
        for t in w:
            t += rng.normal(scale=50.0, size=t.shape).astype(np.float32)
    return ws, rng.integers(1, 1000, size=n)


def combine(reducer, ws, ns):
    acc = reducer.init(list(SHAPES))
    for w, n in zip(ws, ns):
        acc = reducer.add(acc, w, int(n))
    return reducer.result(acc)


def coords(ws):
    """Every coordinate of every tensor, as a list over updates of plain floats."""
    flat = [np.concatenate([np.ravel(t).astype(np.float64) for t in w]).tolist() for w in ws]
    return [[f[j] for f in flat] for j in range(len(flat[0]))]


def unflat(values):
    out, i = [], 0
    for s in SHAPES:
        k = math.prod(s)
        out.append(np.array(values[i : i + k]).reshape(s))
        i += k
    return out


def ref_median(ws):
    res = []
    for c in coords(ws):
        s = sorted(c)
        n = len(s)
        res.append(s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
    return unflat(res)


def ref_trimmed(ws, beta):
    n = len(ws)
    k = int(beta * n)  # floor for positive values
    return unflat([sum(sorted(c)[k : n - k]) / (n - 2 * k) for c in coords(ws)])


def ref_scores(ws, f):
    flat = [np.concatenate([np.ravel(t).astype(np.float64) for t in w]) for w in ws]
    n = len(flat)
    scores = []
    for i in range(n):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return scores


def ref_multikrum(ws, f, m):
    scores = ref_scores(ws, f)
    chosen = sorted(range(len(ws)), key=lambda i: (scores[i], i))[:m]
    return [sum(ws[i][t].astype(np.float64) for i in chosen) / m for t in range(len(SHAPES))]


def assert_close(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12))
def test_median_matches_reference(seed, n):
    ws, ns = updates(seed, n)
    assert_close(combine(median(), ws, ns), ref_median(ws))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 15), beta=st.floats(0.05, 0.49))
def test_trimmed_mean_matches_reference(seed, n, beta):
    ws, ns = updates(seed, n)
    r = trimmed_mean(beta)
    if math.floor(beta * n) < 1:
        with pytest.raises(AggregationError, match=f"--min-workers {r.min_updates}"):
            combine(r, ws, ns)
        return
    assert_close(combine(r, ws, ns), ref_trimmed(ws, beta))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), f=st.integers(0, 3), extra=st.integers(0, 4))
def test_krum_and_multikrum_match_reference(seed, f, extra):
    n = 2 * f + 3 + extra
    ws, ns = updates(seed, n, outliers=f)
    scores = ref_scores(ws, f)
    best = min(range(n), key=lambda i: (scores[i], i))
    assert_close(combine(krum(f), ws, ns), [t.astype(np.float64) for t in ws[best]])
    for m in {1, n - f, n}:
        assert_close(combine(multikrum(f, m), ws, ns), ref_multikrum(ws, f, m))
    # the outliers (far from everyone) are never Krum's choice
    assert best >= f


def test_robust_rules_ignore_outliers_and_claimed_example_counts():
    ws, _ = updates(3, 7, outliers=1)
    ns = [10**9, 1, 1, 1, 1, 1, 1]  # the outlier also claims a billion examples
    honest = ws[1:]
    for r in (median(), trimmed_mean(0.15), krum(1), multikrum(1, 6)):
        got = combine(r, ws, ns)
        lo = [np.min([w[t] for w in honest], axis=0) for t in range(2)]
        hi = [np.max([w[t] for w in honest], axis=0) for t in range(2)]
        for g, a, b in zip(got, lo, hi):
            assert (g >= a - 1e-6).all() and (g <= b + 1e-6).all()
    assert_close(combine(multikrum(1, 6), ws, ns), [np.mean([w[t] for w in honest], axis=0, dtype=np.float64)
                                                     for t in range(2)])


def test_preconditions_have_actionable_errors():
    ws, ns = updates(1, 4)
    with pytest.raises(AggregationError, match=r"f=1 needs at least 5 updates.*has 4.*--min-workers 5"):
        combine(krum(1), ws, ns)
    with pytest.raises(AggregationError, match=r"needs at least 6 updates"):
        combine(multikrum(0, 6), ws, ns)
    with pytest.raises(AggregationError, match=r"trimmed mean with beta=0.1 needs at least 10"):
        combine(trimmed_mean(0.1), ws, ns)
    with pytest.raises(AggregationError):
        median().result(median().init(list(SHAPES)))
    assert [krum(2).min_updates, multikrum(1, 8).min_updates, trimmed_mean(0.1).min_updates,
            trimmed_mean(0.25).min_updates, median().min_updates] == [7, 8, 10, 4, 1]
    for bad in (lambda: trimmed_mean(0.5), lambda: trimmed_mean(0.0), lambda: krum(-1),
                lambda: multikrum(1, 0), lambda: krum(True)):
        with pytest.raises(ValueError):
            bad()
    r = median()
    with pytest.raises(ValueError, match="shape"):
        r.add(r.init(list(SHAPES)), [np.zeros((3, 2)), np.zeros(4)], 1)
    with pytest.raises(ValueError, match="0 examples"):
        r.add(r.init(list(SHAPES)), ws[0], 0)


def test_updates_are_copied_not_aliased():
    r = median()
    w = [np.ones(s, np.float32) for s in SHAPES]
    acc = r.add(r.init(list(SHAPES)), w, 1)
    w[0] += 5  # the caller reuses its buffer
    np.testing.assert_array_equal(r.result(acc)[0], np.ones(SHAPES[0]))


def test_a_failed_precondition_loses_no_update_in_the_round_controller():
    c = RoundController(rounds=2, min_workers=1, round_timeout=1.0, transform=fedavg(), reducer=krum(1))
    w0 = [np.zeros(s, np.float32) for s in SHAPES]
    c.set_model(specs_of(w0), w0)
    ws, _ = updates(5, 5)
    for k in range(1, 6):
        c.join(k)
    assert c.open_if_ready(0.0)
    for k in range(1, 4):
        c.submit(k, 1, 10, specs_of(ws[k - 1]), ws[k - 1])
    with pytest.raises(AggregationError, match="--min-workers 5"):
        c.close(1.0)
    assert c.round == 0 and sorted(c.submitted) == [1, 2, 3]
    for k in (4, 5):
        c.submit(k, 1, 10, specs_of(ws[k - 1]), ws[k - 1])
    result = c.close(2.0)
    expected = combine(krum(1), ws, [10] * 5)
    assert result.round == 1 and result.workers == (1, 2, 3, 4, 5)
    for got, want in zip(result.weights, expected):
        np.testing.assert_allclose(got, want.astype(np.float32))


def test_krum_choice_is_a_whole_update_not_a_mix():
    ws, ns = updates(11, 9, outliers=2)
    got = combine(krum(2), ws, ns)
    assert any(all(np.array_equal(g, t.astype(np.float64)) for g, t in zip(got, w)) for w in ws)
