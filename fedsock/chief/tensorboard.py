"""TensorBoard event files for a chief run (``<state-dir>/tensorboard/``).

TensorFlow is imported when the writer is created, never before: a chief
without ``--model`` that runs with ``--no-tensorboard`` (its default) starts
without TensorFlow. Scalars are written with TensorFlow's own
``tf.summary.write`` and the metadata of TensorBoard's scalar plugin, so the
``tensorboard`` package is needed only to look at them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
