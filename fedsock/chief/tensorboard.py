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
SKIP = {"round", "time", "participants", "fraction", "dp_clip", "dp_noise"}
#: Names under which a differential-privacy budget is reported.
PRIVACY = {"epsilon", "delta", "dp_epsilon", "dp_delta", "privacy_epsilon"}


def tag_for(key: str) -> str:
    """The tag of a metrics.jsonl field: run counters by name, privacy budget, else a holdout metric."""
    if key in TAGS:
        return TAGS[key]
    if key in PRIVACY:
        return f"privacy/{key}"
    return f"holdout/{key}"


class TensorBoardWriter:
    """Writes one step per round: holdout metrics, round time, bytes, participants, privacy budget.

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
        # what tensorboard.summary.scalar attaches: marks the value as a scalar for TensorBoard
        self._scalar = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars", content=b""))

    def write(self, row: Mapping[str, Any]) -> None:
        """Record one metrics.jsonl row at step ``row["round"]`` and flush."""
        step = int(row["round"])
        with self._writer.as_default(step=step):
            for key, value in row.items():
                if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                self._tf.summary.write(tag_for(key), self._tf.constant(float(value), self._tf.float32),
                                       metadata=self._scalar)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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
