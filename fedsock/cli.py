"""``fedsock chief|worker|status|plot|shard|demo``; ``chief.py`` and ``worker.py`` are the same commands.

``chief`` and ``worker`` also read ``FEDSOCK_*`` environment variables and a
``--config`` TOML file (see ``fedsock.settings``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedsock import limits, settings
from fedsock.errors import ConfigError, FedsockError

if TYPE_CHECKING:
    from fedsock.chief import ChiefConfig

PROGRESS_HELP = "auto (default): a live display when stdout is a terminal, else plain lines; live; plain"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def chief_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=7777, help="TCP port (default 7777; 0 picks a free one)")
    p.add_argument("--state-dir", type=Path, default=Path("fedsock-chief"),
                   help="key, certificate, token, checkpoints, metrics.jsonl, final model")
    p.add_argument("--rounds", type=int, default=10, help="rounds of federated averaging")
    p.add_argument("--min-workers", type=int, default=2,
                   help="workers needed to start, and updates needed to close a round at its deadline")
    p.add_argument("--round-timeout", type=float, default=300.0,
                   help="seconds after which a round with --min-workers updates closes")
    p.add_argument("--model", help="a .keras file or module:function returning a compiled model; "
                   "without it the first worker's weights become round 0")
    p.add_argument("--eval-data", type=Path, help="holdout shard evaluated after each round (needs --model)")
    p.add_argument("--sync-every", type=int, default=50, help="local steps between syncs")
    p.add_argument("--batch-size", type=int, default=32, help="local batch size")
    p.add_argument("--advertise", help="host name workers use to reach this chief (for the printed command)")
    p.add_argument("--cert", type=Path, help="the chief's TLS certificate (PEM; default: self-signed in --state-dir)")
    p.add_argument("--key", type=Path, help="the private key of --cert")
    p.add_argument("--ca", type=Path, help="require client certificates signed by this CA (mutual TLS); "
                   "the worker's identity is its certificate's common name")
    p.add_argument("--worker-tokens-only", action="store_true",
                   help="refuse the shared join token; admit only per-worker tokens ('fedsock token create')")
    p.add_argument("--handshake-timeout", type=float, default=limits.HANDSHAKE_TIMEOUT_S,
                   help=f"seconds for the TLS handshake, and again for Hello..Auth "
                   f"(default {limits.HANDSHAKE_TIMEOUT_S:g})")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="share of connected workers sampled per round, seeded by --seed (default 1.0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the worker sampling and the initial model")
    p.add_argument("--idle-timeout", type=float, default=limits.IDLE_TIMEOUT_S,
                   help=f"seconds of silence after which a worker counts as gone (default {limits.IDLE_TIMEOUT_S:g})")
    p.add_argument("--heartbeat-interval", type=float, default=limits.HEARTBEAT_INTERVAL_S,
                   help=f"seconds between heartbeats to a quiet worker (default {limits.HEARTBEAT_INTERVAL_S:g})")
    p.add_argument("--progress", choices=("auto", "live", "plain"), default="auto",
                   help=PROGRESS_HELP + " (one line per round)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard event files to <state-dir>/tensorboard (default: on with --model)")
    p.add_argument("--upstream", metavar="HOST:PORT",
                   help="make this chief a relay: it averages its own workers and takes part in that "
                   "chief's rounds as one worker weighted by their examples; plan and model come from there")
    p.add_argument("--upstream-token", help="join token of the upstream chief (default: $FEDSOCK_UPSTREAM_TOKEN)")
    p.add_argument("--upstream-name", help="this relay's worker name upstream (default: relay-<host>-<pid>)")
    p.add_argument("--compress", default="none",
                   help="update compression workers use: none | fp16 | int8 | topk:R (R = share of entries sent)")
    secure_options(p)
    strategy_options(p)
    privacy_options(p)
    settings.add_config_options(p)
    settings.prepare(p)


def privacy_options(p: argparse.ArgumentParser) -> None:
    """``--dp-clip``, ``--dp-noise``, ``--dp-delta`` (docs/privacy.md explains them)."""
    g = p.add_argument_group(
        "differential privacy",
        "Client-level DP-FedAvg (McMahan et al. 2018); see docs/privacy.md. Meaningful only with many "
        "workers or sampling (--fraction); not with robust strategies, --compress int8 or topk, or a relay.")
    g.add_argument("--dp-clip", type=float, default=0.0, metavar="C",
                   help="workers clip each update's delta from the global model to L2 norm C and weigh "
                   "equally (default 0: off)")
    g.add_argument("--dp-noise", type=float, default=0.0, metavar="Z",
                   help="noise multiplier: Gaussian noise of std Z*C is added to the sum of the updates "
                   "(needs --dp-clip; default 0)")
    g.add_argument("--dp-delta", type=float, default=1e-5, metavar="DELTA",
                   help="delta at which epsilon is reported each round, in (0, 1) (default 1e-5)")


def strategy_options(p: argparse.ArgumentParser) -> None:
    """``--strategy`` and its hyperparameters (docs/algorithms.md explains each)."""
    g = p.add_argument_group(
        "aggregation strategy",
        "How each round's updates become the new global model; see docs/algorithms.md. "
        "Robust strategies (median, trimmed, krum, multikrum) keep every update of a round in memory "
        "and need --min-workers at least as large as they require.")
    g.add_argument("--strategy", default="fedavg", metavar="NAME",
                   help="fedavg (weighted mean, default) | fedprox (workers add mu/2 ||w - w_global||^2) | "
                   "fedavgm (server momentum) | fedadam | fedyogi | fedadagrad (server adaptive optimizers, "
                   "Reddi et al. 2021) | median (coordinate-wise) | trimmed:B (drop the B share at each end "
                   "of every coordinate, 0 < B < 0.5) | krum:F (tolerate F Byzantine workers; needs "
                   "2F+3 updates) | multikrum:F,M (mean of the M best Krum scores)")
    g.add_argument("--mu", type=float, metavar="MU",
                   help="fedprox: proximal coefficient sent to the workers" + _defaults("mu"))
    g.add_argument("--server-lr", type=float, metavar="LR",
                   help="fedavgm/fedadam/fedyogi/fedadagrad: server learning rate" + _defaults("server_lr"))
    g.add_argument("--server-momentum", type=float, metavar="M",
                   help="fedavgm: server momentum" + _defaults("momentum"))
    g.add_argument("--server-beta1", type=float, metavar="B1",
                   help="fedadam/fedyogi/fedadagrad: first-moment decay" + _defaults("beta1"))
    g.add_argument("--server-beta2", type=float, metavar="B2",
                   help="fedadam/fedyogi: second-moment decay" + _defaults("beta2"))
    g.add_argument("--server-tau", type=float, metavar="TAU",
                   help="fedadam/fedyogi/fedadagrad: adaptivity, added to sqrt(v)" + _defaults("tau"))


def _defaults(name: str) -> str:
    """`` (default: fedadam 0.01, fedyogi 0.01)`` from the strategy registry."""
    from fedsock.aggregation.strategies import DEFAULTS

    pairs = [f"{s} {d[name]:g}" for s, d in DEFAULTS.items() if name in d]
    return f" (default: {', '.join(pairs)})"


def worker_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chief", required=True, help="HOST:PORT of the chief")
    p.add_argument("--data", type=Path, required=True, help="shard directory with .npz files (x, y)")
    p.add_argument("--token", help="join token printed by the chief (default: $FEDSOCK_TOKEN)")
    p.add_argument("--name", help="name shown in the chief's logs (default: host-pid)")
    p.add_argument("--model", help="your own model (.keras or module:function) when the chief has none")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds to keep retrying an unreachable chief (default 60)")
    p.add_argument("--idle-timeout", type=float, default=limits.IDLE_TIMEOUT_S,
                   help=f"seconds of silence after which the chief counts as gone (default {limits.IDLE_TIMEOUT_S:g})")
    p.add_argument("--heartbeat-interval", type=float, default=limits.HEARTBEAT_INTERVAL_S,
                   help=f"seconds between heartbeats while training (default {limits.HEARTBEAT_INTERVAL_S:g})")
    p.add_argument("--reconnect-timeout", type=float, default=300.0,
                   help="after a lost connection, seconds to keep reconnecting (default 300; 0 = never)")
    p.add_argument("--seed", type=int, default=None, help="seed for local shuffling, to make training repeatable")
    p.add_argument("--ca", type=Path, help="mutual TLS: CA file to verify the chief with (instead of the token)")
    p.add_argument("--cert", type=Path, help="mutual TLS: this worker's certificate (its CN is the identity)")
    p.add_argument("--key", type=Path, help="mutual TLS: the private key of --cert")
    p.add_argument("--save-updates", type=Path,
                   help="keep a copy of every update sent (round-N.npz) to audit what left this machine")
    p.add_argument("--progress", choices=("auto", "live", "plain"), default="auto",
                   help=PROGRESS_HELP + " (a log line per sync); live is a Keras progress bar per round")
    settings.add_config_options(p)
    settings.prepare(p)


def status_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chief", required=True, metavar="HOST:PORT", help="address of the chief (or relay) to ask")
    p.add_argument("--token", help="its join token (default: $FEDSOCK_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    p.add_argument("--json", action="store_true", help="print the Status message as JSON")


def plot_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("state_dir", type=Path, metavar="STATE_DIR", help="the chief's --state-dir (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, help="PNG to write (default: STATE_DIR/metrics.png)")


def shard_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--workers", type=int, default=3, help="number of worker shards")
    p.add_argument("--partition", default="iid", help="iid | dirichlet:ALPHA | labels:K")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of examples kept for the chief")


def token_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    p.add_argument("name", nargs="?", help="the worker's identity (for create and revoke)")
    p.add_argument("--state-dir", type=Path, default=Path("fedsock-chief"), help="the chief's state dir")


def certs_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["ca", "server", "client"], help="what to make")
    p.add_argument("--out", type=Path, default=Path("pki"), help="output directory (default ./pki)")
    p.add_argument("--ca-dir", type=Path, default=None, help="where ca.crt/ca.key are (default: --out)")
    p.add_argument("--host", action="append", default=[], help="server: a host name or IP of the chief (repeat)")
    p.add_argument("--name", help="client: the worker's identity (certificate common name)")
    p.add_argument("--days", type=float, default=None, help="validity in days")


def demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("fedsock-demo"),
                   help="where shards, state and the plot go")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--rounds", type=int, default=20, help="rounds of federated averaging (default 20)")
    p.add_argument("--partition", default="dirichlet:0.5",
                   help="how the digits are split: iid | dirichlet:ALPHA | labels:K (default dirichlet:0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")


def build_parser(prog: str = "fedsock") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Federated averaging for Keras over TLS.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, text) in COMMANDS.items():
        add(sub.add_parser(name, help=text, description=text))
    return parser


def secure_options(p: argparse.ArgumentParser) -> None:
    """The chief's secure-aggregation flags."""
    g = p.add_argument_group("secure aggregation (the chief sees only the sum of the updates)")
    g.add_argument("--secure-agg", action="store_true",
                   help="mask every update with pairwise and self masks that cancel in the sum "
                   "(Bonawitz et al. 2017); see docs/privacy.md")
    g.add_argument("--secagg-threshold", type=int, default=0,
                   help="shares needed to remove a dropped worker's masks, and workers that must remain "
                   "(default 0: a majority, at least 2)")
    g.add_argument("--secagg-neighbours", type=int, default=0,
                   help="SecAgg+: each worker masks with this many random neighbours instead of all (default 0: all)")
    g.add_argument("--secagg-timeout", type=float, default=limits.SECAGG_PHASE_TIMEOUT_S,
                   help="seconds each secure-aggregation phase waits for workers "
                   f"(default {limits.SECAGG_PHASE_TIMEOUT_S:g})")


