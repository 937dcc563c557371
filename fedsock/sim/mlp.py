"""A one-hidden-layer ReLU MLP with softmax cross-entropy, in numpy (float32).

The same architecture as ``fedsock.models.digits_mlp`` (64 -> hidden -> 10),
so the simulation studies the model the real chief trains. Parameters are a
list ``[W1, b1, W2, b2]`` in Keras' order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Params = list[np.ndarray]


def init_mlp(rng: np.random.Generator, inputs: int = 64, hidden: int = 64, classes: int = 10) -> Params:
    """Glorot-uniform kernels and zero biases, as Keras initializes ``Dense``."""

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    return [glorot(inputs, hidden), np.zeros(hidden, np.float32),
            glorot(hidden, classes), np.zeros(classes, np.float32)]


def logits(params: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Pre-softmax outputs."""
    w1, b1, w2, b2 = params
    return np.asarray(np.maximum(x @ w1 + b1, 0.0) @ w2 + b2)


def accuracy(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` classified as ``y``."""
    return float(np.mean(np.argmax(logits(params, x), axis=1) == y))


def gradients(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean softmax cross-entropy over the batch and its gradients.

    Returns:
        (loss, [dW1, db1, dW2, db2]).
    """
    w1, b1, w2, b2 = params
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    z = h @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(p[np.arange(n), y] + 1e-12)))
    dz = p
    dz[np.arange(n), y] -= 1.0
    dz /= n
    dh = (dz @ w2.T) * (pre > 0)
    return loss, [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def local_train(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int,
                batch: int | None, lr: float, rng: np.random.Generator, mu: float = 0.0) -> Params:
    """Plain SGD on one worker's data, as FedAvg's ClientUpdate (McMahan et al. 2017, Algorithm 1).

    Args:
        params: the global model to start from (not modified).
        x, y: the worker's examples.
        epochs: passes over the data (E).
        batch: minibatch size (B); None = the whole shard (one step per epoch).
        lr: learning rate.
        rng: shuffles the data each epoch.
        mu: FedProx coefficient: the gradient of ``mu/2 ||w - w_global||^2``,
            ``mu (w - w_global)``, is added to every step.

    Returns:
        The trained parameters.
    """
    start = [np.array(p, np.float32) for p in params]
    w = [p.copy() for p in start]
    n = len(y)
    size = n if batch is None else batch
    for _ in range(epochs):
        order = rng.permutation(n) if size < n else np.arange(n)
        for lo in range(0, n, size):
            idx = order[lo : lo + size]
            _, grads = gradients(w, x[idx], y[idx])
            for i, g in enumerate(grads):
                if mu:
                    g = g + mu * (w[i] - start[i])
                w[i] -= np.float32(lr) * g.astype(np.float32, copy=False)
    return w
