"""The worker's secure-aggregation step between the chief's messages (no I/O).

``masked_update`` turns the worker's weights into its masked message: the
weighted fixed-point encoding (``fedsock.secagg.fixedpoint``), plus its share
of the DP noise if the plan asks for it, plus the masks of the attempt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedsock.aggregation.dp import fresh_rng, gaussian_noise
from fedsock.protocol.messages import Plan, TensorSpec
from fedsock.protocol.secagg import SecAggMasked
from fedsock.secagg import fixedpoint
from fedsock.secagg.worker import WorkerRound


def noise_std(plan: Plan, min_survivors: int) -> float:
    """Std of the Gaussian noise each worker adds: ``z*C/sqrt(min_survivors)``, so the sum of at least
    ``min_survivors`` noised updates carries noise of std >= z*C."""
    if not plan.dp_noise or not plan.dp_clip:
        return 0.0
    return plan.dp_noise * plan.dp_clip / math.sqrt(max(min_survivors, 1))


def masked_update(sa: WorkerRound, weights: Sequence[np.ndarray], num_examples: int, plan: Plan,
                  names: Sequence[str]) -> tuple[SecAggMasked, list[np.ndarray]]:
    """The masked message and its uint64 tensors (views of one flat vector).

    With DP on (``plan.dp_clip``) every worker has weight 1 and, if
    ``plan.dp_noise``, adds its share of the noise before encoding.

    Raises:
        fixedpoint.RangeError: NaN/Inf, or values outside the fixed-point range.
    """
    assert sa.roster is not None
    roster = sa.roster
    weight = 1 if plan.dp_clip else int(num_examples)
    if weight < 1:
        raise fixedpoint.RangeError("an update needs at least one example")
    std = noise_std(plan, roster.min_survivors)
    if std:  # this worker's share of the DP noise; never reproducible (see dp.fresh_rng)
        noise = gaussian_noise([np.shape(w) for w in weights], std, fresh_rng())
        weights = [np.asarray(w, np.float64) + n for w, n in zip(weights, noise)]
    flat = sa.mask(fixedpoint.encode(weights, weight, roster.workers))
    arrays, pos = [], 0
    for w in weights:
        n = int(np.size(w))
        arrays.append(flat[pos:pos + n].reshape(np.shape(w)))
        pos += n
    arrays.append(flat[pos:pos + 1])
    specs = tuple(TensorSpec(name, "uint64", tuple(a.shape)) for name, a in zip([*names, "weight"], arrays))
    return SecAggMasked(roster.round, roster.attempt, specs, tuple(sorted(sa.excluded))), arrays