def chief_config(args: argparse.Namespace) -> ChiefConfig:
    """The ``ChiefConfig`` of parsed ``fedsock chief`` options (validated)."""
    from fedsock.chief import ChiefConfig

    cfg = ChiefConfig(
        host=args.host, port=args.port, state_dir=args.state_dir, rounds=args.rounds,
        min_workers=args.min_workers, round_timeout=args.round_timeout, model=args.model,
        eval_data=args.eval_data, sync_every=args.sync_every, batch_size=args.batch_size,
        advertise=args.advertise, fraction=args.fraction, seed=args.seed,
        idle_timeout=args.idle_timeout, heartbeat_interval=args.heartbeat_interval,
        progress=args.progress, tensorboard=args.tensorboard, upstream=args.upstream,
        upstream_token=args.upstream_token, upstream_name=args.upstream_name,
        cert=args.cert, key=args.key, ca=args.ca, worker_tokens_only=args.worker_tokens_only,
        handshake_timeout=args.handshake_timeout, compress=args.compress,
        secure_agg=args.secure_agg, secagg_threshold=args.secagg_threshold,
        secagg_neighbours=args.secagg_neighbours, secagg_timeout=args.secagg_timeout,
        strategy=args.strategy, mu=args.mu, server_lr=args.server_lr,
        server_momentum=args.server_momentum, server_beta1=args.server_beta1,
        server_beta2=args.server_beta2, server_tau=args.server_tau,
        dp_clip=args.dp_clip, dp_noise=args.dp_noise, dp_delta=args.dp_delta,
    )
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    if hasattr(args, "_settings"):  # chief, worker: flags > FEDSOCK_* > --config file > defaults
        sources = settings.apply(args)
        if args.print_config:
            if args.command == "chief":
                chief_config(args)  # print only what would start
            print(settings.format_toml(args, sources), end="")
            return 0
    if args.command == "chief":
        from fedsock.chief import Chief

        summary = Chief(chief_config(args)).run()
        return 130 if summary.stopped else 0
    if args.command == "worker":
        from fedsock.worker.run import run_worker

        run_worker(args.chief, args.data, token=args.token, name=args.name, model=args.model,
                   connect_timeout=args.connect_timeout, reconnect_timeout=args.reconnect_timeout,
                   idle_timeout=args.idle_timeout, heartbeat_interval=args.heartbeat_interval,
                   ca=args.ca, cert=args.cert, key=args.key, seed=args.seed,
                   save_updates=args.save_updates, progress=args.progress)
        return 0
    if args.command == "status":
        from fedsock.status import format_status, query_status, status_json

        st = query_status(args.chief, token=args.token, timeout=args.timeout)
        print(status_json(st) if args.json else format_status(st, args.chief))
        return 0
    if args.command == "plot":
        from fedsock.plot import plot_metrics

        print(plot_metrics(args.state_dir, args.out))
        return 0
    if args.command == "shard":
        from fedsock.data import Partition, split_digits

        sizes = split_digits(args.out, args.workers, Partition.parse(args.partition), args.seed, args.holdout)
        for name, n in sizes.items():
            print(f"{args.out / name}: {n} examples")
        return 0
    if args.command == "token":
        return run_token(args)
    if args.command == "certs":
        return run_certs(args)
    if args.command == "demo":
        from fedsock.demo import run_demo

        return run_demo(args.workdir, args.workers, args.rounds, args.partition, args.seed)
    raise AssertionError(args.command)


