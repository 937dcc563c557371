"""What the chief writes: metrics.jsonl, the console table, checkpoints, the final model.

Keras is imported only when the run has ``--model`` (for the config sent to
workers, holdout evaluation and saving ``final.keras``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsock import checkpoint
from fedsock.aggregation import flatten_state
from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import RoundController, RoundResult
from fedsock.data import load_shard
from fedsock.protocol import TensorSpec

log = logging.getLogger("fedsock.chief")


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
        self._header_printed = False

    def prepare_model(self) -> ModelInfo | None:
        """Load ``--model`` and ``--eval-data`` (checking they fit each other)."""
        if self.config.model is None:
            return None
        from fedsock import kerasutil

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
                     metrics: dict[str, float]) -> None:
        """Append to metrics.jsonl and print the round's table row."""
        line = {
            "round": r.round, "workers": len(r.workers), "examples": r.examples,
            "seconds": round(seconds, 4), "bytes_in": bytes_in, "bytes_out": bytes_out,
            "time": time.time(), **metrics,
        }
        with open(self.config.state_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        self._print_row(line)

    def _print_row(self, m: dict[str, Any]) -> None:
        if not self._header_printed:
            self._header_printed = True
            print(f"{'round':>5} {'workers':>7} {'examples':>8} {'accuracy':>8} {'loss':>8} "
                  f"{'seconds':>7} {'MB in':>7} {'MB out':>7}", flush=True)
        acc = f"{m['accuracy']:.4f}" if "accuracy" in m else "-"
        loss = f"{m['loss']:.4f}" if "loss" in m else "-"
        print(f"{m['round']:>5} {m['workers']:>7} {m['examples']:>8} {acc:>8} {loss:>8} "
              f"{m['seconds']:>7.2f} {m['bytes_in'] / 1e6:>7.2f} {m['bytes_out'] / 1e6:>7.2f}",
              flush=True)
        sys.stdout.flush()

    def checkpoint(self, ctrl: RoundController, metrics_line: int) -> None:
        """Atomically checkpoint the global model after a round (keeps the newest few)."""
        assert ctrl.specs is not None and ctrl.weights is not None
        directory = self.config.state_dir / "checkpoints"
        ckpt = checkpoint.Checkpoint(
            round=ctrl.round, specs=ctrl.specs, weights=ctrl.weights,
            state=flatten_state(ctrl.transform_state), meta={"metrics_lines": metrics_line},
        )
        checkpoint.save(checkpoint.round_path(directory, ctrl.round), ckpt)
        checkpoint.prune(directory, self.config.keep_checkpoints)

    def save_final(self, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
        """``final_weights.npz`` always; ``final.keras`` too when the architecture is known."""
        checkpoint.weights_to_npz(self.config.state_dir / "final_weights.npz", specs, weights)
        if self._model is not None:
            self._model.set_weights(list(weights))
            self._model.save(self.config.state_dir / "final.keras")
