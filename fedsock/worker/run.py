"""``worker.py``: join a chief and train a Keras model on a local shard."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsock.data import load_shard, shard_files
from fedsock.errors import ConfigError
from fedsock.kerasversion import check_keras_version
from fedsock.settings import setting
from fedsock.worker.client import Client, token_from
from fedsock.worker.config import WorkerConfig, check_chief_resolves
from fedsock.worker.evaluation import split_validation, validation_metrics
from fedsock.worker.modelguard import choose_model

log = logging.getLogger("fedsock.worker")


@dataclass
class TrainingOptions:
    """What ``worker.py`` adds to ``WorkerConfig``: the local data and model, and how training looks."""

    data: Path = setting(help="shard: a folder of .npz files (arrays x, y) or one .npz file")
    model: str | None = setting(None, help="train your own model (.keras or module:function), never the chief's "
                               "config; its tensors must match the chief's")
    seed: int | None = setting(None, help="seed for local shuffling and dropout, to make training repeatable")
    val_split: float = setting(0.1, metavar="F", help="share of the shard held out as this worker's validation "
                               "split (seeded by --seed, else 0), never trained on: every global model is "
                               "evaluated on it before training and the chief gets the metrics (0: none)")
    val_data: Path | None = setting(None, metavar="DIR", help="validation shard (like --data) to evaluate every "
                                    "global model on instead of a split of --data")
    personalize_epochs: int = setting(0, metavar="E", help="after the last round, fine-tune the final model for E "
                                      "epochs on the local training data and report its validation metrics "
                                      "before and after (0: off); the chief's model is not changed")
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
        The final model's metrics on the local training data (Keras names) and on the
        validation split (``val_*``).

    Raises:
        ConfigError, ConnectError, AuthenticationError, PeerError: with a
            message to act on.
    """
    check_keras_version()
    data, model, seed, progress = training.data, training.model, training.seed, training.progress
    check_chief_resolves(config.chief)
    if config.ca is None:
        token_from(config.token)  # a missing or malformed token fails now, not after TensorFlow's start-up
    if training.personalize_epochs < 0:
        raise ConfigError(f"--personalize-epochs must be 0 (off) or more, got {training.personalize_epochs}")
    x, y = load_shard(data)
    if training.val_data is not None:
        x_val, y_val = load_shard(training.val_data)
    else:
        x, y, x_val, y_val = split_validation(x, y, training.val_split, seed or 0)
    log.info("loaded %d examples from %s; %d validation examples%s", len(y), data, len(y_val),
             f" from {training.val_data}" if training.val_data is not None else " held out (--val-split)")
    from fedsock import kerasutil

    # TensorFlow's import takes seconds: done before joining, so that the first round does not wait for it
    started = time.monotonic()
    keras = kerasutil.import_keras()
    log.info("Keras %s ready in %.1f s", keras.__version__, time.monotonic() - started)
    # with a validation split it shares, the chief may ask this worker to evaluate (held rounds, the final model)
    with Client.from_config(config, evaluations=len(y_val) > 0 and config.share_metrics == "all") as client:
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
            if training.val_data is not None:
                kerasutil.check_data_fits(keras_model, x_val, y_val, source=str(training.val_data))
        except ConfigError as exc:
            client.close(reason=f"worker {client.name} cannot train: {exc}")
            raise
        from fedsock.worker.keras import FederatedCallback

        plan = client.plan
        bar = progress == "live" or (progress == "auto" and sys.stdout.isatty())
        callback = FederatedCallback(client, plan.sync_every, plan.batch_size, num_examples=len(y), progress=bar,
                                     validation_data=(x_val, y_val) if len(y_val) else None)
        keras_model.fit(x, y, batch_size=plan.batch_size, epochs=1_000_000, shuffle=True,
                        callbacks=[callback], verbose=verbose)
        if not client.finished:
            raise ConfigError("training stopped before the chief finished the run")
        result = kerasutil.evaluate(keras_model, client.weights or [], x, y)
        log.info("done after round %d; final model on the local training data: %s", client.round,
                 ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        if callback.final_metrics:
            log.info("final model on the local validation split: %s", _described(callback.final_metrics))
        personal = personalize(keras_model, client.weights or [], (x, y), (x_val, y_val),
                               training.personalize_epochs, plan.batch_size)
        final = {**callback.final_metrics, **personal}
        if final:
            log.info("final evaluation: %s", final_row(final))
        if client.report(final):
            log.info("final evaluation sent to the chief")
        return {**result, **final}


def final_row(metrics: dict[str, float]) -> str:
    """This worker's row of the chief's final-evaluation table: examples, final and personalized accuracy
    (or loss, without accuracy)."""
    metric = "accuracy" if "val_accuracy" in metrics else "loss"
    cells = [f"{int(metrics.get('val_examples', 0))} validation examples",
             f"final {metric} {metrics.get('val_' + metric, float('nan')):.4f}"]
    if "personalized_val_" + metric in metrics:
        cells.append(f"personalized {metric} {metrics['personalized_val_' + metric]:.4f}")
    return ", ".join(cells)


def personalize(model: Any, weights: list[Any], train: tuple[Any, Any], val: tuple[Any, Any], epochs: int,
                batch_size: int) -> dict[str, float]:
    """Fine-tune the final model locally for ``epochs`` and evaluate it on the validation split.

    Returns:
        ``personalized_val_*`` (empty when ``epochs`` is 0 or there is no validation data).
    """
    if not epochs or not len(val[1]):
        return {}
    model.set_weights(weights)
    model.fit(*train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    res = model.evaluate(*val, batch_size=256, verbose=0, return_dict=True)
    out = {f"personalized_{k}": float(v) for k, v in validation_metrics(res, len(val[1])).items()}
    log.info("after %d epochs of local fine-tuning (personalization), on the local validation split: %s",
             epochs, _described(out))
    return out


def _described(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.endswith("examples"))