COMMANDS = {
    "chief": (chief_parser, "run the chief (server): the only machine that needs an open port"),
    "worker": (worker_parser, "train a Keras model on a local shard with a chief"),
    "status": (status_parser, "ask a running chief for its round, workers and metrics (read-only)"),
    "plot": (plot_parser, "render a chief's metrics.jsonl to a PNG"),
    "shard": (shard_parser, "split the bundled digits data into worker shards"),
    "demo": (demo_parser, "chief + workers on 127.0.0.1 with real digits data"),
    "token": (token_parser, "per-worker join tokens: create, list, revoke"),
    "certs": (certs_parser, "make a CA, chief and worker certificates for mutual TLS"),
}


def run_token(args: argparse.Namespace) -> int:
    from fedsock.chief import tokens

    if args.action == "list":
        for e in tokens.listing(args.state_dir):
            print(f"{e.name}\tcreated {e.created}\t{'revoked ' + e.revoked if e.revoked else 'active'}")
        return 0
    if not args.name:
        raise ConfigError(f"'fedsock token {args.action}' needs the worker's name")
    if args.action == "create":
        tok = tokens.create(args.state_dir, args.name)
        print(f"token for worker {args.name} (give it only to them; it is not shown again):\n{tok}")
        return 0
    tokens.revoke(args.state_dir, args.name)
    print(f"revoked {args.name}: refused from now on; a live connection is dropped when the next round closes")
    return 0


def run_certs(args: argparse.Namespace) -> int:
    from fedsock import certs

    ca_dir = args.ca_dir or args.out
    if args.kind == "ca":
        path = certs.make_ca(args.out, days=args.days or 3650)
    elif args.kind == "server":
        path = certs.make_server(ca_dir, args.out, args.host, days=args.days or 825)
    else:
        if not args.name:
            raise ConfigError("'fedsock certs client' needs --name (the worker's identity)")
        path = certs.make_client(ca_dir, args.out, args.name, days=args.days or 825)
    print(f"wrote {path} and {path.with_suffix('.key')}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "fedsock", command: str | None = None) -> int:
    """Console entry point. Returns the exit code.

    With ``command`` (as in ``chief.py``), ``argv`` holds only that command's options.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if command is None:
        args = build_parser(prog).parse_args(argv)
    else:
        add, text = COMMANDS[command]
        parser = argparse.ArgumentParser(prog=prog, description=text)
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add(parser)
        args = parser.parse_args(argv)
        args.command = command
    _setup_logging(args.verbose)
    try:
        return run(args)
    except FedsockError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    sys.exit(main())
