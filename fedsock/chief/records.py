"""The run's record on disk, as callbacks: metrics.jsonl and checkpoints (and resuming from them).

A round's metrics line is written, then its checkpoint (which carries the
line), then the line is fsynced in the background, off the round's critical
path; the next checkpoint waits for that fsync. A resumed chief keeps the
lines of completed rounds and restores a last line that never reached the
disk from the checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import checkpoint, statefiles
from fedsock.aggregation import flatten_state, unflatten_state
from fedsock.chief.callbacks import ChiefCallback, RoundRecord
from fedsock.chief.outcomes import Snapshot
from fedsock.chief.outputs import describe_budget
from fedsock.chief.rounds import RoundController
from fedsock.errors import ConfigError, RemoteProtocolError, StateWriteError
from fedsock.protocol import TensorSpec, check_signature, is_valid_name

log = logging.getLogger("fedsock.chief")


def write_failed(what: str, exc: OSError, resumes_after: int | None = None) -> StateWriteError:
    """The error that stops a chief that could not write ``what`` (a full disk, say)."""
    where = f"; it resumes after round {resumes_after}" if resumes_after is not None and resumes_after >= 0 else ""
    reason = exc.strerror or str(exc)
    return StateWriteError(f"cannot write {what}: {reason}. The chief stops; free space (or fix the disk) and "
                           f"start it again on the same --state-dir{where}", reason)


class MetricsLog(ChiefCallback):
    """Appends one JSON line per round to ``<state-dir>/metrics.jsonl``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "metrics.jsonl"
        self._pending: concurrent.futures.Future[None] | None = None  # the newest line's fsync
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fedsock-fsync")

    def on_round_end(self, record: RoundRecord) -> None:
        """Write the round's line; fsync it now unless a checkpoint carrying it follows (``fsync_later``)."""
        line = record.row()
        if record.privacy:
            log.info("round %d: privacy budget spent: %s", record.round, describe_budget(line))
        try:  # 0600, and never through a symlink planted as metrics.jsonl
            fd = statefiles.open_append(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot append to {self.path} ({exc.strerror or exc}); the chief follows no "
                              "links in its state dir") from None
        try:
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                if record.snapshot is None:
                    os.fsync(f.fileno())
        except OSError as exc:  # its line may be partly written: a resumed chief cuts it off (truncate)
            raise write_failed(f"the metrics line of round {record.round} to {self.path}", exc,
                               record.round - 1) from None

    def fsync_later(self) -> None:
        """Fsync the file in the background (after the checkpoint that carries its last line)."""
        self._pending = self._syncer.submit(self._fsync)

    def _fsync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Wait until the file is on disk.

        Raises:
            StateWriteError: its fsync failed.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except OSError as exc:
                raise write_failed(f"{self.path} (fsync)", exc) from None

    def on_run_end(self, rounds: int) -> None:
        self.sync()

    def truncate(self, lines: int, last_row: Any = None) -> None:
        """Keep the first ``lines`` lines: rounds recorded after the checkpoint are redone.

        The checkpoint's own round's line may be missing (it is fsynced only
        after the checkpoint): it comes back from ``last_row``.
        """
        kept = statefiles.read_text(self.path).splitlines(keepends=True)[:lines] if self.path.exists() else []
        if len(kept) == lines - 1 and isinstance(last_row, str):
            log.warning("metrics.jsonl lacked the line of round %d; restored it from the checkpoint", lines)
            kept.append(last_row + "\n")
        try:
            checkpoint.atomic_write(self.path, "".join(kept).encode())
        except OSError as exc:
            raise write_failed(f"{self.path} (cut back to {lines} lines to resume)", exc, lines) from None


