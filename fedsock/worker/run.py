"""``worker.py``: join a chief and train a Keras model on a local shard."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedsock.data import load_shard, shard_files
from fedsock.errors import ConfigError
from fedsock.kerasversion import check_keras_version
from fedsock.settings import setting
from fedsock.worker.client import Client, token_from
from fedsock.worker.config import WorkerConfig, check_chief_resolves
from fedsock.worker.modelguard import choose_model

log = logging.getLogger("fedsock.worker")


@dataclass
class TrainingOptions:
    """What ``worker.py`` adds to ``WorkerConfig``: the local data and model, and how training looks."""

    data: Path = setting(help="shard: a folder of .npz files (arrays x, y) or one .npz file")
    model: str | None = setting(None, help="train your own model (.keras or module:function), never the chief's "
                               "config; its tensors must match the chief's")
    seed: int | None = setting(None, help="seed for local shuffling and dropout, to make training repeatable")
    progress: str = setting("auto", choices=("auto", "live", "plain"),
                            help="auto: a Keras progress bar per round when stdout is a terminal, else a log "
                            "line per sync; live; plain")


def run_worker(config: WorkerConfig, training: TrainingOptions, verbose: int = 0) -> dict[str, float]:
    """Train with the chief until it says ``Done``.

    Args:
        config: how to reach the chief (address, token, name, timeouts, TLS).
        training: the local shard, the worker's own model (if given, trained
            instead of the chief's config, which is then never built), seed
            and progress display.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The final model's metrics on the local shard.

    Raises:
        ConfigError, ConnectError, AuthenticationError, PeerError: with a
            message to act on.
    """
    check_keras_version()
    data, model, seed, progress = training.data, training.model, training.seed, training.progress
    check_chief_resolves(config.chief)
    if config.ca is None:
        token_from(config.token)  # a missing or malformed token fails now, not after TensorFlow's start-up
    x, y = load_shard(data)
    log.info("loaded %d examples from %s", len(y), data)
    from fedsock import kerasutil

    # TensorFlow's import takes seconds: done before joining, so that the first round does not wait for it
    started = time.monotonic()
    keras = kerasutil.import_keras()
    log.info("Keras %s ready in %.1f s", keras.__version__, time.monotonic() - started)
    with Client.from_config(config) as client:
        log.info("joined the chief at %s:%s as worker %d (round %d; sync every %d steps, batch %d)",
                 *client.address, client.worker_id, client.round, client.plan.sync_every,
                 client.plan.batch_size)
        if seed is not None:
            keras.utils.set_random_seed(seed)
        try:
            keras_model = choose_model(client.model_config, client.compile_config, client.welcome.tensors,
                                       model, config.max_model_bytes)
            files = shard_files(data)
            kerasutil.check_data_fits(keras_model, x, y, source=str(files[0] if len(files) == 1 else data))
        except ConfigError as exc:
            client.close(reason=f"worker {client.name} cannot train: {exc}")
            raise
        from fedsock.worker.keras import FederatedCallback

        plan = client.plan
        bar = progress == "live" or (progress == "auto" and sys.stdout.isatty())
        callback = FederatedCallback(client, plan.sync_every, plan.batch_size, num_examples=len(y), progress=bar)
        keras_model.fit(x, y, batch_size=plan.batch_size, epochs=1_000_000, shuffle=True,
                        callbacks=[callback], verbose=verbose)
        if not client.finished:
            raise ConfigError("training stopped before the chief finished the run")
        result = kerasutil.evaluate(keras_model, client.weights or [], x, y)
        log.info("done after round %d; final model on the local shard: %s", client.round,
                 ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        return result
