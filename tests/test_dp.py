"""Client-level differential privacy: clipping, the chief's norm bound, the noised reducer, accounting, settings."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsock import cli
from fedsock import settings as fs_settings
from fedsock.aggregation import Strategy, dp_mean, fedavg, median
from fedsock.aggregation.accounting import epsilon
from fedsock.aggregation.dp import (
    NORM_TOLERANCE,
    add_gaussian_noise,
    bound_update,
    clip_update,
    fresh_rng,
    gaussian_noise,
    update_norm,
)
from fedsock.chief import ChiefConfig
from fedsock.chief.display import format_header, format_row
from fedsock.chief.intake import norm_bound
from fedsock.chief.outputs import privacy_fields
from fedsock.chief.rounds import Accepted, RoundController
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import Plan, specs_of
from fedsock.worker.privacy import clip_for_plan

SHAPES = ((3, 4), (5,))


def model(seed: int, scale: float = 1.0, dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * scale).astype(dtype) for s in SHAPES]


def norm64(ws, gs) -> float:
    return math.sqrt(sum(float(np.sum((np.asarray(w, np.float64) - np.asarray(g, np.float64)) ** 2))
                         for w, g in zip(ws, gs)))


# --- clipping (worker side) ------------------------------------------------


def test_clip_scales_the_delta_to_the_clip_norm_and_keeps_dtypes():
    g, w = model(0), model(1, 3.0)
    before = norm64(w, g)
    assert before > 2.0
    out, norm = clip_update(w, g, 2.0)
    assert norm == pytest.approx(before, rel=1e-12)
    assert [o.dtype for o in out] == [np.float32, np.float32] and [o.shape for o in out] == list(SHAPES)
    after = norm64(out, g)
    assert after <= 2.0 and after == pytest.approx(2.0, rel=1e-5)
    # the direction is kept: clipped delta = (C / norm) * delta
    for o, a, b in zip(out, w, g):
        np.testing.assert_allclose(o - b.astype(np.float64), (a - b.astype(np.float64)) * 2.0 / before,
                                   atol=1e-6)


def test_an_update_within_the_clip_norm_is_unchanged():
    g = model(0)
    w = [a + np.float32(1e-3) for a in g]
    out, norm = clip_update(w, g, 10.0)
    assert norm < 10.0
    for o, a in zip(out, w):
        np.testing.assert_array_equal(o, a)


def test_clip_passes_non_finite_updates_on_for_the_chief_to_refuse():
    g, w = model(0), model(1)
    w[0][0, 0] = np.nan
    out, norm = clip_update(w, g, 1.0)
    assert math.isnan(norm) and np.isnan(out[0][0, 0])
    with pytest.raises(ValueError, match="clip norm must be > 0"):
        clip_update(w, g, 0.0)


def test_clip_falls_back_to_the_global_weights_when_rounding_cannot_reach_the_bound():
    # float16 weights far from 0: a delta of norm 1e-6 cannot be represented at all
    g = [np.full(4, 1000.0, np.float16)]
    w = [np.full(4, 1002.0, np.float16)]
    out, _ = clip_update(w, g, 1e-6)
    assert out[0].dtype == np.float16 and norm64(out, g) <= 1e-6


@settings(max_examples=200, deadline=None)
@given(
    shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=6), min_size=1, max_size=4),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-4, 1e3),
    offset=st.floats(-100, 100),
    clip=st.floats(1e-3, 1e3),
)
def test_property_every_clipped_update_has_norm_at_most_c(shapes, dtype, seed, scale, offset, clip):
    rng = np.random.default_rng(seed)
    g = [(offset + rng.normal(size=s)).astype(dtype) for s in shapes]
    w = [(a.astype(np.float64) + scale * rng.normal(size=s)).astype(dtype) for a, s in zip(g, shapes)]
    out, norm = clip_update(w, g, clip)
    assert norm == pytest.approx(norm64(w, g), rel=1e-9, abs=1e-12)
    assert update_norm(out, g) <= clip
    assert norm64(out, g) <= clip * (1 + 1e-12)
    assert [o.dtype for o in out] == [dtype] * len(shapes)
    assert [o.shape for o in out] == [tuple(s) for s in shapes]
    # and the chief accepts it as it is
    bounded, _ = bound_update(out, g, clip)
    assert bounded is out


def test_the_worker_clips_only_when_the_plan_says_so(caplog):
    g, w = model(0), model(1, 3.0)
    assert clip_for_plan(w, g, Plan(3, 10, 32)) is w
    with caplog.at_level(logging.DEBUG, logger="fedsock.worker"):
        out = clip_for_plan(w, g, Plan(3, 10, 32, dp_clip=0.5, dp_noise=1.0))
    assert update_norm(out, g) <= 0.5
    assert "before clipping to 0.5 (clipped)" in caplog.text


# --- the chief's bound ------------------------------------------------------


def test_the_chief_refuses_a_longer_update_and_rescales_one_within_the_tolerance():
    g = model(0)
    d = [np.ones(s) for s in SHAPES]
    n = norm64(d, [np.zeros(s) for s in SHAPES])

    def at(length: float) -> list[np.ndarray]:
        return [a.astype(np.float64) + x * (length / n) for a, x in zip(g, d)]

    ok, norm = bound_update(at(0.99), g, 1.0)
    assert norm == pytest.approx(0.99)
    slightly, _ = bound_update(at(1.0 + NORM_TOLERANCE / 2), g, 1.0)
    assert norm64(slightly, g) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match=r"L2 norm 1\.01, above the clip norm 1 .*--dp-clip"):
        bound_update(at(1.01), g, 1.0)
    nan = at(0.5)
    nan[1][0] = np.nan
    with pytest.raises(ValueError):
        bound_update(nan, g, 1.0)


def test_round_controller_refuses_an_unclipped_update_as_invalid_weights():
    c = RoundController(rounds=2, min_workers=1, round_timeout=5.0, transform=fedavg(),
                        reducer=dp_mean(1.0, 0.0), prefold=norm_bound(1.0))
    w0 = model(0)
    c.set_model(specs_of(w0), w0)
    c.join(1), c.join(2)
    assert c.open_if_ready(0.0)
    far = [a + np.float32(1.0) for a in w0]  # delta norm sqrt(17) > 1
    with pytest.raises(RemoteProtocolError, match="above the clip norm") as info:
        c.submit(1, 1, 10, specs_of(far), far)
    assert info.value.code == "invalid_weights"
    assert c.submitted == {}
    near, _ = clip_update(far, w0, 1.0)
    assert isinstance(c.submit(2, 1, 10_000, specs_of(near), near), Accepted)
    result = c.close(1.0)
    assert norm64(result.weights, w0) == pytest.approx(1.0, rel=1e-5)


# --- the noised mean --------------------------------------------------------


def test_dp_mean_weighs_workers_equally_whatever_their_examples():
    r = dp_mean(1.0, 0.0)
    acc = r.init([(2,)])
    acc = r.add(acc, [np.array([1.0, 0.0])], 1)
    acc = r.add(acc, [np.array([0.0, 1.0])], 1_000_000)
    np.testing.assert_array_equal(r.result(acc)[0], [0.5, 0.5])


def test_dp_mean_adds_noise_of_std_z_c_to_the_sum_then_divides_by_k():
    clip, z, k, n = 0.5, 2.0, 4, 200_000
    r = dp_mean(clip, z, rng=lambda: np.random.default_rng(7))
    acc = r.init([(n,)])
    for _ in range(k):
        acc = r.add(acc, [np.full(n, 3.0)], 5)
    out = r.result(acc)[0]
    noise = out - 3.0  # (sum + N(0, (zC)^2)) / K - mean
    assert abs(noise.mean()) < 5 * z * clip / k / math.sqrt(n)
    assert noise.std() == pytest.approx(z * clip / k, rel=0.01)
    expected = np.random.default_rng(7).standard_normal(n) * (z * clip) / k
    np.testing.assert_allclose(noise, expected, atol=1e-12)


def test_fresh_noise_every_round_and_helpers():
    a, b = fresh_rng().standard_normal(4), fresh_rng().standard_normal(4)
    assert not np.array_equal(a, b)
    noise = gaussian_noise([(1000, 100), (3,)], 0.3, np.random.default_rng(1))
    assert [x.shape for x in noise] == [(1000, 100), (3,)] and noise[0].std() == pytest.approx(0.3, rel=0.01)
    assert not gaussian_noise([(2,)], 0.0, np.random.default_rng(1))[0].any()
    buf = [np.zeros(10)]
    add_gaussian_noise(buf, 1.0, np.random.default_rng(2))
    np.testing.assert_array_equal(buf[0], np.random.default_rng(2).standard_normal(10))
    with pytest.raises(ValueError, match="float64"):
        add_gaussian_noise([np.zeros(3, np.float32)], 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        dp_mean(0.0, 1.0)
    with pytest.raises(ValueError):
        dp_mean(1.0, -1.0)


# --- accounting -------------------------------------------------------------


def test_epsilon_matches_dp_accounting_and_the_published_values():
    import dp_accounting
    from dp_accounting import rdp

    for rounds, z, q, delta in [(100, 1.0, 1.0, 1e-5), (7, 0.7, 0.3, 1e-6), (1, 5.0, 1.0, 1e-3)]:
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
        assert epsilon(rounds, z, q, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    # FIELD-NOTES: all workers every round, 100 rounds, delta 1e-5: z = 1 -> ~96, z = 5 -> ~10.7
    assert epsilon(100, 1.0, 1.0, 1e-5) == pytest.approx(96, abs=0.5)
    assert epsilon(100, 5.0, 1.0, 1e-5) == pytest.approx(10.7, abs=0.1)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    assert epsilon(0, 1.0, 1.0, 1e-5) == 0.0
    assert epsilon(10, 0.0, 1.0, 1e-5) == math.inf
    assert epsilon(10, 1.0, 1.0, 1e-5) < epsilon(20, 1.0, 1.0, 1e-5)
    assert epsilon(10, 2.0, 1.0, 1e-5) < epsilon(10, 1.0, 1.0, 1e-5)
    assert epsilon(10, 1.0, 0.1, 1e-5) < epsilon(10, 1.0, 1.0, 1e-5)
    for bad in [(-1, 1.0, 1.0, 1e-5), (1, 1.0, 0.0, 1e-5), (1, 1.0, 1.0, 1.0), (1, -0.1, 1.0, 1e-5)]:
        with pytest.raises(ValueError):
            epsilon(*bad)


def test_metrics_fields_and_console_column():
    cfg = ChiefConfig(dp_clip=0.5, dp_noise=1.0, fraction=0.5, min_workers=1)
    row = privacy_fields(cfg, 3)
    assert row == {"epsilon": pytest.approx(epsilon(3, 1.0, 0.5, 1e-5)), "dp_delta": 1e-5, "dp_noise": 1.0,
                   "dp_clip": 0.5}
    assert privacy_fields(ChiefConfig(dp_clip=0.5), 3)["epsilon"] is None  # no noise: no guarantee
    base = {"round": 3, "workers": 2, "examples": 20, "seconds": 1.0, "bytes_in": 0, "bytes_out": 0}
    assert format_header(True).split()[-1] == "epsilon" and "epsilon" not in format_header()
    assert format_row({**base, **row}).split()[-1] == f"{row['epsilon']:.3g}"
    assert format_row({**base, "epsilon": None}).split()[-1] == "inf"
    assert len(format_row(base).split()) == len(format_header().split()) - 2  # "MB in", "MB out": 2 words each


# --- settings ---------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    ({"dp_noise": 1.0}, "--dp-noise needs --dp-clip"),
    ({"dp_clip": 1.0, "dp_delta": 0.0}, r"--dp-delta must be in \(0, 1\)"),
    ({"dp_clip": 1.0, "dp_delta": 1.0}, r"--dp-delta must be in \(0, 1\)"),
    ({"dp_clip": -1.0}, "--dp-clip must be a finite number >= 0"),
    ({"dp_clip": math.inf}, "--dp-clip must be a finite number >= 0"),
    ({"dp_clip": 1.0, "dp_noise": math.nan}, "--dp-noise must be a finite number >= 0"),
    ({"dp_clip": 1.0, "strategy": "median"}, "strategy median: .*picks or drops individual updates.*drop --dp-clip"),
    ({"dp_clip": 1.0, "strategy": "trimmed:0.2", "min_workers": 5}, "strategy trimmed:0.2: .*picks or drops"),
    ({"dp_clip": 1.0, "strategy": "krum:1", "min_workers": 5}, "strategy krum:1: .*drop --dp-clip"),
    ({"dp_clip": 1.0, "strategy": "multikrum:1,3", "min_workers": 5}, "multikrum.*picks or drops"),
    ({"dp_clip": 1.0, "compress": "int8"}, "does not combine with --compress int8.*use --compress fp16"),
    ({"dp_clip": 1.0, "compress": "topk:0.1"}, "error feedback"),
    ({"dp_clip": 1.0, "upstream": "top:7777"}, "not a relay"),
])
def test_unsound_or_bad_privacy_settings_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        ChiefConfig(**overrides).validate()


def test_sound_privacy_settings_build_the_dp_reducer():
    for strategy in ("fedavg", "fedprox", "fedadam", "fedavgm"):
        for compress in ("none", "fp16"):
            cfg = ChiefConfig(dp_clip=1.0, dp_noise=0.7, strategy=strategy, compress=compress)
            cfg.validate()
            s = cfg.build_strategy()
            acc = s.reducer.add(s.reducer.init([(1,)]), [np.ones(1)], 1)
            acc = s.reducer.add(acc, [np.zeros(1)], 99)
            assert s.reducer.result(acc)[0].shape == (1,)
    ChiefConfig(strategy="median").validate()  # without DP robust reducers are fine


def test_a_chief_with_dp_takes_a_composed_mean_and_refuses_a_robust_one(tmp_path):
    from fedsock.aggregation import fedadam, weighted_mean
    from fedsock.chief import Chief

    with pytest.raises(ConfigError, match="median, picks or drops individual updates.*drop --dp-clip"):
        Chief(ChiefConfig(state_dir=tmp_path, dp_clip=1.0), strategy=Strategy(median(), fedavg()))
    transform = fedadam()
    chief = Chief(ChiefConfig(state_dir=tmp_path, dp_clip=1.0, dp_noise=1.0),
                  strategy=Strategy(weighted_mean(), transform))
    assert chief.strategy.transform is transform and not chief.strategy.weighted_by_examples  # dp_mean
    chief = Chief(ChiefConfig(state_dir=tmp_path, dp_clip=1.0, dp_noise=1.0), strategy="fedadam")
    assert chief.config.dp_clip == 1.0 and chief.controller.prefold is not None  # the norm bound


def test_a_secure_chief_judges_a_strategy_by_what_its_reducer_declares(tmp_path):
    from fedsock.aggregation import fedadam, weighted_mean
    from fedsock.chief import Chief

    cfg = ChiefConfig(state_dir=tmp_path, secure_agg=True, min_workers=3)
    with pytest.raises(ConfigError, match="needs every worker's own update"):
        Chief(cfg, strategy=Strategy(median(), fedavg(), name="fedavg"))  # the name does not fool it
    assert Chief(cfg, strategy=Strategy(weighted_mean(), fedadam())).strategy.linear
    both = ChiefConfig(state_dir=tmp_path, secure_agg=True, min_workers=3, dp_clip=1.0, dp_noise=1.0)
    assert Chief(both, strategy=Strategy(weighted_mean(), fedadam())).strategy.linear


def test_privacy_flags_reach_the_config(monkeypatch):
    for k in [k for k in os.environ if k.startswith("FEDSOCK_")]:
        monkeypatch.delenv(k)
    args = cli.build_parser().parse_args(["chief", "--dp-clip", "0.5", "--dp-noise", "1.1"])
    fs_settings.apply(args, {"FEDSOCK_DP_DELTA": "1e-6"})
    cfg = cli.chief_config(args)
    assert (cfg.dp_clip, cfg.dp_noise, cfg.dp_delta) == (0.5, 1.1, 1e-6)
    args = cli.build_parser().parse_args(["chief", "--dp-noise", "1"])
    fs_settings.apply(args, {})
    with pytest.raises(ConfigError, match="--dp-noise needs --dp-clip"):
        cli.chief_config(args)


def test_a_clipped_update_sent_as_fp16_stays_within_the_chiefs_tolerance():
    from fedsock.protocol.compression import DecodedUpdate, parse_compression
    from fedsock.worker.compress import UpdateEncoder

    for seed in range(20):
        g = model(seed, 0.5)
        w = [a + np.float32(0.3) * b for a, b in zip(g, model(seed + 100))]
        clipped, _ = clip_update(w, g, 0.05)
        specs, payloads = UpdateEncoder(parse_compression("fp16")).encode(clipped, g, specs_of(clipped))
        received = DecodedUpdate(payloads, [s.enc for s in specs], g)
        assert update_norm(received, g) <= 0.05 * (1 + NORM_TOLERANCE)
        bounded, _ = bound_update(received, g, 0.05)
        assert update_norm(bounded, g) <= 0.05 * (1 + 1e-12)
