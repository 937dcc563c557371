"""What the round controller answers: verdicts on updates, closed rounds, checkpoint snapshots (values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsock.protocol import TensorSpec


@dataclass(frozen=True)
class Accepted:
    """The update was folded into the current round."""


@dataclass(frozen=True)
class Stale:
    """The update is for a round that is already closed; it was dropped."""

    round: int
    current: int


@dataclass(frozen=True)
class Duplicate:
    """The same worker re-sent its update after reconnecting; the first copy counts."""


@dataclass(frozen=True)
class NotSelected:
    """The worker is not sampled for this round (``--fraction``); it waits."""


Verdict = Accepted | Stale | Duplicate | NotSelected


@dataclass(frozen=True)
class Snapshot:
    """The global state after a round, for a checkpoint."""

    round: int
    specs: tuple[TensorSpec, ...]
    weights: list[np.ndarray]
    transform_state: Any
    rng_state: dict[str, Any]


@dataclass(frozen=True)
class RoundResult:
    """What closing a round produced."""

    round: int
    weights: list[np.ndarray]
    workers: tuple[int, ...]
    examples: int
    opened_at: float
    selected: tuple[int, ...] | None
    #: What the closer adds to the round's record (e.g. secure aggregation's attempt).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Federated metrics (``fed_*``) the closer got without any worker's own values (secure aggregation).
    federated: dict[str, float] = field(default_factory=dict)
