"""check_compatible and with_dp: decided from what reducers declare, never from names."""

from __future__ import annotations

import numpy as np
import pytest

from fedsock.aggregation import (
    Reducer,
    Strategy,
    chain,
    check_compatible,
    dp_mean,
    fedadam,
    fedavg,
    krum,
    median,
    multikrum,
    parse_strategy,
    scale,
    trace,
    trimmed_mean,
    weighted_mean,
    with_dp,
)
from fedsock.aggregation.weighted_sum import empty_sum, fold, mean
from fedsock.errors import ConfigError

ROBUST = [median(), trimmed_mean(0.2), krum(1), multikrum(1, 3)]


def test_a_robust_reducer_named_like_a_mean_is_refused_with_secure_aggregation():
    s = Strategy(median(), fedavg(), name="fedavg")
    with pytest.raises(ConfigError) as ei:
        check_compatible(s, secure_agg=True, dp=False)
    msg = str(ei.value)
    assert "strategy fedavg" in msg and "coordinate-wise median" in msg
    assert "needs every worker's own update" in msg and "only their sum" in msg
    assert "weighted_mean()" in msg and "drop --secure-agg" in msg


@pytest.mark.parametrize("reducer", ROBUST, ids=lambda r: r.label)
@pytest.mark.parametrize("secure_agg, dp", [(True, False), (False, True), (True, True)])
def test_robust_reducers_are_refused_with_secure_aggregation_or_dp(reducer, secure_agg, dp):
    with pytest.raises(ConfigError, match="individual updates|own update"):
        check_compatible(Strategy(reducer, fedavg()), secure_agg=secure_agg, dp=dp)
    check_compatible(Strategy(reducer, fedavg()), secure_agg=False, dp=False)  # alone they are fine


def test_weighted_mean_with_a_server_optimizer_works_with_secure_aggregation_and_dp():
    s = Strategy(weighted_mean(), fedadam())
    for secure_agg, dp in ((True, False), (False, True), (True, True), (False, False)):
        check_compatible(s, secure_agg=secure_agg, dp=dp)
    private = with_dp(s, 1.0, 0.5)
    assert private.transform is s.transform and private.linear and not private.weighted_by_examples
    check_compatible(private, secure_agg=True, dp=True)


def test_a_custom_strategy_of_compatible_parts_is_accepted():
    s = Strategy(weighted_mean(np.float32), chain(trace(0.5), scale(0.1)), mu=0.01, name="mine")
    check_compatible(s, secure_agg=True, dp=False, min_workers=2)
    check_compatible(s, secure_agg=False, dp=True)


def test_every_named_mean_strategy_is_accepted_and_every_robust_one_refused():
    for text in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        check_compatible(parse_strategy(text), secure_agg=True, dp=True)
    for text in ("median", "trimmed:0.2", "krum:1", "multikrum:1,4"):
        with pytest.raises(ConfigError):
            check_compatible(parse_strategy(text), secure_agg=True, dp=False)


def test_an_undeclared_custom_reducer_is_refused_until_it_declares_itself_a_mean():
    plain = Reducer(empty_sum, fold, mean)  # declares nothing: the cautious defaults
    with pytest.raises(ConfigError, match="a custom reducer, needs every worker's own update"):
        check_compatible(Strategy(plain, fedavg()), secure_agg=True, dp=False)
    declared = plain._replace(needs_individual=False, weighted_by_examples=True, linear=True, label="my mean")
    check_compatible(Strategy(declared, fedavg()), secure_agg=True, dp=True)
    nonlinear = declared._replace(linear=False, label="my clipped mean")
    for secure_agg, dp in ((True, False), (False, True)):
        with pytest.raises(ConfigError, match="my clipped mean, does not declare its result to be the mean"):
            check_compatible(Strategy(nonlinear, fedavg()), secure_agg=secure_agg, dp=dp)


def test_an_equal_weight_mean_needs_dp_under_secure_aggregation():
    """Without DP, secure aggregation weighs by examples; a reducer that does not would silently change."""
    s = Strategy(dp_mean(1.0, 0.0), fedavg(), name="equal")
    with pytest.raises(ConfigError, match="weighs every update equally.*--dp-clip"):
        check_compatible(s, secure_agg=True, dp=False)
    check_compatible(s, secure_agg=True, dp=True)


def test_min_workers_below_what_the_reducer_needs_names_the_flag():
    with pytest.raises(ConfigError, match="needs at least 5 updates per round; set --min-workers 5 or more "
                                          r"\(it is 3\)"):
        check_compatible(Strategy(krum(1), fedavg(), name="krum:1"), secure_agg=False, dp=False, min_workers=3)
    check_compatible(Strategy(krum(1), fedavg()), secure_agg=False, dp=False, min_workers=5)


def test_with_dp_swaps_in_the_noised_mean_and_refuses_what_it_cannot_make_private():
    s = with_dp(Strategy(weighted_mean(), fedadam()), 1.0, 0.0)
    acc = s.reducer.add(s.reducer.init([(2,)]), [np.array([1.0, 0.0])], 1)
    acc = s.reducer.add(acc, [np.array([0.0, 1.0])], 1_000_000)
    np.testing.assert_array_equal(s.reducer.result(acc)[0], [0.5, 0.5])  # equal weights, whatever the examples
    with pytest.raises(ConfigError, match="picks or drops individual updates"):
        with_dp(Strategy(median(), fedavg()), 1.0, 1.0)
    with pytest.raises(ConfigError, match="clip norm > 0.*--dp-clip"):
        with_dp(Strategy(weighted_mean(), fedavg()), 0.0, 1.0)
    noisy = with_dp(Strategy(weighted_mean(), fedavg()), 1.0, 5.0, secure_agg=True,
                    rng=lambda: np.random.default_rng(0))
    acc = noisy.reducer.add(noisy.reducer.init([(3,)]), [np.ones(3)], 1)
    np.testing.assert_array_equal(noisy.reducer.result(acc)[0], np.ones(3))  # the workers add the noise
