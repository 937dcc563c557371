"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): clipping, bounding, noise.

The pieces, all pure numpy:

- ``clip_update`` (worker side): scale an update's delta from the global
  weights down to L2 norm ``C`` (the global norm over all tensors).
- ``bound_update`` (chief side, when it sees individual updates): refuse an
  update whose delta norm exceeds ``C`` by more than ``NORM_TOLERANCE``, and
  scale one within the tolerance down to exactly ``C``.
- ``dp_mean(clip, noise_multiplier)``: the reducer. Every update weighs 1
  (not its ``num_examples``), so one worker moves the sum by at most ``C``;
  its result is ``(sum_k w_k + N(0, (z C)^2 I)) / K``, which equals
  ``global + (sum_k delta_k + noise) / K`` since each ``w_k = global + delta_k``.
- ``gaussian_noise`` / ``add_gaussian_noise`` with ``fresh_rng``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence

import numpy as np

from fedsock.aggregation.buffers import BufferPool
from fedsock.aggregation.reducers import Reducer, pooled_sum
from fedsock.aggregation.weighted_sum import BLOCK, WeightedSum, empty_sum, fold, mean

#: Relative excess over ``C`` the chief tolerates in an update's delta norm:
#: float16 compression (relative error <= 2**-11 per element) and float32
#: rounding of ``global + delta`` may lift a clipped norm slightly above ``C``.
#: Such an update is scaled back to ``C`` before it is summed.
NORM_TOLERANCE = 1e-3


