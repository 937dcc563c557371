"""A worker's settings (one dataclass): ``worker.py``, the examples and ``fedsock.Client`` share it.

Each field is one setting; its flag, config-file key and ``FEDSOCK_*``
variable are made from it (see ``fedsock.settings``), and ``Client``'s
constructor takes the same names with the same defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedsock import limits, settings, tls
from fedsock.errors import ConfigError
from fedsock.settings import setting
from fedsock.worker.evaluation import SHARING, MetricSharing
from fedsock.worker.policy import WorkerPolicy


def default_name(host: str | None = None, pid: int | None = None) -> str:
    """``<host>-<pid>``, made to fit the worker-name rule (``tls.check_name``).

    Characters the rule does not allow become ``-`` and a long host name is
    cut, so that the name always has room for the process id.
    """
    host = socket.gethostname() if host is None else host
    suffix = f"-{os.getpid() if pid is None else pid}"
    host = re.sub(r"[^A-Za-z0-9_.@-]", "-", host).lstrip("_.@-") or "worker"
    return host[:limits.MAX_NAME_BYTES - len(suffix)] + suffix


@dataclass
class WorkerConfig:
    """How a worker reaches and talks to its chief.

    Raises:
        ConfigError: a bad name or timeout (on construction).
    """

    chief: str = setting(metavar="HOST:PORT", help="where the chief listens")
    token: str | None = setting(None, secret=True, help="join token printed by the chief")
    name: str | None = setting(None, help="this worker's name on the chief: unique among running workers; "
                               "1-64 letters, digits, '_', '.', '@' or '-'",
                               default_text="the identity of a per-worker token or certificate, else <host>-<pid>")
    connect_timeout: float = setting(60.0, help="seconds to keep retrying an unreachable chief")
    reconnect_timeout: float = setting(300.0, help="after a lost connection, seconds to keep reconnecting "
                                       "(0: never)")
    gone_timeout: float = setting(60.0, help="while reconnecting, give up once nothing has listened at the "
                                  "chief's address for this many seconds, unless the chief said it would be "
                                  "back (0: only --reconnect-timeout)")
    idle_timeout: float = setting(limits.IDLE_TIMEOUT_S,
                                  help="seconds of silence after which the chief counts as gone")
    heartbeat_interval: float = setting(limits.HEARTBEAT_INTERVAL_S,
                                        help="seconds between heartbeats while training")
    ca: Path | None = setting(None, help="mutual TLS: CA file to verify the chief with (instead of the token)")
    cert: Path | None = setting(None, help="mutual TLS: this worker's certificate (its CN is the identity)")
    key: Path | None = setting(None, help="mutual TLS: the private key of --cert")
    save_updates: Path | None = setting(None, help="keep a copy of every update sent (round-N.npz) in this "
                                        "directory, to audit what left this machine")
    max_model_bytes: int = setting(limits.WORKER_MAX_MODEL_BYTES, metavar="BYTES",
                                   help="the most the chief's model may take: its weights in the Welcome, and "
                                   "the model its config describes (counted before anything is built)")
    require_secure_agg: bool = setting(False, help="refuse a chief whose plan has no secure aggregation")
    require_dp_noise: float | None = setting(None, metavar="Z", help="refuse a chief whose plan adds less "
                                             "differential-privacy noise than z = Z (or none)")
    max_epsilon: float | None = setting(None, metavar="E", help="refuse a chief whose plan costs more than "
                                        "epsilon E over the run (from its noise and rounds, at --epsilon-delta, "
                                        "taking part in every round)")
    epsilon_delta: float = setting(1e-5, metavar="DELTA", help="the delta at which --max-epsilon is computed")
    min_batch_size: int = setting(1, metavar="N", help="refuse a chief whose plan trains in smaller batches "
                                  "(batch 1 with frequent syncs lets a chief recover single examples)")
    min_sync_every: int = setting(1, metavar="STEPS", help="refuse a chief whose plan syncs more often than "
                                  "every STEPS local steps")
    share_metrics: str = setting("all", choices=SHARING,
                                 help="what of this worker's validation and training metrics reaches the chief: "
                                 "all (with secure aggregation only inside the masked sum); aggregate-only "
                                 "(only inside a secure-aggregation sum: a chief without --secure-agg gets "
                                 "none); none")

    def __post_init__(self) -> None:
        if self.name is not None:
            tls.check_name(self.name)
        for f in ("ca", "cert", "key", "save_updates"):  # paths may come as text
            if getattr(self, f) is not None:
                setattr(self, f, Path(getattr(self, f)))
        for flag, value in (("--connect-timeout", self.connect_timeout), ("--idle-timeout", self.idle_timeout)):
            if not value > 0:
                raise ConfigError(f"{flag} must be positive, got {value:g}")
        if not self.reconnect_timeout >= 0:
            raise ConfigError(f"--reconnect-timeout must be 0 (never) or positive, got {self.reconnect_timeout:g}")
        if not self.gone_timeout >= 0:
            raise ConfigError(f"--gone-timeout must be 0 (off) or positive, got {self.gone_timeout:g}")
        if not 0 < self.heartbeat_interval < self.idle_timeout or math.isinf(self.heartbeat_interval):
            raise ConfigError("--heartbeat-interval must be positive and shorter than --idle-timeout")
        if not 0 < self.max_model_bytes <= limits.MAX_MODEL_BYTES:
            raise ConfigError(f"--max-model-bytes must be in 1..{limits.MAX_MODEL_BYTES}, got {self.max_model_bytes}")
        self.policy()  # checks the policy settings
        MetricSharing(self.share_metrics)  # checks --share-metrics (a Client's own argument too)

    def policy(self) -> WorkerPolicy:
        """The privacy policy these settings ask for.

        Raises:
            ConfigError: a setting out of range.
        """
        return WorkerPolicy(self.require_secure_agg, self.require_dp_noise, self.max_epsilon, self.epsilon_delta,
                            self.min_batch_size, self.min_sync_every)

    def client_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``fedsock.Client`` these settings stand for."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["address"] = kw.pop("chief")
        return kw


def check_chief_resolves(address: str) -> None:
    """Fail at once when the chief's host name does not exist, rather than after --connect-timeout of retries.

    A temporary resolver failure (``EAI_AGAIN``) is left to the connection's
    retries: only "no such name" is certain.

    Raises:
        ConfigError: a malformed address, or a host name that does not resolve.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad chief address {address!r}: use HOST:PORT, e.g. 1.2.3.4:7777")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        certain = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
        if exc.errno in certain:
            raise ConfigError(f"the chief's host name {host!r} (--chief {address}) does not resolve "
                              f"({exc.strerror}); check its spelling, or give the chief's IP address") from None


def parse_worker_args(parser: argparse.ArgumentParser,
                      argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, WorkerConfig]:
    """Parse a worker script's command line: its own options and every ``WorkerConfig`` setting.

    Adds ``--chief``, ``--token``, ``--name`` (default ``<host>-<pid>``), the
    timeouts, mutual TLS, ``--save-updates`` and ``--config`` to ``parser``;
    they also come from ``FEDSOCK_*`` variables and the config file. Exits
    with the parser's usage message when a setting is missing or bad.

    Returns:
        The parsed namespace (the script's own options included) and the config.
    """
    settings.add_settings(parser, WorkerConfig)
    args = parser.parse_args(argv)
    try:
        settings.apply(args)
        return args, settings.build(WorkerConfig, args)
    except ConfigError as exc:
        parser.error(str(exc))
