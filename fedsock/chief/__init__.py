"""The chief: listener, handshake, registry, rounds, closers, publishing and callbacks (docs/architecture.md)."""

from fedsock.chief.callbacks import ChiefCallback, RoundRecord, RunInfo, WorkerJoined, WorkerLeft
from fedsock.chief.config import ChiefConfig
from fedsock.chief.registry import WorkerRegistry
from fedsock.chief.rounds import RoundController
from fedsock.chief.server import Chief, RunSummary

__all__ = ["Chief", "ChiefCallback", "ChiefConfig", "RoundController", "RoundRecord", "RunInfo", "RunSummary",
           "WorkerJoined", "WorkerLeft", "WorkerRegistry"]
