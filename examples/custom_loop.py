"""Federated training in a custom ``tf.GradientTape`` loop with ``fedsock.Client``.

    python examples/custom_loop.py --chief HOST:PORT --data ./shard [--token TOKEN] [--name NAME]

The client works with plain numpy arrays: ``join`` gives the starting
weights, ``sync(weights, num_examples)`` sends local weights and blocks until
the weighted average comes back.

With a chief run as ``--strategy fedprox --mu MU``, ``client.plan.mu`` is MU
and the loss inside the tape gets FedProx's proximal term
``mu/2 * ||w - w_global||^2`` over the trainable variables, where
``w_global`` is the model received at the last sync.
"""

import argparse
import logging
import sys

import fedsock.quiet

fedsock.quiet.import_tensorflow()  # before anything imports it: hides TensorFlow's start-up logging

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsock  # noqa: E402
from fedsock.data import load_shard  # noqa: E402
from fedsock.models import digits_mlp  # noqa: E402
from fedsock.worker.config import parse_worker_args  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="shard directory with .npz files (x, y)")
    p.add_argument("--lr", type=float, default=0.1)
    # --chief, --token (or $FEDSOCK_TOKEN), --name (default <host>-<pid>), timeouts, --config ...:
    # the settings worker.py has, shared with fedsock.Client
    args, config = parse_worker_args(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")  # fedsock's lines: connecting, retries, reconnects

    x, y = load_shard(args.data)
    model = digits_mlp()
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    optimizer = tf.keras.optimizers.SGD(args.lr)
    rng = np.random.default_rng(0)
    # The global model of the last sync, for FedProx's proximal term.
    anchors = [tf.Variable(v, trainable=False) for v in model.trainable_variables]
    mu = tf.Variable(0.0, trainable=False)

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            prox = tf.add_n([tf.reduce_sum(tf.square(v - a))
                             for v, a in zip(model.trainable_variables, anchors)])
            objective = loss + mu / 2.0 * prox
        grads = tape.gradient(objective, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def start_from(weights: list[np.ndarray]) -> None:
        model.set_weights(weights)
        for a, v in zip(anchors, model.trainable_variables):
            a.assign(v)

    with fedsock.Client.from_config(config) as client:
        start_from(client.join(model.get_weights()))
        mu.assign(client.plan.mu)
        if client.plan.mu:
            print(f"custom_loop: FedProx with mu = {client.plan.mu:g}")
        batch, sync_every = client.plan.batch_size, client.plan.sync_every
        while not client.finished:
            seen = 0
            for _ in range(sync_every):
                idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
                train_step(x[idx], y[idx])
                seen += len(idx)
            start_from(client.sync(model.get_weights(), num_examples=seen))
        acc = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
        print(f"custom_loop: finished after round {client.round}; local accuracy {acc:.4f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        print("custom_loop: interrupted", file=sys.stderr)
        sys.exit(130)
