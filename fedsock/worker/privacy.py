"""The worker's side of client-level differential privacy: clip the update the plan asks to clip.

The chief's plan carries ``dp_clip`` (C; 0 = off). ``clip_for_plan`` scales
the update's delta from the global weights the worker started from down to
L2 norm C, here where the raw update is, before anything leaves the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedsock.aggregation.dp import clip_update
from fedsock.protocol import Plan

log = logging.getLogger("fedsock.worker")


def clip_for_plan(weights: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                  plan: Plan) -> Sequence[np.ndarray]:
    """``weights`` with their delta from ``global_weights`` clipped to ``plan.dp_clip`` (if > 0).

    The norm before clipping is logged at debug level only: it is itself
    information about the local data.
    """
    if plan.dp_clip <= 0:
        return weights
    clipped, norm = clip_update(weights, global_weights, plan.dp_clip)
    log.debug("update delta L2 norm %.6g before clipping to %g%s", norm, plan.dp_clip,
              " (clipped)" if norm > plan.dp_clip else "")
    return clipped