def update_norm(weights: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """The L2 norm of ``weights - reference`` over all tensors, computed in float64 block by block.

    Raises:
        ValueError: a different number of tensors, or shapes that differ.
    """
    if len(weights) != len(reference):
        raise ValueError(f"{len(weights)} tensors, the reference has {len(reference)}")
    total = 0.0
    for w, g in zip(weights, reference):
        fw, fg = np.asarray(w).reshape(-1), np.asarray(g).reshape(-1)
        if fw.size != fg.size:
            raise ValueError(f"a tensor of {fw.size} elements, the reference has {fg.size}")
        for start in range(0, fw.size, BLOCK):
            d = np.subtract(fw[start:start + BLOCK], fg[start:start + BLOCK], dtype=np.float64)
            total += float(np.dot(d, d))
    return math.sqrt(total)


def _shrink(w: np.ndarray, g: np.ndarray, factor: float) -> np.ndarray:
    """``g + factor * (w - g)`` computed in float64, returned in ``w``'s dtype."""
    g64 = np.asarray(g, np.float64)
    out = np.subtract(w, g64, dtype=np.float64)
    out *= factor
    out += g64
    result: np.ndarray = out.astype(np.asarray(w).dtype, copy=False)
    return result


def clip_update(weights: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                clip: float) -> tuple[list[np.ndarray], float]:
    """Clip an update's delta from ``global_weights`` to L2 norm ``clip`` (all tensors together).

    The result keeps each tensor's dtype, and its delta norm (``update_norm``,
    float64) is <= ``clip`` after that rounding too: if rounding to the dtype
    lifts it above, the scale is shrunk again; should that fail, the global
    weights themselves (delta 0) are returned. An update whose norm is NaN or
    infinite is returned unchanged: the chief refuses it as ``invalid_weights``.

    Args:
        weights: the locally trained weights.
        global_weights: the global weights training started from.
        clip: ``C`` > 0.

    Returns:
        (clipped weights, the delta's norm before clipping).

    Raises:
        ValueError: ``clip`` is not positive, or the tensors do not match.
    """
    if not clip > 0:
        raise ValueError(f"the clip norm must be > 0, got {clip}")
    arrays = [np.asarray(w) for w in weights]
    norm = update_norm(arrays, global_weights)
    if norm <= clip or not math.isfinite(norm):
        return arrays, norm
    factor = clip / norm
    for _ in range(4):
        out = [_shrink(w, g, factor) for w, g in zip(arrays, global_weights)]
        after = update_norm(out, global_weights)
        if after <= clip:
            return out, norm
        factor *= clip / after * (1 - 1e-6)
    return [np.array(g, dtype=w.dtype) for w, g in zip(arrays, global_weights)], norm


def bound_update(weights: Sequence[np.ndarray], reference: Sequence[np.ndarray], clip: float,
                 tolerance: float = NORM_TOLERANCE) -> tuple[Sequence[np.ndarray], float]:
    """Enforce ``||weights - reference|| <= clip`` on an update the chief received.

    Returns:
        (the update, its delta norm): unchanged when the norm is <= ``clip``;
        scaled to exactly ``clip`` (float64 tensors) when it is within
        ``clip * (1 + tolerance)``.

    Raises:
        ValueError: the norm exceeds ``clip * (1 + tolerance)`` (or is NaN),
            with a message for the worker.
    """
    norm = update_norm(weights, reference)
    if norm <= clip:
        return weights, norm
    if not norm <= clip * (1 + tolerance):
        raise ValueError(
            f"the update's delta from the global model has L2 norm {norm:.6g}, above the clip norm "
            f"{clip:g} (--dp-clip) that this chief's differential privacy requires; workers must clip "
            "their updates (fedsock.Client does when the plan has dp_clip)"
        )
    factor = clip / norm
    return [np.asarray(g, np.float64) + factor * np.subtract(w, g, dtype=np.float64)
            for w, g in zip(weights, reference)], norm


def fresh_rng() -> np.random.Generator:
    """A numpy Generator seeded with 128 bits from the operating system's CSPRNG (``secrets``).

    Deliberately not reproducible: noise that could be regenerated from a
    known seed (such as ``--seed``) could be subtracted from the published
    model, and the privacy guarantee would be gone.
    """
    return np.random.default_rng(secrets.randbits(128))


def gaussian_noise(shapes: Sequence[tuple[int, ...]], std: float,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Independent ``N(0, std^2)`` float64 noise, one array per shape."""
    if not std >= 0:
        raise ValueError(f"the noise std must be >= 0, got {std}")
    return [rng.normal(0.0, std, size=tuple(s)) if std > 0 else np.zeros(tuple(s)) for s in shapes]


def add_gaussian_noise(arrays: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> None:
    """Add ``N(0, std^2)`` noise to float64 ``arrays`` in place, one block at a time (no big temporary)."""
    scratch = np.empty(min(BLOCK, max((a.size for a in arrays), default=1)), np.float64)
    for a in arrays:
        if a.dtype != np.float64:
            raise ValueError(f"noise is added to float64 sums, got {a.dtype}")
        flat = a.reshape(-1)
        for start in range(0, flat.size, BLOCK):
            stop = min(start + BLOCK, flat.size)
            tmp = scratch[: stop - start]
            rng.standard_normal(out=tmp)
            tmp *= std
            flat[start:stop] += tmp


def dp_mean(clip: float, noise_multiplier: float,
            rng: Callable[[], np.random.Generator] = fresh_rng) -> Reducer:
    """DP-FedAvg's reducer: equal weights, Gaussian noise of std ``noise_multiplier * clip`` on the sum.

    Updates must already be bounded to ``clip`` (``bound_update``); this
    reducer only sums them. The sensitivity of the sum to one worker is then
    ``clip``, and ``result`` is ``(sum + N(0, (z C)^2 I)) / K`` for ``K``
    updates. With secure aggregation the workers add the noise and the chief
    must not add it again (``noise_multiplier=0`` here).

    Args:
        clip: ``C`` > 0.
        noise_multiplier: ``z`` >= 0 (0: clipping and equal weights only, no
            privacy guarantee).
        rng: makes the generator for one round's noise (default
            ``fresh_rng``; tests pass a seeded one).

    Raises:
        ValueError: ``clip`` <= 0 or ``noise_multiplier`` < 0.
    """
    if not clip > 0 or not math.isfinite(clip):
        raise ValueError(f"dp_mean needs a clip norm > 0, got {clip}")
    if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"dp_mean needs a noise multiplier >= 0, got {noise_multiplier}")
    std = noise_multiplier * clip

    def init(shapes: Sequence[tuple[int, ...]]) -> WeightedSum:
        return empty_sum(shapes, np.float64)

    def add(acc: WeightedSum, weights: Sequence[np.ndarray], num_examples: float) -> WeightedSum:
        return fold(acc, weights, 1.0)  # equal weights: num_examples would change the sensitivity

    def result(acc: WeightedSum) -> list[np.ndarray]:
        if acc.updates and std > 0:
            add_gaussian_noise(acc.total, std, rng())
        return mean(acc)

    def init_pooled(shapes: Sequence[tuple[int, ...]], pool: BufferPool) -> WeightedSum:
        return pooled_sum(shapes, np.float64, pool)

    # Linear although noised: the mean it stands in for is linear, and with secure
    # aggregation the workers add the noise to what they mask.
    return Reducer(init, add, result, 1, needs_individual=False, weighted_by_examples=False, linear=True,
                   init_pooled=init_pooled, label=f"the DP mean (clip {clip:g}, noise multiplier {noise_multiplier:g})")
