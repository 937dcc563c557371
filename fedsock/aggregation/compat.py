"""What a strategy combines with: secure aggregation, differential privacy, ``--min-workers``.

Decided from what the strategy's reducer declares (``Reducer.needs_individual``,
``linear``, ``weighted_by_examples``, ``min_updates``), never from its name,
so a strategy composed in Python is judged exactly like one named on the
command line. Server transforms run on the combined mean only, so any one
combines with both (post-processing keeps DP's guarantee).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedsock.aggregation.dp import dp_mean, fresh_rng
from fedsock.aggregation.strategies import Strategy
from fedsock.errors import ConfigError

MEANS = ("fedavg, fedprox or a server optimizer (fedavgm, fedadam, fedyogi, fedadagrad); "
         "from Python, a Strategy whose reducer is weighted_mean()")


def _what(strategy: Strategy) -> str:
    return f"strategy {strategy.name}: its reducer, {strategy.reducer.label},"


def check_compatible(strategy: Strategy, *, secure_agg: bool, dp: bool, min_workers: int | None = None) -> None:
    """Refuse a strategy that cannot run as asked.

    Args:
        strategy: the reducer and server transform.
        secure_agg: the chief sees only the sum of the updates.
        dp: client-level differential privacy: the chief replaces the
            reducer with ``dp_mean`` (equal weights, noise on the sum; see
            ``with_dp``).
        min_workers: updates a round may close with (None: not checked).

    Raises:
        ConfigError: saying which setting or reducer to change.
    """
    if secure_agg:
        if strategy.needs_individual:
            raise ConfigError(f"{_what(strategy)} needs every worker's own update, and secure aggregation "
                              f"shows the chief only their sum: use {MEANS}, or drop --secure-agg")
        if not strategy.linear:
            raise ConfigError(f"{_what(strategy)} does not declare its result to be the mean of the updates "
                              "(Reducer(..., linear=True)), and secure aggregation computes nothing but that "
                              f"mean, so the reducer would never run: use {MEANS}, or drop --secure-agg")
        if not dp and not strategy.weighted_by_examples:
            raise ConfigError(f"{_what(strategy)} weighs every update equally, but secure aggregation without "
                              "differential privacy weighs each by its num_examples: use weighted_mean(), "
                              "or turn on --dp-clip (then every update weighs 1)")
    if dp:
        if strategy.needs_individual:
            raise ConfigError(f"{_what(strategy)} picks or drops individual updates, while differential "
                              "privacy bounds each worker's influence on a noised sum, so neither the noise "
                              f"calibration nor the accounting applies: use {MEANS}, or drop --dp-clip")
        if not strategy.linear:
            raise ConfigError(f"{_what(strategy)} does not declare its result to be the mean of the updates "
                              "(Reducer(..., linear=True)); with --dp-clip the chief replaces the reducer "
                              f"by the noised mean, which would change what it computes: use {MEANS}")
    if min_workers is not None and min_workers < strategy.min_updates:
        raise ConfigError(f"strategy {strategy.name} needs at least {strategy.min_updates} updates per round; "
                          f"set --min-workers {strategy.min_updates} or more (it is {min_workers})")


def with_dp(strategy: Strategy, clip: float, noise_multiplier: float, *, secure_agg: bool = False,
            rng: Callable[[], np.random.Generator] = fresh_rng) -> Strategy:
    """``strategy`` under DP-FedAvg: its reducer replaced by ``dp_mean(clip, noise_multiplier)``.

    The server transform stays and runs on the noised mean. With
    ``secure_agg`` the workers add the noise to what they mask, so the
    chief's reducer adds none.

    Raises:
        ConfigError: the strategy is not compatible with DP (see
            ``check_compatible``), or ``clip``/``noise_multiplier`` is out of range.
    """
    check_compatible(strategy, secure_agg=secure_agg, dp=True)
    try:
        reducer = dp_mean(clip, 0.0 if secure_agg else noise_multiplier, rng)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--dp-clip, --dp-noise)") from None
    return strategy._replace(reducer=reducer)
