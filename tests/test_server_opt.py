"""Server optimizers (FedOpt) against the formulas of Reddi et al. 2021, and checkpoint/resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsock import checkpoint
from fedsock.aggregation import (
    AdaptiveState,
    Strategy,
    apply_delta,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
    flatten_state,
    median,
    parse_strategy,
    unflatten_state,
)
from fedsock.protocol import specs_of

SHAPES = ((3, 2), (4,))


def reference_fedopt(kind, deltas, lr, b1, b2, tau):
    """Algorithm 2 of Reddi et al., written out coordinate by coordinate in plain Python floats."""
    flat = [[np.ravel(t).tolist() for t in d] for d in deltas]
    m = [[0.0] * len(t) for t in flat[0]]
    v = [[tau * tau] * len(t) for t in flat[0]]
    outs = []
    for d in flat:
        out = []
        for i, tensor in enumerate(d):
            step = []
            for j, g in enumerate(tensor):
                m[i][j] = b1 * m[i][j] + (1 - b1) * g
                if kind == "adagrad":
                    v[i][j] = v[i][j] + g * g
                elif kind == "yogi":
                    s = v[i][j] - g * g
                    v[i][j] = v[i][j] - (1 - b2) * g * g * ((s > 0) - (s < 0))
                else:
                    v[i][j] = b2 * v[i][j] + (1 - b2) * g * g
                step.append(lr * m[i][j] / (math.sqrt(v[i][j]) + tau))
            out.append(step)
        outs.append(out)
    return outs


def random_deltas(rng, rounds, scale=1.0):
    return [[rng.normal(scale=scale, size=s) for s in SHAPES] for _ in range(rounds)]


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["adam", "yogi", "adagrad"]), seed=st.integers(0, 2**32 - 1),
       lr=st.floats(1e-3, 1.0), b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.999),
       tau=st.floats(1e-6, 1.0), scale=st.floats(1e-4, 10.0))
def test_server_optimizers_match_the_paper(kind, seed, lr, b1, b2, tau, scale):
    deltas = random_deltas(np.random.default_rng(seed), 6, scale)
    t = {"adam": lambda: fedadam(lr, b1, b2, tau), "yogi": lambda: fedyogi(lr, b1, b2, tau),
         "adagrad": lambda: fedadagrad(lr, b1, tau)}[kind]()
    params = [np.zeros(s, np.float32) for s in SHAPES]
    state = t.init(params)
    ref = reference_fedopt(kind, deltas, lr, b1, b2, tau)
    for d, r in zip(deltas, ref):
        out, state = t.update([x.copy() for x in d], state, params)
        for got, want in zip(out, r):
            np.testing.assert_allclose(np.ravel(got), want, rtol=1e-10, atol=1e-300)


def test_adaptive_state_starts_at_tau_squared_and_is_float64():
    t = fedadam(tau=0.01)
    state = t.init([np.zeros((2, 2), np.float32)])
    adaptive = state.inner[0]
    assert isinstance(adaptive, AdaptiveState)
    assert adaptive.m[0].dtype == np.float64 and (adaptive.m[0] == 0).all()
    np.testing.assert_array_equal(adaptive.v[0], np.full((2, 2), 1e-4))


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="betas"):
        fedadam(beta1=1.0)
    with pytest.raises(ValueError, match="betas"):
        fedyogi(beta2=-0.1)
    with pytest.raises(ValueError, match="tau"):
        fedadagrad(tau=0.0)


def test_first_fedadam_step_moves_every_coordinate_by_about_the_server_lr():
    # With v starting at tau^2 and no bias correction, round 1 gives
    # m = (1-b1) d, v = b2 tau^2 + (1-b2) d^2: a step of lr (1-b1)/sqrt(1-b2) ~ lr for |d| >> tau.
    t = fedadam(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-6)
    d = np.array([5.0, -0.3, 2e-2])
    out, _ = t.update([d], t.init([np.zeros(3)]), [np.zeros(3)])
    np.testing.assert_allclose(out[0], 0.01 * np.sign(d), rtol=1e-3)


# --- checkpoint / resume ------------------------------------------------------------


def run_rounds(strategy: Strategy, weights, updates, state=None, start=0, stop=None):
    """Rounds ``start..stop`` of the chief's close(): reduce, delta, transform, apply."""
    state = strategy.transform.init(weights) if state is None else state
    for round_updates in updates[start:stop]:
        acc = strategy.reducer.init([w.shape for w in weights])
        for w, n in round_updates:
            acc = strategy.reducer.add(acc, w, n)
        combined = strategy.reducer.result(acc)
        delta = [c - np.asarray(w, np.float64) for c, w in zip(combined, weights)]
        delta, state = strategy.transform.update(delta, state, weights)
        weights = apply_delta(weights, delta)
    return weights, state


@pytest.mark.parametrize("make", [
    lambda: parse_strategy("fedadam", server_lr=0.05),
    lambda: parse_strategy("fedyogi"),
    lambda: parse_strategy("fedadagrad"),
    lambda: parse_strategy("fedavgm"),
    lambda: Strategy(median(), fedavgm(0.7, 0.9), name="median+momentum"),
    lambda: parse_strategy("krum:1"),
])
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, make):
    rng = np.random.default_rng(7)
    start = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    updates = [[([w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in start],
                 int(rng.integers(1, 100))) for _ in range(5)] for _ in range(9)]
    s = make()
    straight, straight_state = run_rounds(s, start, updates)

    first, state = run_rounds(s, start, updates, stop=4)
    path = checkpoint.round_path(tmp_path, 4)
    checkpoint.save(path, checkpoint.Checkpoint(4, specs_of(first), first, flatten_state(state), {}))
    del state  # the resumed chief is a fresh process: only the file survives
    back = checkpoint.load(path)
    s2 = make()
    restored = unflatten_state(s2.transform.init(back.weights), back.state)
    resumed, resumed_state = run_rounds(s2, back.weights, updates, state=restored, start=4)

    for a, b in zip(resumed, straight):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for a, b in zip(flatten_state(resumed_state), flatten_state(straight_state)):
        np.testing.assert_array_equal(a, b)
