"""A relay: a chief whose rounds end upstream (hierarchical aggregation).

A relay collects its own workers' updates like any chief, then takes part in
its upstream chief's round as **one worker**: it sends the weighted mean of
its workers' weights with the sum of their example counts as its
``num_examples``. Weighted FedAvg composes exactly::

    sum_j N_j * (sum_{k in j} n_k w_k / N_j) / sum_j N_j  =  sum_k n_k w_k / sum_k n_k

so a tree of relays gives the flat federation's global model. The model the
upstream returns becomes the relay's next global model, and the upstream's
``Done`` ends the relay's run. The upstream link is a blocking
``fedsock.Client`` driven from a thread (``asyncio.to_thread``), so the
relay's event loop keeps serving its workers meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fedsock.chief.config import ChiefConfig
from fedsock.chief.outputs import ModelInfo, Outputs
from fedsock.chief.rounds import RoundController
from fedsock.protocol import TensorSpec
from fedsock.worker.client import Client

log = logging.getLogger("fedsock.relay")


class Relay:
    """The upstream side of a relay chief: what the chief calls instead of aggregating itself.

    Create with ``await Relay.connect(...)``, then ``start`` once; the chief
    calls ``propose_initial`` for its workers' round-0 proposals, and its
    rounds end through ``fedsock.chief.closers.RelayCloser``.
    """

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.address = address
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, address: str, token: str | None, name: str | None = None,
                      connect_timeout: float = 60.0, reconnect_timeout: float = 300.0) -> Relay:
        """Join the upstream chief as a worker (in a thread: the handshake blocks).

        Raises:
            ConfigError, ConnectError, AuthenticationError: as ``fedsock.Client``.
        """
        name = name or f"relay-{socket.gethostname()}-{os.getpid()}"
        client = await asyncio.to_thread(Client, address, token, name, connect_timeout=connect_timeout,
                                         reconnect_timeout=reconnect_timeout)
        log.info("relay: joined the upstream chief %s as %r (worker %d, round %d of %d)",
                 address, name, client.worker_id, client.round, client.plan.rounds)
        return cls(client, address)

    def start(self, config: ChiefConfig, ctrl: RoundController, outputs: Outputs) -> ChiefConfig:
        """Take the upstream's plan and, if it has one, its model.

        Returns:
            ``config`` with the upstream's rounds, sync_every and batch_size,
            which this relay hands on to its workers.
        """
        plan = self.client.plan
        ctrl.rounds = plan.rounds
        if self.client.weights is not None:
            self._adopt(ctrl, outputs, self.client.welcome.tensors, self.client.round, self.client.weights)
        return replace(config, rounds=plan.rounds, sync_every=plan.sync_every, batch_size=plan.batch_size)

    def _adopt(self, ctrl: RoundController, outputs: Outputs, specs: tuple[TensorSpec, ...], round_: int,
               weights: Sequence[np.ndarray]) -> None:
        ctrl.restore(round_, specs, weights, ctrl.transform.init(list(weights)), None)
        if self.client.model_config is not None:  # the relay's workers get the architecture too
            outputs.model_info = ModelInfo(self.client.model_config, self.client.compile_config, specs,
                                           list(weights))

    async def propose_initial(self, ctrl: RoundController, outputs: Outputs, specs: tuple[TensorSpec, ...],
                              weights: Sequence[np.ndarray]) -> None:
        """No model yet: a worker's round-0 proposal goes upstream; the upstream's answer is the model.

        Raises:
            RemoteProtocolError: the proposal holds NaN/Inf (checked before it leaves).
        """
        async with self._lock:  # one proposal upstream at a time; later ones find the model
            if ctrl.has_model:
                return
            ctrl.check(specs, weights)
            model = await asyncio.to_thread(self.client.join, list(weights))
            log.info("relay: the upstream chief holds the initial model (round %d)", self.client.round)
            self._adopt(ctrl, outputs, specs, self.client.round, model)

    def close(self) -> None:
        self.client.close()
