"""Federated training inside ``model.fit`` with ``fedsock.keras.FederatedCallback``.

    python examples/keras_fit.py --chief HOST:PORT --data ./shard [--token TOKEN] [--name NAME]

The model is built locally (the same architecture as the chief's, or the
first proposal if the chief has none); the callback syncs it every
``sync_every`` steps and stops ``fit`` when the chief says the run is over.
With a chief run as ``--strategy fedprox --mu MU`` it also applies FedProx's
proximal term (see ``FederatedCallback``).
"""

import argparse
import logging
import sys

import fedsock.quiet

fedsock.quiet.import_tensorflow()  # before anything imports it: hides TensorFlow's start-up logging

import fedsock  # noqa: E402
import fedsock.keras  # noqa: E402
from fedsock.data import load_shard  # noqa: E402
from fedsock.models import digits_mlp  # noqa: E402
from fedsock.worker.config import parse_worker_args  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="shard directory with .npz files (x, y)")
    # --chief, --token (or $FEDSOCK_TOKEN), --name (default <host>-<pid>), timeouts, --config ...:
    # the settings worker.py has, shared with fedsock.Client
    args, config = parse_worker_args(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")  # fedsock's lines: connecting, retries, reconnects

    x, y = load_shard(args.data)
    model = digits_mlp()
    with fedsock.Client.from_config(config) as client:
        plan = client.plan
        # sync_every and batch_size follow the chief's plan; num_examples makes callback.epochs just enough
        callback = fedsock.keras.FederatedCallback(client, num_examples=len(x))
        if plan.mu:  # the callback adds FedProx's proximal step after every batch
            print(f"keras_fit: FedProx with mu = {plan.mu:g}")
        model.fit(x, y, batch_size=plan.batch_size, epochs=callback.epochs, callbacks=[callback], verbose=2)
        assert client.finished, "fit ended before the chief finished the run"
        loss, acc = model.evaluate(x, y, verbose=0)
        print(f"keras_fit: finished after round {client.round}; local accuracy {acc:.4f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        print("keras_fit: interrupted", file=sys.stderr)
        sys.exit(130)
