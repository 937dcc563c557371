"""TensorBoard event files for a chief run (``<state-dir>/tensorboard/``).

TensorFlow is imported when the writer is created, never before: a chief
without ``--model`` that runs with ``--no-tensorboard`` (its default) starts
without TensorFlow. Scalars are written with TensorFlow's own
``tf.summary.write`` and the metadata of TensorBoard's scalar plugin, so the
``tensorboard`` package is needed only to look at them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsock import limits
from fedsock.chief.callbacks import ChiefCallback, RoundRecord, RunInfo

log = logging.getLogger("fedsock.chief")

#: metrics.jsonl field -> TensorBoard tag.
TAGS = {
    "seconds": "round/seconds",
    "workers": "round/participants",
    "examples": "round/examples",
    "sampled": "round/sampled",
    "bytes_in": "bytes/in",
    "bytes_out": "bytes/out",
}
#: Fields that are not scalars over rounds.
SKIP = {"round", "time", "participants", "fraction", "dp_clip", "dp_noise", "fed_model_round"}
#: Fields of federated evaluation written under tags of their own (``fed_val_x`` -> ``validation/x``).
FED, VAL = "fed_val_", "val_"
#: Names under which a differential-privacy budget is reported.
PRIVACY = {"epsilon", "delta", "dp_epsilon", "dp_delta", "privacy_epsilon"}


def tag_for(key: str) -> str:
    """The tag of a metrics.jsonl field: run counters by name, privacy budget, else a holdout metric."""
    if key in TAGS:
        return TAGS[key]
    if key in PRIVACY:
        return f"privacy/{key}"
    if key.startswith(FED):  # the same tag as each worker's run: TensorBoard overlays them
        return f"validation/{key.removeprefix(FED)}"
    if key.startswith("fed_"):
        return f"federated/{key.removeprefix('fed_')}"
    if key.startswith(VAL) and key.rsplit("_", 1)[-1] in ("worst", "median", "best", "spread"):
        return f"fairness/{key.removeprefix(VAL)}"
    return f"holdout/{key}"


class TensorBoardWriter:
    """Writes one step per round: holdout metrics, round time, bytes, participants, privacy budget,
    the federated validation metrics; each worker's validation metrics in a run of its own
    (``workers/<name>``, the first ``TENSORBOARD_WORKER_RUNS`` workers), under the same tags.

    Args:
        directory: where the event files go (created if needed).

    Raises:
        ConfigError: TensorFlow is not installed.
    """

    def __init__(self, directory: Path) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:  # pragma: no cover - tensorflow is a dependency
            from fedsock.errors import ConfigError

            raise ConfigError(f"--tensorboard needs TensorFlow ({exc}); use --no-tensorboard") from None
        self._tf = tf
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._writer = tf.summary.create_file_writer(str(directory))
        self._workers: dict[str, Any] = {}
        # what tensorboard.summary.scalar attaches: marks the value as a scalar for TensorBoard
        self._scalar = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars", content=b""))

    def write(self, row: Mapping[str, Any]) -> None:
        """Record one metrics.jsonl row at step ``row["round"]`` and flush."""
        step = int(row["round"])
        evaluated = int(row.get("fed_model_round", step))  # the model the workers' validation describes
        for key, value in row.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            with self._writer.as_default(step=evaluated if key.startswith(FED) else step):
                self._scalar_at(tag_for(key), value)
        self._writer.flush()
        for name, metrics in (row.get("per_worker") or {}).items():
            writer = self._worker(str(name))
            if writer is None:
                continue
            with writer.as_default(step=evaluated):
                for key, value in metrics.items():
                    if key.startswith(VAL) and isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._scalar_at(f"validation/{key.removeprefix(VAL)}", value)
            writer.flush()

    def _scalar_at(self, tag: str, value: float) -> None:
        self._tf.summary.write(tag, self._tf.constant(float(value), self._tf.float32), metadata=self._scalar)

    def _worker(self, name: str) -> Any:
        """The run of worker ``name`` (None past ``TENSORBOARD_WORKER_RUNS``)."""
        if name not in self._workers:
            if len(self._workers) >= limits.TENSORBOARD_WORKER_RUNS:
                return None
            run = self.directory / "workers" / ("_" + name if name.startswith(".") else name)  # never ".."
            self._workers[name] = self._tf.summary.create_file_writer(str(run))
        return self._workers[name]

    def close(self) -> None:
        self._writer.close()
        for writer in self._workers.values():
            writer.close()


class TensorBoard(ChiefCallback):
    """The TensorBoard callback: opens the writer when the run begins (importing TensorFlow then),
    writes each round's metrics.jsonl row. A failing write turns it off for the rest of the run
    (a monitoring side channel must not end the run)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writer: TensorBoardWriter | None = None

    def on_run_begin(self, run: RunInfo) -> None:
        if self.writer is None:
            self.writer = TensorBoardWriter(self.directory)
            log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.directory, self.directory)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(record.row())
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("TensorBoard events could not be written (%s); continuing without them", exc)
            self.writer = None

    def on_run_end(self, rounds: int) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
