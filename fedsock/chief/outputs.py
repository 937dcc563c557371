"""What the chief writes: metrics.jsonl, TensorBoard events, checkpoints, the final model.

Keras is imported only when the run has ``--model`` (for the config sent to
workers, holdout evaluation and saving ``final.keras``).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import checkpoint
from fedsock.aggregation import flatten_state, unflatten_state
from fedsock.aggregation.accounting import epsilon
from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import RoundController, RoundResult, Snapshot
from fedsock.chief.tensorboard import TensorBoardWriter
from fedsock.data import load_shard
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import TensorSpec, check_signature

log = logging.getLogger("fedsock.chief")


def privacy_fields(config: ChiefConfig, rounds: int) -> dict[str, Any]:
    """The DP fields of a metrics.jsonl row after ``rounds`` rounds.

    ``epsilon`` is recomputed from the round count (``accounting.epsilon``),
    so it needs no state and survives a resume; it is None (JSON null) when
    there is no noise: clipping alone gives no guarantee.
    """
    eps = epsilon(rounds, config.dp_noise, config.fraction, config.dp_delta)
    return {"epsilon": eps if math.isfinite(eps) else None, "dp_delta": config.dp_delta,
            "dp_noise": config.dp_noise, "dp_clip": config.dp_clip}


def describe_budget(fields: dict[str, Any]) -> str:
    """``epsilon 3.21 at delta 1e-05 (noise multiplier 1, clip norm 0.5)`` for the log."""
    eps = fields["epsilon"]
    text = f"epsilon {eps:.4g}" if eps is not None else "epsilon infinite (no noise)"
    return (f"{text} at delta {fields['dp_delta']:g} (noise multiplier {fields['dp_noise']:g}, "
            f"clip norm {fields['dp_clip']:g})")


@dataclass(frozen=True)
class ModelInfo:
    """The chief-provided model: what Welcome carries."""

    config: str
    compile: str | None
    specs: tuple[TensorSpec, ...]
    weights: list[np.ndarray]


class Outputs:
    """Files and console output of one chief run."""

    def __init__(self, config: ChiefConfig) -> None:
        self.config = config
        self.model_info: ModelInfo | None = None
        self._model: Any = None
        self._eval: tuple[np.ndarray, np.ndarray] | None = None
        self.tensorboard: TensorBoardWriter | None = None
        # The fsync of the newest metrics line, run after its checkpoint, off the round's critical path.
        self._metrics_sync: concurrent.futures.Future[None] | None = None
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fedsock-fsync")

    def start_tensorboard(self) -> None:
        """Open the TensorBoard writer if this run writes events (imports TensorFlow)."""
        if self.config.writes_tensorboard and self.tensorboard is None:
            self.tensorboard = TensorBoardWriter(self.config.state_dir / "tensorboard")
            log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.tensorboard.directory,
                     self.tensorboard.directory)

    def prepare_model(self) -> ModelInfo | None:
        """Load ``--model`` and ``--eval-data`` (checking they fit each other)."""
        if self.config.model is None:
            return None
        from fedsock import kerasutil

        kerasutil.import_keras().utils.set_random_seed(self.config.seed)  # reproducible initial weights
        model = kerasutil.load_model(self.config.model)
        cfg, comp, specs, weights = kerasutil.describe(model)
        self._model = model
        self.model_info = ModelInfo(cfg, comp, specs, weights)
        if self.config.eval_data is not None:
            x, y = load_shard(self.config.eval_data)
            kerasutil.check_data_fits(model, x, y)
            self._eval = (x, y)
            log.info("holdout: %d examples from %s", len(y), self.config.eval_data)
        return self.model_info

    def evaluate(self, weights: Sequence[np.ndarray]) -> dict[str, float]:
        """Holdout metrics under Keras names, or {} without ``--eval-data``."""
        if self._eval is None:
            return {}
        from fedsock import kerasutil

        return kerasutil.evaluate(self._model, weights, *self._eval)

    def record_round(self, r: RoundResult, seconds: float, bytes_in: int, bytes_out: int,
                     metrics: dict[str, float], names: list[str],
                     extra: dict[str, Any] | None = None, checkpointed: bool = False) -> dict[str, Any]:
        """Append to metrics.jsonl and TensorBoard.

        Args:
            checkpointed: a checkpoint of this round follows and carries the
                row: the line is then fsynced after that checkpoint, in the
                background (``checkpoint`` waits for it before the next one
                appears, and ``resume`` restores the row from the checkpoint
                if the line was lost). Otherwise it is fsynced here.

        Returns:
            The row written.
        """
        line: dict[str, Any] = {
            "round": r.round, "workers": len(r.workers), "examples": r.examples,
            "seconds": round(seconds, 4), "bytes_in": bytes_in, "bytes_out": bytes_out,
            "time": time.time(), "participants": names, **metrics, **(extra or {}),
        }
        if r.selected is not None:
            line["fraction"] = self.config.fraction
            line["sampled"] = len(r.selected)
        if self.config.dp:
            line.update(privacy_fields(self.config, r.round))
            log.info("round %d: privacy budget spent: %s", r.round, describe_budget(line))
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            if not checkpointed:
                os.fsync(f.fileno())
        if self.tensorboard is not None:
            try:
                self.tensorboard.write(line)
            except Exception as exc:  # noqa: BLE001 - a monitoring side channel must not end the run
                log.warning("TensorBoard events could not be written (%s); continuing without them", exc)
                self.tensorboard = None
        return line

    def announce_privacy(self) -> None:
        """Log the DP settings and the budget the whole run will spend (imports dp_accounting: slow)."""
        cfg = self.config
        if not cfg.dp:
            return
        log.info("differential privacy: updates clipped to L2 norm %g, equal weights; after %d rounds: %s",
                 cfg.dp_clip, cfg.rounds, describe_budget(privacy_fields(cfg, cfg.rounds)))
        if cfg.secure_agg and cfg.dp_noise:
            log.info("with secure aggregation the workers add the noise: each std %g x %g / sqrt(n), n being "
                     "the fewest masked updates a round is unmasked with", cfg.dp_noise, cfg.dp_clip)
        if cfg.dp_noise == 0:
            log.warning("--dp-clip without --dp-noise bounds each worker's influence but gives no "
                        "differential privacy guarantee")
        if cfg.fraction < 1:
            log.info("epsilon assumes each worker takes part in a round with probability %g (--fraction, "
                     "accounted as Poisson sampling); that holds while %g x connected workers >= "
                     "--min-workers %d, and only if the sampling seed (--seed) is secret",
                     cfg.fraction, cfg.fraction, cfg.min_workers)

    @property
    def metrics_path(self) -> Path:
        return self.config.state_dir / "metrics.jsonl"

    def resume(self, ctrl: RoundController, model_specs: tuple[TensorSpec, ...] | None) -> list[str] | None:
        """Restore ``ctrl`` from the newest checkpoint, if any.

        Returns:
            The names of the workers taking part when it was written, or None
            if there was no checkpoint.

        Raises:
            ConfigError: the newest checkpoint is corrupt, foreign, or does not
                fit ``--model`` or the configured aggregation: never a silent
                fresh start.
        """
        directory = self.config.state_dir / "checkpoints"
        files = sorted(directory.glob("round-*.fsck")) if directory.is_dir() else []
        if not files:
            if self.metrics_path.exists() and self.metrics_path.stat().st_size:
                log.warning("no checkpoint in %s: starting fresh; the old metrics.jsonl is "
                            "kept as metrics.jsonl.old", directory)
                self.metrics_path.replace(self.metrics_path.with_suffix(".jsonl.old"))
            return None
        hint = f"move {files[-1]} away to resume from an older checkpoint, or use another --state-dir"
        try:
            ckpt = checkpoint.load(files[-1])
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {hint}") from None
        if model_specs is not None:
            try:
                check_signature(model_specs, ckpt.specs)
            except RemoteProtocolError as exc:
                raise ConfigError(f"{files[-1]} was written for another model ({exc}); {hint}") from None
        try:
            state = unflatten_state(ctrl.transform.init(ckpt.weights), ckpt.state)
            rng = json.loads(ckpt.meta["rng"]) if "rng" in ckpt.meta else None
            lines = int(ckpt.meta.get("metrics_lines", ckpt.round))
            members = [str(n) for n in ckpt.meta.get("members", [])]
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{files[-1]} does not fit this chief's aggregation ({exc}); {hint}") from None
        ctrl.restore(ckpt.round, ckpt.specs, ckpt.weights, state, rng)
        self._truncate_metrics(lines, ckpt.meta.get("last_row"))
        log.info("resuming after round %d of %d from %s", ckpt.round, ctrl.rounds, files[-1])
        return members

    def _truncate_metrics(self, lines: int, last_row: Any = None) -> None:
        """Keep the first ``lines`` lines: rounds recorded after the checkpoint are redone.

        The checkpoint's own round's line may be missing (it is fsynced only
        after the checkpoint): it comes back from ``last_row``.
        """
        kept = self.metrics_path.read_text().splitlines(keepends=True)[:lines] if self.metrics_path.exists() else []
        if len(kept) == lines - 1 and isinstance(last_row, str):
            log.warning("metrics.jsonl lacked the line of round %d; restored it from the checkpoint", lines)
            kept.append(last_row + "\n")
        checkpoint.atomic_write(self.metrics_path, "".join(kept).encode())

    def checkpoint(self, snap: Snapshot, members: Sequence[str] = (), row: dict[str, Any] | None = None) -> None:
        """Atomically checkpoint the global model after a round (keeps the newest few).

        It records the round, the aggregation state, the sampling RNG and how
        many metrics lines belong to completed rounds.
        """
        directory = self.config.state_dir / "checkpoints"
        meta: dict[str, Any] = {"metrics_lines": snap.round, "rng": json.dumps(snap.rng_state),
                                "members": list(members)}
        if row is not None:  # its metrics line, fsynced only after this checkpoint (see record_round)
            meta["last_row"] = json.dumps(row)
        self.sync_metrics()  # the previous round's line is on disk before this checkpoint appears
        ckpt = checkpoint.Checkpoint(
            round=snap.round, specs=snap.specs, weights=snap.weights,
            state=flatten_state(snap.transform_state), meta=meta,
        )
        # the checkpoint that this one pushes out is overwritten, not a new file written (much faster)
        spare = checkpoint.prunable(directory, self.config.keep_checkpoints) if directory.is_dir() else None
        checkpoint.save(checkpoint.round_path(directory, snap.round), ckpt, recycle=spare)
        checkpoint.prune(directory, self.config.keep_checkpoints)
        if row is not None:
            self._metrics_sync = self._syncer.submit(self._fsync_metrics)

    def _fsync_metrics(self) -> None:
        fd = os.open(self.metrics_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_metrics(self) -> None:
        """Wait until metrics.jsonl is on disk (raises what its fsync raised)."""
        pending, self._metrics_sync = self._metrics_sync, None
        if pending is not None:
            pending.result()

    def save_final(self, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
        """``final_weights.npz`` always; ``final.keras`` too when the architecture is known."""
        checkpoint.weights_to_npz(self.config.state_dir / "final_weights.npz", specs, weights)
        if self._model is not None:
            self._model.set_weights(list(weights))
            self._model.save(self.config.state_dir / "final.keras")
