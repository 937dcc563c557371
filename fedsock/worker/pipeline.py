"""What happens to an update between the caller's weights and the wire, as composable steps.

An ``Outgoing`` is an ``Update`` and the tensors that follow it. Each step
takes one and returns the next; ``update_steps`` chooses them from the chief's
plan and this worker's options, in the order that matters:

1. ``clip_step``: differential privacy clips the delta from the global model
   (``plan.dp_clip``), before anything else sees the raw update;
2. ``audit_step``: ``--save-updates`` keeps a copy of what leaves the machine
   (the clipped weights, before encoding);
3. ``compress_step``: with compression negotiated, the delta from the global
   model, encoded (top-k keeps its error-feedback residual in the encoder).

Secure aggregation masks the clipped weights itself (``WorkerEngine``), so
it takes steps 1 and 2 only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsock.errors import ConfigError
from fedsock.protocol import Plan, Update, specs_of
from fedsock.protocol.compression import Compression
from fedsock.worker.compress import UpdateEncoder
from fedsock.worker.privacy import clip_for_plan


@dataclass(frozen=True)
class Outgoing:
    """An update and the tensors that follow it on the wire (its specs describe them)."""

    update: Update
    tensors: Sequence[np.ndarray]


Step = Callable[[Outgoing], Outgoing]


def clip_step(global_weights: Sequence[np.ndarray], plan: Plan) -> Step:
    """Clip the update's delta from ``global_weights`` to ``plan.dp_clip`` (a no-op without DP)."""

    def step(out: Outgoing) -> Outgoing:
        clipped = clip_for_plan(out.tensors, global_weights, plan)
        if clipped is out.tensors:
            return out
        names = [s.name for s in out.update.tensors]
        specs = specs_of([np.asarray(w) for w in clipped], names)
        return Outgoing(replace(out.update, tensors=specs), clipped)

    return step


def audit_step(directory: Path) -> Step:
    """Keep a copy of the update in ``directory/round-NNNNNN.npz`` (its tensors and ``num_examples``)."""

    def step(out: Outgoing) -> Outgoing:
        arrays: dict[str, Any] = {f"w{i:04d}": np.asarray(w) for i, w in enumerate(out.tensors)}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            np.savez(directory / f"round-{out.update.round:06d}.npz",
                     num_examples=np.int64(out.update.num_examples), **arrays)
        except OSError as exc:
            raise ConfigError(f"cannot keep this update in {directory} (--save-updates): "
                              f"{exc.strerror or exc}") from None
        return out

    return step


def compress_step(encoder: UpdateEncoder, global_weights: Sequence[np.ndarray]) -> Step:
    """Send the delta from ``global_weights``, encoded as ``encoder.comp`` says."""

    def step(out: Outgoing) -> Outgoing:
        specs, payloads = encoder.encode(out.tensors, global_weights, out.update.tensors)
        return Outgoing(replace(out.update, tensors=specs), payloads)

    return step


def run_steps(steps: Sequence[Step], out: Outgoing) -> Outgoing:
    """``out`` through ``steps`` in order."""
    return functools.reduce(lambda acc, step: step(acc), steps, out)


class UpdatePipeline:
    """The steps for this worker's updates; keeps the compression encoder (and its residual)
    from one round to the next.

    Args:
        save_updates: directory for the audit copies (None: none are kept).
    """

    def __init__(self, save_updates: Path | None = None) -> None:
        self.save_updates = save_updates
        self._encoder: UpdateEncoder | None = None

    def steps(self, plan: Plan, compression: Compression, global_weights: Sequence[np.ndarray],
              have_global: bool) -> list[Step]:
        """The steps for the next update.

        Args:
            plan: the chief's plan (DP clip, secure aggregation).
            compression: the encoding the chief's Welcome announced.
            global_weights: the model this update was trained from.
            have_global: the chief sent that model (deltas need it).
        """
        steps = [clip_step(global_weights, plan)]
        if self.save_updates is not None:
            steps.append(audit_step(self.save_updates))
        if not plan.secure_agg and compression.mode != "none" and have_global:
            if self._encoder is None or self._encoder.comp != compression:
                self._encoder = UpdateEncoder(compression)
            steps.append(compress_step(self._encoder, global_weights))
        return steps
