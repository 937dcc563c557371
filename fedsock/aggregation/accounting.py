"""The privacy budget of DP-FedAvg: epsilon after a number of rounds (RDP accountant).

Each round is one sampled Gaussian mechanism: every worker takes part with
probability ``q`` (``--fraction``; 1 without sampling) and the sum of clipped
updates gets noise of std ``z * C``. ``epsilon`` composes
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` ``rounds`` times in
``dp_accounting``'s ``RdpAccountant`` and converts to ``(epsilon, delta)``.

It depends only on the round count and the settings, so a resumed chief
reports the same budget without storing accountant state. The chief samples a
fixed number of workers per round; accounting it as Poisson sampling with the
same rate is an approximation (see docs/privacy.md).
"""

from __future__ import annotations

import functools
import logging
import math


@functools.lru_cache(maxsize=256)
def epsilon(rounds: int, noise_multiplier: float, sampling_rate: float, delta: float) -> float:
    """Epsilon spent after ``rounds`` rounds of DP-FedAvg, at ``delta``.

    Args:
        rounds: rounds completed (>= 0).
        noise_multiplier: ``z`` (noise std / clip norm); 0 gives ``inf``.
        sampling_rate: ``q`` in (0, 1], the chance a worker takes part in a round.
        delta: in (0, 1).

    Returns:
        epsilon (0.0 after 0 rounds, ``math.inf`` without noise).

    Raises:
        ValueError: an argument out of range.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], got {sampling_rate}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not noise_multiplier >= 0:
        raise ValueError(f"the noise multiplier must be >= 0, got {noise_multiplier}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting  # slow to import (about 3 s): only chiefs with DP pay for it
    from dp_accounting import rdp

    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    # With q < 1 the accountant warns about every fractional RDP order it cannot evaluate and
    # leaves out; the bound stays valid, so those warnings are noise in the chief's log.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant = rdp.RdpAccountant()
        accountant.compose(event, rounds)
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)
