"""Benchmark: what the Keras hook adds to a sync, and what a sync costs against local training.

    python bench/hook_cost.py [--params 1000000,25000000] [--syncs 8] [--sync-every 50] [--batch-size 32]

For a Keras MLP of about P parameters (one worker, one chief over TLS on
127.0.0.1, the chief started without a model so the worker proposes it):

- ``get_s`` / ``set_s``: ``model.get_weights()`` and ``model.set_weights(new)``,
  the two steps ``FederatedCallback`` adds around ``Client.sync``;
- ``client_sync_s``: ``Client.sync`` on numpy arrays (serialise, send, wait
  for the chief's average, read it back), one worker so the round closes at once;
- ``train_steps_s``: ``sync_every`` training steps (``train_on_batch``) of the
  same model, what the worker does between two syncs.

Each figure is the median of ``--syncs`` repetitions (min and max alongside).
``hook_over_sync`` = (get + set) / client_sync; ``sync_over_training`` =
(get + set + client_sync) / train_steps. Prints one JSON object per model size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import reap, spawn  # noqa: E402

from fedsock import quiet  # noqa: E402
from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, rounds: int) -> None:
    import logging

    import fedsock

    logging.basicConfig(level=logging.WARNING)
    fedsock.Chief(host="127.0.0.1", port=0, state_dir=Path(state), rounds=rounds, min_workers=1,
                  round_timeout=600, done_grace=1.0).run()


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 5), "min": round(min(xs), 5), "max": round(max(xs), 5)}


def measure(params: int, syncs: int, sync_every: int, batch_size: int) -> dict[str, object]:
    quiet.quiet_environment()
    import numpy as np

    import fedsock
    from fedsock.kerasutil import import_keras

    keras = import_keras()
    n_in, n_out = 784, 10
    hidden = max(8, (params - n_out) // (n_in + 1 + n_out))
    model = keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(n_out)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n_params = int(sum(np.prod(w.shape) for w in model.get_weights()))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, n_in), dtype=np.float32)
    y = rng.integers(0, n_out, batch_size)
    model.train_on_batch(x, y)  # build and trace before timing

    train = []
    for _ in range(max(3, syncs // 2)):
        t0 = time.perf_counter()
        for _ in range(sync_every):
            model.train_on_batch(x, y)
        train.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(prefix="fedsock-hook-") as tmp:
        state = Path(tmp) / "chief"
        chief = spawn([__file__, "_chief", str(state), str(syncs + 1)], stdout=-3)
        addr = wait_for_address(state, chief, timeout=60)
        token = (state / "token").read_text().strip()
        gets, sets, client = [], [], []
        with fedsock.Client(addr, token=token, name="hook-bench", connect_timeout=60, idle_timeout=600) as c:
            last = c.join(model.get_weights())
            model.set_weights(last)
            while not c.finished:
                t0 = time.perf_counter()
                out = model.get_weights()
                t1 = time.perf_counter()
                new = c.sync(out, num_examples=batch_size * sync_every, reuse=last)
                t2 = time.perf_counter()
                model.set_weights(new)
                t3 = time.perf_counter()
                last = new
                gets.append(t1 - t0)
                client.append(t2 - t1)
                sets.append(t3 - t2)
        reap(chief)
    get_s, set_s, sync_s = (statistics.median(v) for v in (gets, sets, client))
    train_s = statistics.median(train)
    return {"params": n_params, "model_mib": round(n_params * 4 / 2**20, 1), "syncs": len(client),
            "sync_every": sync_every, "batch_size": batch_size,
            "get_s": _stats(gets), "set_s": _stats(sets), "client_sync_s": _stats(client),
            "train_steps_s": _stats(train),
            "hook_over_sync": round((get_s + set_s) / sync_s, 3),
            "sync_over_training": round((get_s + set_s + sync_s) / train_s, 3)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="1000000,25000000")
    p.add_argument("--syncs", type=int, default=8)
    p.add_argument("--sync-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    for text in a.params.split(","):
        print(json.dumps(measure(int(float(text)), a.syncs, a.sync_every, a.batch_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
