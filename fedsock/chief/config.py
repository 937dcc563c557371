"""The chief's settings (one dataclass; the CLI and ``fedsock.Chief`` fill it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fedsock import limits
from fedsock.aggregation.compat import check_compatible, with_dp
from fedsock.aggregation.strategies import DEFAULTS, Strategy, parse_strategy
from fedsock.errors import ConfigError
from fedsock.secagg import metrics as metric_words
from fedsock.settings import setting

#: Strategies that select or drop individual updates (they keep every update of a round).
#: ``--help`` sections.
STRATEGY, PRIVACY = "aggregation strategy", "differential privacy"
SECURE = "secure aggregation (the chief sees only the sum of the updates)"


def _defaults(name: str) -> str:
    """``fedadam 0.01, fedyogi 0.01``: a hyperparameter's default per strategy, from the registry."""
    return ", ".join(f"{s} {d[name]:g}" for s, d in DEFAULTS.items() if name in d)


@dataclass
class ChiefConfig:
    """Everything a chief run is configured by.

    Each field is one setting: its ``help`` is its documentation, and the
    ``fedsock chief`` flag, config-file key and ``FEDSOCK_*`` variable are
    made from it (see ``fedsock.settings``). ``fedsock.Chief(...)`` takes
    the same names as keyword arguments.
    """

    setting_groups: ClassVar[dict[str, str]] = {
        STRATEGY: "How each round's updates become the new global model; see docs/algorithms.md. "
        "Robust strategies (median, trimmed, krum, multikrum) keep every update of a round in memory "
        "and need --min-workers at least as large as they require.",
        PRIVACY: "Client-level DP-FedAvg (McMahan et al. 2018); see docs/privacy.md. Meaningful only with many "
        "workers or sampling (--fraction); not with robust strategies, --compress int8 or topk, or a relay.",
    }

    host: str = setting("0.0.0.0", help="address to listen on")
    port: int = setting(7777, help="TCP port (0 picks a free one; the chief logs it)")
    state_dir: Path = setting(Path("fedsock-chief"),
                              help="key, certificate, token, checkpoints, metrics.jsonl, final model; "
                              "one chief at a time (it holds <state-dir>/chief.lock)")
    rounds: int = setting(10, help="rounds of federated averaging before Done")
    min_workers: int = setting(2, help="workers needed to start, and updates needed to close a round "
                               "at its deadline")
    round_timeout: float = setting(300.0, help="seconds after which a round with --min-workers updates closes "
                                   "without waiting for the rest")
    model: str | None = setting(None, help="a .keras file or module:function returning a compiled model",
                                default_text="none: the first worker's weights become round 0")
    eval_data: Path | None = setting(None, help="holdout shard evaluated after each round (needs --model)")
    sync_every: int = setting(50, help="local steps between syncs (sent to workers in the plan)")
    batch_size: int = setting(32, help="local batch size (sent to workers in the plan)")
    advertise: str | None = setting(None, help="host name workers use to reach this chief "
                                    "(for the printed command)")
    fraction: float = setting(1.0, help="share of connected workers sampled per round, seeded by --seed "
                              "(1.0: all)")
    eval_every: int = setting(1, metavar="N", help="with --fraction below 1, every N-th round asks the workers "
                              "not sampled for it (held) to evaluate the round's starting model on their "
                              "validation split without training; their values join the round's federated "
                              "metrics (0: never; see docs/evaluation.md)")
    final_eval_timeout: float = setting(limits.FINAL_EVAL_TIMEOUT_S, metavar="SECONDS",
                                        help="after the last round, seconds to wait for the workers' evaluation "
                                        "of the final model (and after their --personalize-epochs) for "
                                        "<state-dir>/final_evaluation.json (0: ask for none)")
    seed: int = setting(0, help="seed of the worker sampling and the initial model")
    cert: Path | None = setting(None, help="the chief's TLS certificate (PEM)",
                                default_text="self-signed in --state-dir")
    key: Path | None = setting(None, help="the private key of --cert")
    ca: Path | None = setting(None, help="require client certificates signed by this CA (mutual TLS); "
                              "the worker's identity is its certificate's common name")
    worker_tokens_only: bool = setting(False, help="refuse the shared join token; admit only per-worker "
                                       "tokens ('fedsock token create')")
    handshake_timeout: float = setting(limits.HANDSHAKE_TIMEOUT_S,
                                       help="seconds for the TLS handshake, and again for Hello..Auth")
    idle_timeout: float = setting(limits.IDLE_TIMEOUT_S,
                                  help="seconds of silence after which a worker counts as gone")
    send_timeout: float = setting(limits.SEND_TIMEOUT_S,
                                  help="seconds one message to a worker (with its chunks: the Welcome, a "
                                  "Global) may take to send before the connection is dropped")
    heartbeat_interval: float = setting(limits.HEARTBEAT_INTERVAL_S,
                                        help="seconds between heartbeats to a quiet worker")
    max_examples: int = setting(limits.MAX_EXAMPLES,
                                help="the largest num_examples one update may claim; a larger claim is "
                                "refused (limit_exceeded), so no worker can outweigh the rest by claiming more")
    keep_checkpoints: int = setting(5, help="newest round checkpoints kept in <state-dir>/checkpoints")
    done_grace: float = setting(10.0, help="after the last round, at most this many seconds of handing the "
                                "final model to workers that have not hung up or are reconnecting")
    progress: str = setting("auto", choices=("auto", "live", "plain"),
                            help="auto: a live display when stdout is a terminal, else one line per round; "
                            "live; plain")
    tensorboard: bool | None = setting(None, help="write TensorBoard event files to <state-dir>/tensorboard",
                                       default_text="on with --model")
    upstream: str | None = setting(None, metavar="HOST:PORT",
                                   help="make this chief a relay: it averages its own workers and takes part in "
                                   "that chief's rounds as one worker weighted by their examples; plan and "
                                   "model come from there")
    upstream_token: str | None = setting(None, secret=True, help="join token of the upstream chief")
    upstream_name: str | None = setting(None, help="this relay's worker name upstream",
                                        default_text="relay-<host>-<pid>")
    strategy: str = setting("fedavg", group=STRATEGY, metavar="NAME",
                            help="fedavg (weighted mean) | fedprox (workers add mu/2 ||w - w_global||^2) | "
                            "fedavgm (server momentum) | fedadam | fedyogi | fedadagrad (server adaptive "
                            "optimizers, Reddi et al. 2021) | median (coordinate-wise) | trimmed:B (drop the B "
                            "share at each end of every coordinate, 0 < B < 0.5) | krum:F (tolerate F Byzantine "
                            "workers; needs 2F+3 updates) | multikrum:F,M (mean of the M best Krum scores)")
    mu: float | None = setting(None, group=STRATEGY, metavar="MU", default_text=_defaults("mu"),
                               help="fedprox: proximal coefficient sent to the workers")
    server_lr: float | None = setting(None, group=STRATEGY, metavar="LR", default_text=_defaults("server_lr"),
                                      help="fedavgm/fedadam/fedyogi/fedadagrad: server learning rate")
    server_momentum: float | None = setting(None, group=STRATEGY, metavar="M", default_text=_defaults("momentum"),
                                            help="fedavgm: server momentum")
    server_beta1: float | None = setting(None, group=STRATEGY, metavar="B1", default_text=_defaults("beta1"),
                                         help="fedadam/fedyogi/fedadagrad: first-moment decay")
    server_beta2: float | None = setting(None, group=STRATEGY, metavar="B2", default_text=_defaults("beta2"),
                                         help="fedadam/fedyogi: second-moment decay")
    server_tau: float | None = setting(None, group=STRATEGY, metavar="TAU", default_text=_defaults("tau"),
                                       help="fedadam/fedyogi/fedadagrad: adaptivity, added to sqrt(v)")
    compress: str = setting("none", help="update compression workers use: none | fp16 | int8 | topk:R "
                            "(R = share of entries sent; see protocol.md, Compression)")
    dp_clip: float = setting(0.0, group=PRIVACY, metavar="C",
                             help="workers clip each update's delta from the global model to L2 norm C and "
                             "weigh equally (0: off)")
    dp_noise: float = setting(0.0, group=PRIVACY, metavar="Z",
                              help="noise multiplier: Gaussian noise of std Z*C is added to the sum of the "
                              "updates (needs --dp-clip)")
    dp_delta: float = setting(1e-5, group=PRIVACY, metavar="DELTA",
                              help="delta at which epsilon is reported each round, in (0, 1)")
    secure_agg: bool = setting(False, group=SECURE,
                               help="mask every update with pairwise and self masks that cancel in the sum "
                               "(Bonawitz et al. 2017); see docs/privacy.md")
    secagg_threshold: int = setting(0, group=SECURE,
                                    help="shares needed to remove a dropped worker's masks, and workers that "
                                    "must remain (0: a majority of each neighbourhood, at least 2)")
    secagg_neighbours: int = setting(0, group=SECURE, help="SecAgg+: each worker masks with this many random "
                                     "neighbours instead of all (0: all)")
    secagg_timeout: float = setting(limits.SECAGG_PHASE_TIMEOUT_S, group=SECURE,
                                    help="seconds each secure-aggregation phase waits for workers before "
                                    "going on without them")
    secagg_metrics: str = setting("auto", group=SECURE, metavar="NAMES",
                                  help="metrics whose federated averages ride inside the masked vector, as "
                                  "val_<m> and train_<m> with val_examples (the chief sees only their sums): "
                                  "auto (loss, accuracy and the --model's compiled metrics), none, or Keras "
                                  "metric names separated by commas")

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
            strategy = with_dp(strategy, self.dp_clip, self.dp_noise, secure_agg=self.secure_agg)
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
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every must be 0 (never) or a number of rounds, got {self.eval_every}")
        if not 0 <= self.final_eval_timeout < math.inf:
            raise ConfigError(f"--final-eval-timeout must be 0 (ask for no final evaluation) or a number of "
                              f"seconds, got {self.final_eval_timeout}")
        from fedsock.protocol.compression import parse_compression

        self.compress = str(parse_compression(self.compress))
        if not 0 < self.heartbeat_interval < self.idle_timeout:
            raise ConfigError("--heartbeat-interval must be positive and shorter than --idle-timeout")
        if self.max_examples < 1:
            raise ConfigError("--max-examples must be at least 1")
        if self.keep_checkpoints < 1:
            raise ConfigError("--keep-checkpoints must be at least 1: a restarted chief resumes from the newest")
        if not self.handshake_timeout > 0 or not self.done_grace >= 0:
            raise ConfigError("--handshake-timeout must be positive and --done-grace at least 0")
        if not self.send_timeout > 0:
            raise ConfigError("--send-timeout must be positive")
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
        self._validate_secure()
        check_compatible(strategy, secure_agg=self.secure_agg, dp=self.dp, min_workers=self.min_workers)

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
        if self.dp:  # which strategies combine with DP: check_compatible, from what their reducers declare
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

    def _validate_secure(self) -> None:
        """Refuse secure-aggregation settings that cannot work or would not be sound."""
        if not self.secure_agg:
            if self.secagg_threshold or self.secagg_neighbours:
                raise ConfigError("--secagg-threshold and --secagg-neighbours need --secure-agg")
            if self.secagg_metrics != "auto":
                raise ConfigError("--secagg-metrics needs --secure-agg (without it the workers send their "
                                  "metrics with their updates)")
            return
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
        metric_words.parse_bases(self.secagg_metrics)
