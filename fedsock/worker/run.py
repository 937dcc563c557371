"""``worker.py``: join a chief and train a Keras model on a local shard."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fedsock import limits
from fedsock.data import load_shard
from fedsock.errors import ConfigError
from fedsock.worker.client import Client

log = logging.getLogger("fedsock.worker")


def run_worker(chief: str, data: Path, token: str | None = None, name: str | None = None,
               model: str | None = None, connect_timeout: float = 60.0, verbose: int = 0,
               save_updates: Path | None = None, reconnect_timeout: float = 300.0,
               progress: str = "auto",
               idle_timeout: float = limits.IDLE_TIMEOUT_S,
               heartbeat_interval: float = limits.HEARTBEAT_INTERVAL_S,
               ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
               seed: int | None = None) -> dict[str, float]:
    """Train with the chief until it says ``Done``.

    Args:
        chief: ``host:port`` of the chief.
        data: shard directory (``.npz`` files with ``x`` and ``y``).
        token: join token (default ``$FEDSOCK_TOKEN``).
        name: worker name shown in the chief's logs.
        model: bring-your-own model (``.keras`` or ``module:function``), used
            only when the chief has no ``--model``.
        connect_timeout: seconds to keep retrying an unreachable chief.
        verbose: Keras ``fit`` verbosity.
        progress: ``live`` shows a Keras progress bar per round, ``plain`` a
            log line per sync, ``auto`` the bar when stdout is a terminal.
        save_updates: keep a copy of every update sent in this directory.
        reconnect_timeout: seconds to keep reconnecting after a lost connection.
        idle_timeout: seconds of silence after which the chief counts as gone.
        heartbeat_interval: seconds between heartbeats while training.
        ca, cert, key: mutual TLS files (instead of a token).
        seed: seed for Keras (shuffling, dropout) to make local training repeatable.

    Returns:
        The final model's metrics on the local shard.

    Raises:
        ConfigError, ConnectError, AuthenticationError, PeerError: with a
            message to act on.
    """
    x, y = load_shard(data)
    log.info("loaded %d examples from %s", len(y), data)
    from fedsock import kerasutil

    with Client(chief, token=token, name=name, connect_timeout=connect_timeout,
                save_updates=save_updates, reconnect_timeout=reconnect_timeout,
                idle_timeout=idle_timeout, heartbeat_interval=heartbeat_interval,
                ca=ca, cert=cert, key=key) as client:
        log.info("joined the chief at %s:%s as worker %d (round %d; sync every %d steps, batch %d)",
                 *client.address, client.worker_id, client.round, client.plan.sync_every,
                 client.plan.batch_size)
        if seed is not None:
            kerasutil.import_keras().utils.set_random_seed(seed)
        try:
            if client.model_config is not None:
                keras_model = kerasutil.rebuild(client.model_config, client.compile_config)
            elif model is not None:
                keras_model = kerasutil.load_model(model)
            else:
                raise ConfigError(
                    "the chief provides no model (it runs without --model): pass --model "
                    "module:function or a .keras file"
                )
            kerasutil.check_data_fits(keras_model, x, y)
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
