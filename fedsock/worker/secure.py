"""The worker's secure-aggregation step between the chief's messages (no I/O).

``masked_update`` turns the worker's weights into its masked message: the
weighted fixed-point encoding (``fedsock.secagg.fixedpoint``), plus its share
of the DP noise if the plan asks for it, then the words of the metrics the
roster names (``fedsock.secagg.metrics``; not noised), plus the masks of the
attempt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedsock.aggregation.dp import fresh_rng, gaussian_noise
from fedsock.protocol.messages import Plan, TensorSpec
from fedsock.protocol.secagg import SecAggMasked
from fedsock.secagg import fixedpoint
from fedsock.secagg import metrics as metric_words
from fedsock.secagg.worker import WorkerRound

log = logging.getLogger("fedsock.worker")


def noise_std(plan: Plan, min_survivors: int) -> float:
    """Std of the Gaussian noise each worker adds: ``z*C/sqrt(min_survivors)``, so the sum of at least
    ``min_survivors`` noised updates carries noise of std >= z*C."""
    if not plan.dp_noise or not plan.dp_clip:
        return 0.0
    return plan.dp_noise * plan.dp_clip / math.sqrt(max(min_survivors, 1))


def masked_update(sa: WorkerRound, weights: Sequence[np.ndarray], num_examples: int, plan: Plan,
                  names: Sequence[str], metrics: Mapping[str, float] | None = None
                  ) -> tuple[SecAggMasked, list[np.ndarray]]:
    """The masked message and its uint64 tensors (views of one flat vector).

    With DP on (``plan.dp_clip``) every worker has weight 1 and, if
    ``plan.dp_noise``, adds its share of the noise before encoding.
    ``metrics``: what this worker shares of its metrics (Update names); the
    roster's metrics that it lacks get weight 0.

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
    tail, skipped = metric_words.encode(roster.metrics, metrics or {}, int(num_examples))
    if skipped:
        log.warning("round %d: metric(s) %s left out of the secure sum (NaN, Inf, |value| >= 2**30 or more than "
                    "2**30 examples)", roster.round, ", ".join(skipped))
    flat = sa.mask(fixedpoint.encode(weights, weight, roster.workers, tail))
    arrays, pos = [], 0
    for w in weights:
        n = int(np.size(w))
        arrays.append(flat[pos:pos + n].reshape(np.shape(w)))
        pos += n
    arrays.append(flat[pos:pos + 1])
    if roster.metrics:
        arrays.append(flat[pos + 1:])
    specs = tuple(TensorSpec(name, "uint64", tuple(a.shape))
                  for name, a in zip([*names, "weight", "metrics"], arrays))
    return SecAggMasked(roster.round, roster.attempt, specs, tuple(sorted(sa.excluded))), arrays
