"""The chief's model outputs: the ``--model`` it hands out, holdout evaluation, the final model,
and what the log says about differential privacy.

Keras is imported only when the run has ``--model`` (for the config sent to
workers, holdout evaluation and saving ``final.keras``). What is recorded
per round (metrics.jsonl, checkpoints, TensorBoard) are callbacks
(``records.py``, ``tensorboard.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsock import checkpoint
from fedsock.aggregation.accounting import epsilon
from fedsock.chief.config import ChiefConfig
from fedsock.data import load_shard
from fedsock.protocol import TensorSpec

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
    """The model side of one chief run: what Welcome carries, evaluation, the final model."""

    def __init__(self, config: ChiefConfig) -> None:
        self.config = config
        self.model_info: ModelInfo | None = None
        self._model: Any = None
        self._eval: tuple[np.ndarray, np.ndarray] | None = None

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

    def save_final(self, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
        """``final_weights.npz`` always; ``final.keras`` too when the architecture is known."""
        checkpoint.weights_to_npz(self.config.state_dir / "final_weights.npz", specs, weights)
        if self._model is not None:
            from fedsock import kerasutil

            self._model.set_weights(list(weights))
            kerasutil.save_model(self._model, self.config.state_dir / "final.keras")  # loads without warnings
