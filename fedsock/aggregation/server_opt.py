"""Adaptive server optimizers of FedOpt (Reddi et al. 2021): FedAdam, FedYogi, FedAdagrad.

The round's combined delta ``Δ_t`` (combined weights minus global weights,
the negative pseudo-gradient) drives one step of an adaptive optimizer on
the server (Reddi et al., Algorithm 2), per coordinate::

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = v_{t-1} + Δ_t²                                    (Adagrad)
    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)      (Yogi)
    v_t = β2 v_{t-1} + (1 - β2) Δ_t²                        (Adam)
    x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)

with ``m_{-1} = 0`` and ``v_{-1} = τ²`` (the paper asks ``v_{-1} >= τ²``),
and no bias correction, as in the paper. ``scale_by_*`` computes
``m_t / (sqrt(v_t) + τ)``; the recipes chain it with ``scale(η)``. The state
is an ``AdaptiveState`` of float64 arrays, so ``flatten_state`` checkpoints it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fedsock.aggregation.transforms import Arrays, State, Transform, chain, scale


class AdaptiveState(NamedTuple):
    """First moments ``m`` and second moments ``v``, one array per tensor."""

    m: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]


SecondMoment = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check(beta1: float, beta2: float, tau: float) -> None:
    if not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
        raise ValueError(f"betas must be in [0, 1), got beta1={beta1}, beta2={beta2}")
    if not tau > 0 or not np.isfinite(tau):
        raise ValueError(f"tau must be positive and finite, got {tau}")


def _scale_by_adaptive(beta1: float, tau: float, second: SecondMoment) -> Transform:
    def init(params: Sequence[np.ndarray]) -> AdaptiveState:
        return AdaptiveState(
            tuple(np.zeros(np.shape(p), np.float64) for p in params),
            tuple(np.full(np.shape(p), tau * tau, np.float64) for p in params),
        )

    def update(delta: Arrays, state: State, params: Sequence[np.ndarray]) -> tuple[Arrays, State]:
        m = tuple(beta1 * m0 + (1.0 - beta1) * d for m0, d in zip(state.m, delta))
        v = tuple(second(v0, np.square(d)) for v0, d in zip(state.v, delta))
        out = [mt / (np.sqrt(vt) + tau) for mt, vt in zip(m, v)]
        return out, AdaptiveState(m, v)

    return Transform(init, update)


def scale_by_adam(beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """``m / (sqrt(v) + τ)`` with Adam's second moment ``v = β2 v + (1 - β2) Δ²``.

    Raises:
        ValueError: a beta outside [0, 1) or tau <= 0.
    """
    _check(beta1, beta2, tau)
    return _scale_by_adaptive(beta1, tau, lambda v, d2: beta2 * v + (1.0 - beta2) * d2)


def scale_by_yogi(beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """``m / (sqrt(v) + τ)`` with Yogi's ``v = v - (1 - β2) Δ² sign(v - Δ²)``.

    Raises:
        ValueError: a beta outside [0, 1) or tau <= 0.
    """
    _check(beta1, beta2, tau)
    return _scale_by_adaptive(beta1, tau, lambda v, d2: v - (1.0 - beta2) * d2 * np.sign(v - d2))


def scale_by_adagrad(beta1: float = 0.0, tau: float = 1e-3) -> Transform:
    """``m / (sqrt(v) + τ)`` with Adagrad's ``v = v + Δ²``.

    Raises:
        ValueError: beta1 outside [0, 1) or tau <= 0.
    """
    _check(beta1, 0.0, tau)
    return _scale_by_adaptive(beta1, tau, lambda v, d2: v + d2)


def fedadam(server_lr: float = 0.01, beta1: float = 0.5, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedAdam (Reddi et al. 2021): Adam on the server, step ``server_lr``.

    The defaults are ``--strategy fedadam``'s (``strategies.DEFAULTS``; beta1 0.5, not the paper's 0.9:
    docs/algorithms.md says why).
    """
    return chain(scale_by_adam(beta1, beta2, tau), scale(server_lr))


def fedyogi(server_lr: float = 0.01, beta1: float = 0.5, beta2: float = 0.99, tau: float = 1e-3) -> Transform:
    """FedYogi (Reddi et al. 2021): Yogi on the server, step ``server_lr`` (defaults: ``--strategy fedyogi``'s)."""
    return chain(scale_by_yogi(beta1, beta2, tau), scale(server_lr))


def fedadagrad(server_lr: float = 0.1, beta1: float = 0.5, tau: float = 1e-3) -> Transform:
    """FedAdagrad (Reddi et al. 2021): Adagrad on the server, step ``server_lr``.

    The defaults are ``--strategy fedadagrad``'s: some momentum (``beta1 = 0.5``) learned faster on the
    demo's data than Adagrad's usual ``beta1 = 0`` (docs/algorithms.md).
    """
    return chain(scale_by_adagrad(beta1, tau), scale(server_lr))
