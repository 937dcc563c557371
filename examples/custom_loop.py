"""Federated training in a custom ``tf.GradientTape`` loop with ``fedsock.Client``.

    python examples/custom_loop.py --chief HOST:PORT --data ./shard [--token TOKEN]

The client works with plain numpy arrays: ``join`` gives the starting
weights, ``sync(weights, num_examples)`` sends local weights and blocks until
the weighted average comes back.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsock  # noqa: E402
from fedsock.data import load_shard  # noqa: E402
from fedsock.models import digits_mlp  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--chief", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--token", default=None, help="default: $FEDSOCK_TOKEN")
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args()

    x, y = load_shard(args.data)
    model = digits_mlp()
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    optimizer = tf.keras.optimizers.SGD(args.lr)
    rng = np.random.default_rng(0)

    @tf.function
    def train_step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    with fedsock.Client(args.chief, token=args.token, name="custom-loop-example") as client:
        model.set_weights(client.join(model.get_weights()))
        batch, sync_every = client.plan.batch_size, client.plan.sync_every
        while not client.finished:
            seen = 0
            for _ in range(sync_every):
                idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
                train_step(x[idx], y[idx])
                seen += len(idx)
            model.set_weights(client.sync(model.get_weights(), num_examples=seen))
        acc = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
        print(f"custom_loop: finished after round {client.round}; local accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