class Checkpoints(ChiefCallback):
    """Checkpoints the global model after each round (keeping the newest ``keep``), and resumes from them.

    Args:
        state_dir: the chief's state dir (checkpoints in ``checkpoints/``).
        keep: checkpoints kept.
        metrics: the run's metrics log, whose lines the checkpoints account for.
    """

    def __init__(self, state_dir: Path, keep: int, metrics: MetricsLog) -> None:
        self.directory = state_dir / "checkpoints"
        self.keep = keep
        self.metrics = metrics

    def on_round_end(self, record: RoundRecord) -> None:
        if record.snapshot is not None:
            self.checkpoint(record.snapshot, record.members, record.row())

    def checkpoint(self, snap: Snapshot, members: Sequence[str] = (), row: dict[str, Any] | None = None) -> None:
        """Atomically checkpoint the global model after a round.

        It records the round, the aggregation state, the sampling RNG and how
        many metrics lines belong to completed rounds.
        """
        meta: dict[str, Any] = {"metrics_lines": snap.round, "rng": json.dumps(snap.rng_state),
                                "members": list(members)}
        if row is not None:  # its metrics line, fsynced only after this checkpoint
            meta["last_row"] = json.dumps(row)
        self.metrics.sync()  # the previous round's line is on disk before this checkpoint appears
        ckpt = checkpoint.Checkpoint(
            round=snap.round, specs=snap.specs, weights=snap.weights,
            state=flatten_state(snap.transform_state), meta=meta,
        )
        # the checkpoint that this one pushes out is overwritten, not a new file written (much faster)
        spare = checkpoint.prunable(self.directory, self.keep) if self.directory.is_dir() else None
        path = checkpoint.round_path(self.directory, snap.round)
        try:
            checkpoint.save(path, ckpt, recycle=spare)
            checkpoint.prune(self.directory, self.keep)
        except OSError as exc:  # the temp file is gone (atomic_write); the previous checkpoint is intact
            raise write_failed(f"the checkpoint of round {snap.round} to {path}", exc, snap.round - 1) from None
        if row is not None:
            self.metrics.fsync_later()

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
        path = self.metrics.path
        files = sorted(self.directory.glob("round-*.fsck")) if self.directory.is_dir() else []
        if not files:
            if path.exists() and path.stat().st_size:
                log.warning("no checkpoint in %s: starting fresh; the old metrics.jsonl is "
                            "kept as metrics.jsonl.old", self.directory)
                path.replace(path.with_suffix(".jsonl.old"))
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
            r = read_resume(ckpt, ctrl.transform.init(ckpt.weights))
        except ConfigError as exc:
            raise ConfigError(f"{files[-1]} {exc}; {hint}") from None
        ctrl.restore(ckpt.round, ckpt.specs, ckpt.weights, r.state, r.rng)
        self.metrics.truncate(r.lines, r.last_row)
        log.info("resuming after round %d of %d from %s", ckpt.round, ctrl.rounds, files[-1])
        return r.members


@dataclass(frozen=True)
class Resume:
    """What a checkpoint's state and ``meta`` restore (``read_resume``)."""

    state: Any  # the aggregation state, shaped like the transform's
    rng: dict[str, Any] | None  # the sampling generator's state
    lines: int  # metrics.jsonl lines of completed rounds
    members: list[str]  # the workers taking part
    last_row: str | None  # the checkpoint's own metrics line (JSON)


def read_resume(ckpt: checkpoint.Checkpoint, template: Any) -> Resume:
    """Check and read what resuming from ``ckpt`` restores besides the model (no I/O).

    Args:
        template: the configured transform's fresh state, which the checkpointed one must fit.

    Raises:
        ConfigError: the state does not fit ``template``, or ``meta`` is malformed (the
            message says which part; the caller names the file).
    """
    meta = ckpt.meta
    try:
        state = unflatten_state(template, ckpt.state)
    except ValueError as exc:  # its documented error: the arrays do not fit the template
        raise ConfigError(f"does not fit this chief's aggregation ({exc})") from None
    rng = meta.get("rng")
    if rng is not None:
        try:
            rng = json.loads(rng) if isinstance(rng, str) else None
            np.random.default_rng().bit_generator.state = rng  # refuses what is no PCG64 state
        except (ValueError, TypeError, KeyError, OverflowError) as exc:  # json's and numpy's own errors
            raise ConfigError(f"has a bad sampling state ({type(exc).__name__}: {exc})") from None
    lines = meta.get("metrics_lines", ckpt.round)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= ckpt.round:
        raise ConfigError(f"has a bad metrics_lines {lines!r} (round {ckpt.round})")
    members, last_row = meta.get("members", []), meta.get("last_row")
    if not isinstance(members, list) or not all(isinstance(n, str) and is_valid_name(n) for n in members):
        raise ConfigError("has a bad list of members")
    if last_row is not None and not isinstance(last_row, str):
        raise ConfigError("has a bad last_row")
    return Resume(state, rng, lines, members, last_row)
