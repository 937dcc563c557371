"""The chief's settings (one dataclass; the CLI and ``fedsock.Chief`` fill it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fedsock import limits
from fedsock.aggregation.dp import dp_mean
from fedsock.aggregation.strategies import Strategy, parse_strategy
from fedsock.errors import ConfigError

#: Strategies that select or drop individual updates (they keep every update of a round).
ROBUST = ("median", "trimmed", "krum", "multikrum")


@dataclass
class ChiefConfig:
    """Everything a chief run is configured by.

    Attributes:
        host: address to listen on.
        port: TCP port (0 picks a free one; the chief logs it).
        state_dir: key, certificate, token, checkpoints, metrics, final model.
        rounds: rounds of federated averaging before ``Done``.
        min_workers: workers needed to start, and updates needed to close a
            round at its deadline.
        round_timeout: seconds after which a round with ``min_workers``
            updates closes without waiting for the rest.
        model: ``.keras`` file or ``module:function``; None = bring your own
            (the first worker's weights become round 0).
        eval_data: holdout shard directory evaluated after every round
            (needs ``model``).
        sync_every: local steps between syncs (sent to workers in the plan).
        batch_size: local batch size (sent to workers in the plan).
        advertise: host name workers should use, for the printed command line.
        fraction: share of connected workers sampled per round (seeded).
        seed: seed of the sampling.
        idle_timeout: seconds of silence after which a worker is dropped.
        heartbeat_interval: seconds between heartbeats to a quiet worker.
        progress: ``auto`` (a live panel when stdout is a terminal, else one
            line per round), ``live`` or ``plain``.
        tensorboard: write TensorBoard event files under
            ``<state_dir>/tensorboard``; None = only with ``model``.
        upstream: ``host:port`` of an upstream chief: this chief becomes a
            relay that takes part there as one worker.
        upstream_token: join token of the upstream chief.
        upstream_name: this relay's worker name upstream.
        cert, key: the chief's TLS certificate and key (default: a
            self-signed pair in ``state_dir``).
        ca: require client certificates signed by this CA (mutual TLS); the
            worker's identity is then its certificate's common name.
        worker_tokens_only: refuse the shared join token; admit per-worker
            tokens (``fedsock token create``) only.
        strategy: aggregation strategy (``--strategy``; see
            ``fedsock.aggregation.parse_strategy``).
        mu, server_lr, server_momentum, server_beta1, server_beta2, server_tau:
            its hyperparameters; None = the strategy's default.
        compress: update compression workers must use: ``none``, ``fp16``,
            ``int8`` or ``topk:R`` (see protocol.md, "Compression").
        dp_clip: client-level differential privacy (DP-FedAvg): workers clip
            their update deltas to this L2 norm C and are weighted equally;
            0 = off (see docs/privacy.md).
        dp_noise: noise multiplier z: Gaussian noise of std z * C is added to
            the sum of the updates (needs ``dp_clip``).
        dp_delta: the delta at which epsilon is reported, in (0, 1).
        secure_agg: secure aggregation: the chief sees only the sum of the
            workers' updates (protocol.md section 8).
        secagg_threshold: shares needed to unmask, and workers that must
            remain (0: a majority of each neighbourhood, at least 2).
        secagg_neighbours: SecAgg+: each worker masks with this many random
            neighbours instead of all (0: all).
        secagg_timeout: seconds each secure-aggregation phase waits for
            workers before going on without them.
    """

    host: str = "0.0.0.0"
    port: int = 7777
    state_dir: Path = Path("fedsock-chief")
    rounds: int = 10
    min_workers: int = 2
    round_timeout: float = 300.0
    model: str | None = None
    eval_data: Path | None = None
    sync_every: int = 50
    batch_size: int = 32
    advertise: str | None = None
    fraction: float = 1.0
    seed: int = 0
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    worker_tokens_only: bool = False
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT_S
    idle_timeout: float = limits.IDLE_TIMEOUT_S
    heartbeat_interval: float = limits.HEARTBEAT_INTERVAL_S
    keep_checkpoints: int = 5
    done_grace: float = 10.0
    progress: str = "auto"
    tensorboard: bool | None = None
    upstream: str | None = None
    upstream_token: str | None = None
    upstream_name: str | None = None
    strategy: str = "fedavg"
    mu: float | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    server_beta1: float | None = None
    server_beta2: float | None = None
    server_tau: float | None = None
    compress: str = "none"
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    secure_agg: bool = False
    secagg_threshold: int = 0
    secagg_neighbours: int = 0
    secagg_timeout: float = limits.SECAGG_PHASE_TIMEOUT_S

    def __post_init__(self) -> None:
        # paths may come as text (``Chief(state_dir="run1")``)
        self.state_dir = Path(self.state_dir)
        for name in ("eval_data", "cert", "key", "ca"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))

    @property
    def writes_tensorboard(self) -> bool:
        """Whether TensorBoard event files are written (default: with ``--model``)."""
        return self.model is not None if self.tensorboard is None else self.tensorboard

    @property
    def dp(self) -> bool:
        """Whether client-level differential privacy is on (``dp_clip`` > 0)."""
        return self.dp_clip > 0

    def build_strategy(self) -> Strategy:
        """The aggregation strategy these settings select.

        With ``dp_clip`` the strategy's reducer becomes ``dp_mean`` (equal
        weights, noise on the sum); its server transform still applies, to
        the noised mean (post-processing keeps the guarantee).

        Raises:
            ConfigError: unknown strategy or a bad hyperparameter.
        """
        strategy = parse_strategy(self.strategy, mu=self.mu, server_lr=self.server_lr,
                                  momentum=self.server_momentum, beta1=self.server_beta1,
                                  beta2=self.server_beta2, tau=self.server_tau)
        if self.dp:
            strategy = strategy._replace(reducer=dp_mean(self.dp_clip, self.dp_noise))
        return strategy

    def validate(self) -> None:
        """Raises ConfigError for values that cannot work."""
        if self.rounds < 1:
            raise ConfigError("--rounds must be at least 1")
        if self.min_workers < 1:
            raise ConfigError("--min-workers must be at least 1")
        if self.round_timeout <= 0:
            raise ConfigError("--round-timeout must be positive")
        if self.sync_every < 1 or self.batch_size < 1:
            raise ConfigError("--sync-every and --batch-size must be at least 1")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together")
        if not 0 < self.fraction <= 1:
            raise ConfigError("--fraction must be in (0, 1]")
        from fedsock.protocol.compression import parse_compression

        self.compress = str(parse_compression(self.compress))
        if not 0 < self.heartbeat_interval < self.idle_timeout:
            raise ConfigError("--heartbeat-interval must be positive and shorter than --idle-timeout")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port")
        if self.upstream is not None and (self.model is not None or self.eval_data is not None):
            raise ConfigError(
                "--upstream makes this chief a relay, which takes its model from the upstream chief: "
                "drop --model and --eval-data (evaluate on the top chief)"
            )
        if self.eval_data is not None and self.model is None:
            raise ConfigError(
                "--eval-data needs --model: without an architecture the chief cannot evaluate"
            )
        if self.progress not in ("auto", "live", "plain"):
            raise ConfigError(f"--progress {self.progress!r}: use auto, live or plain")
        self._check_privacy()
        strategy = self.build_strategy()
        if self.upstream is not None and self.strategy.split(":")[0] in (
                "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
            raise ConfigError(
                f"--strategy {self.strategy} does not apply to a relay (--upstream): the upstream chief applies "
                "the server optimizer and sends FedProx's mu in its plan; set it there (a relay may combine "
                "its workers with fedavg, median, trimmed, krum or multikrum)"
            )
        self._validate_secure(strategy)
        if self.min_workers < strategy.min_updates:
            raise ConfigError(
                f"--strategy {strategy.name} needs at least {strategy.min_updates} updates per round; "
                f"set --min-workers {strategy.min_updates} or more (it is {self.min_workers})"
            )

    def _check_privacy(self) -> None:
        """Refuse privacy settings that are out of range or combinations that are not sound.

        Raises:
            ConfigError: with the flag to change.
        """
        for flag, value in (("--dp-clip", self.dp_clip), ("--dp-noise", self.dp_noise)):
            if isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} must be a finite number >= 0, got {value}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"--dp-delta must be in (0, 1) (e.g. 1e-5, below 1/number of workers), "
                              f"got {self.dp_delta}")
        if self.dp_noise > 0 and not self.dp:
            raise ConfigError("--dp-noise needs --dp-clip: the noise std is --dp-noise times the clip norm C, "
                              "and without clipping one worker's influence on the sum is unbounded")
        if self.dp:
            kind = self.strategy.strip().lower().partition(":")[0]
            if kind in ROBUST:
                raise ConfigError(
                    f"--dp-clip does not combine with --strategy {self.strategy}: differential privacy bounds "
                    "each worker's influence on a noised sum, while a robust reducer (median, trimmed mean, "
                    "Krum) picks or drops individual updates, so neither the noise calibration nor the "
                    "accounting applies; use fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad")
            mode = self.compress.partition(":")[0]
            if mode in ("int8", "topk"):
                raise ConfigError(
                    f"--dp-clip does not combine with --compress {self.compress}: "
                    + ("top-k's error feedback sends what earlier rounds left out, so one round's update can "
                       "exceed the clip norm" if mode == "topk" else
                       "int8's per-tensor rounding can push a clipped update past the clip norm")
                    + "; use --compress fp16 or none")
            if self.upstream is not None:
                raise ConfigError(
                    "--dp-clip applies to the top chief, not a relay (--upstream): set differential privacy "
                    "there (a relay then clips its combined update like any worker)")
        # Secure aggregation's own refusals (robust reducers, compression, relays) are in
        # _validate_secure; with both on, the workers add the DP noise instead of the chief.

    def _validate_secure(self, strategy: Strategy) -> None:
        """Refuse secure-aggregation settings that cannot work or would not be sound."""
        if not self.secure_agg:
            if self.secagg_threshold or self.secagg_neighbours:
                raise ConfigError("--secagg-threshold and --secagg-neighbours need --secure-agg")
            return
        if strategy.reducer.min_updates > 1 or strategy.name.split(":")[0] in ("median", "trimmed", "krum",
                                                                               "multikrum"):
            raise ConfigError(f"--strategy {self.strategy} needs every worker's own update, which secure "
                              "aggregation hides from the chief: use fedavg, fedprox or a server optimizer "
                              "(fedavgm, fedadam, fedyogi, fedadagrad), or drop --secure-agg")
        if self.compress != "none":
            raise ConfigError(f"--compress {self.compress} cannot be combined with --secure-agg: masked updates "
                              "are uniformly random 64-bit words and do not compress")
        if self.upstream is not None:
            raise ConfigError("--secure-agg cannot run on a relay (--upstream): the relay would have to hand "
                              "its workers' sum on in the clear")
        if self.min_workers < 2:
            raise ConfigError("--secure-agg needs --min-workers 2 or more: the sum of one update is the update")
        if self.secagg_threshold == 1 or self.secagg_threshold < 0:
            raise ConfigError("--secagg-threshold must be 0 (a majority) or at least 2")
        if self.secagg_neighbours < 0 or self.secagg_neighbours == 1:
            raise ConfigError("--secagg-neighbours must be 0 (everyone) or at least 2")
        if self.secagg_neighbours and self.secagg_threshold > self.secagg_neighbours + 1:
            raise ConfigError(f"--secagg-threshold {self.secagg_threshold} exceeds a neighbourhood of "
                              f"{self.secagg_neighbours + 1} workers")
        if self.secagg_timeout <= 0:
            raise ConfigError("--secagg-timeout must be positive")
