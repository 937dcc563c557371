"""The chief: asyncio TLS server, round loop and outputs."""

from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import RoundController
from fedsock.chief.server import Chief, RunSummary

__all__ = ["Chief", "ChiefConfig", "RoundController", "RunSummary"]
