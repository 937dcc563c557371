"""``fedsock chief|worker|status|conformance|plot|shard|demo``; ``chief.py`` and ``worker.py`` are the same commands.

``chief`` and ``worker`` also read ``FEDSOCK_*`` environment variables and a
``--config`` TOML file (see ``fedsock.settings``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedsock import quiet, settings
from fedsock.errors import ConfigError, FedsockError

if TYPE_CHECKING:
    from fedsock.chief import ChiefConfig


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def chief_parser(p: argparse.ArgumentParser) -> None:
    from fedsock.chief import ChiefConfig

    settings.add_settings(p, ChiefConfig)
    settings.add_print_config(p)


def worker_parser(p: argparse.ArgumentParser) -> None:
    from fedsock.worker.config import WorkerConfig
    from fedsock.worker.run import TrainingOptions

    settings.add_settings(p, WorkerConfig)
    settings.add_settings(p, TrainingOptions)
    settings.add_print_config(p)


def status_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chief", required=True, metavar="HOST:PORT", help="address of the chief (or relay) to ask")
    p.add_argument("--token", help="its join token (default: $FEDSOCK_TOKEN, else the --state-dir's token "
                   "if that chief listened on this port)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    p.add_argument("--json", action="store_true", help="print the Status message as JSON")
    p.add_argument("--state-dir", type=Path, default=Path("fedsock-chief"),
                   help="the chief's state dir, read when the chief does not answer: whether its run finished "
                   "and where the final model is (default ./fedsock-chief)")


def conformance_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chief", required=True, metavar="HOST:PORT", help="address of the chief to test")
    p.add_argument("--token", help="its join token (default: $FEDSOCK_TOKEN)")
    p.add_argument("--vectors", type=Path, help="directory of vector files (default: fedsock's conformance/)")
    p.add_argument("--only", metavar="TEXT", help="run only the vectors whose name contains TEXT")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")


def plot_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("state_dir", type=Path, metavar="STATE_DIR", help="the chief's --state-dir (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, help="PNG to write (default: STATE_DIR/metrics.png)")
    p.add_argument("--title", help="the figure's title (default: the state dir, rounds, workers per round, "
                   "final accuracy)")


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
    p.add_argument("--status", action="store_true",
                   help="create: a read-only status token (name default 'status') that cannot join; "
                   "'fedsock status' with it shows every worker's name and traffic")


def certs_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["ca", "server", "client"], help="what to make")
    p.add_argument("--out", type=Path, default=Path("pki"), help="output directory (default ./pki)")
    p.add_argument("--ca-dir", type=Path, default=None, help="where ca.crt/ca.key are (default: --out)")
    p.add_argument("--host", action="append", default=[], help="server: a host name or IP of the chief (repeat)")
    p.add_argument("--name", help="client: the worker's identity (certificate common name)")
    p.add_argument("--days", type=float, default=None, help="validity in days (default: the kind's own)")


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


def chief_config(args: argparse.Namespace) -> ChiefConfig:
    """The ``ChiefConfig`` of parsed ``fedsock chief`` options (validated)."""
    from fedsock.chief import ChiefConfig

    cfg = settings.build(ChiefConfig, args)
    cfg.validate()
    return cfg


def check_port_free(host: str, port: int) -> None:
    """Fail with a message, not a traceback, when ``host:port`` cannot be listened on.

    Binds as asyncio's server will (``SO_REUSEADDR``), then lets go; port 0
    (any free port) needs no check.

    Raises:
        ConfigError: the port is in use, or the address is not this machine's.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            from fedsock.chief.listener import cannot_listen

            raise cannot_listen(host, port, exc) from None


def known_variables() -> set[str]:
    """Every ``FEDSOCK_*`` variable some command reads (a worker's are not a typo in a chief's shell)."""
    from fedsock.chief import ChiefConfig
    from fedsock.worker.config import WorkerConfig
    from fedsock.worker.run import TrainingOptions

    names = {settings.ENV_PREFIX + "CONFIG", settings.ENV_PREFIX + "TOKEN"}
    return names | {o.env for cls in (ChiefConfig, WorkerConfig, TrainingOptions) for o in settings.options_of(cls)}


def run(args: argparse.Namespace) -> int:
    if hasattr(args, "_settings"):  # chief, worker: flags > FEDSOCK_* > --config file > defaults
        sources = settings.apply(args)
        for message in settings.unknown_variables(os.environ, known_variables()):
            logging.getLogger("fedsock").warning("%s", message)
        if args.print_config:
            if args.command == "chief":
                chief_config(args)  # print only what would start
            else:
                from fedsock.worker.config import WorkerConfig

                settings.build(WorkerConfig, args)  # checks the name and timeouts
            print(settings.format_toml(args, sources), end="")
            return 0
    if args.command == "chief":
        from fedsock.chief import Chief

        cfg = chief_config(args)
        check_port_free(cfg.host, cfg.port)  # before the state dir, key and token are made
        if cfg.writes_tensorboard and cfg.model is None:  # the writer imports TensorFlow (--model: kerasutil)
            quiet.import_tensorflow()
        summary = Chief(cfg).run()
        return 130 if summary.stopped else 0
    if args.command == "worker":
        from fedsock.worker.config import WorkerConfig
        from fedsock.worker.run import TrainingOptions, run_worker

        run_worker(settings.build(WorkerConfig, args), settings.build(TrainingOptions, args))
        return 0
    if args.command == "status":
        from fedsock.errors import ConnectError
        from fedsock.status import format_status, query_status, state_dir_token, status_json, stopped_run

        token = args.token or os.environ.get("FEDSOCK_TOKEN") or state_dir_token(args.state_dir, args.chief)
        try:
            st = query_status(args.chief, token=token, timeout=args.timeout)
        except ConnectError as exc:
            run = stopped_run(args.state_dir, args.chief)
            if run is None:
                raise
            if not run.finished:
                raise ConnectError(f"{exc}\n{run.describe()}") from None
            print(run.to_json() if args.json else f"no chief answers at {args.chief}: {run.describe()}")
            return 0
        print(status_json(st) if args.json else format_status(st, args.chief))
        return 0
    if args.command == "conformance":
        from fedsock import conformance

        token = args.token or os.environ.get("FEDSOCK_TOKEN")
        if not token:
            raise ConfigError("'fedsock conformance' needs the chief's join token: --token or $FEDSOCK_TOKEN")
        outcomes = conformance.run_all(args.chief, token, args.vectors or conformance.VECTORS, args.only,
                                       timeout=args.timeout)
        print(conformance.report(outcomes))
        return 1 if any(o.status == "fail" for o in outcomes) else 0
    if args.command == "plot":
        from fedsock.plot import plot_metrics

        print(plot_metrics(args.state_dir, args.out, args.title))
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
    "conformance": (conformance_parser, "replay the protocol's conformance vectors against a running chief"),
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
            print(f"{e.name}\t{'status' if e.status else 'worker'}\tcreated {e.created}\t"
                  f"{'revoked ' + e.revoked if e.revoked else 'active'}")
        return 0
    if args.action == "create" and args.status:
        name = args.name or "status"
        tok = tokens.create(args.state_dir, name, status=True)
        print(f"read-only status token {name!r} (it cannot join; it is not shown again):\n{tok}")
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
    if args.days is not None and not args.days > 0:
        raise ConfigError(f"--days must be more than 0, got {args.days}")
    days = {} if args.days is None else {"days": args.days}  # else each kind's own default (certs.py)
    if args.kind == "ca":
        path = certs.make_ca(args.out, **days)
    elif args.kind == "server":
        path = certs.make_server(ca_dir, args.out, args.host, **days)
    else:
        if not args.name:
            raise ConfigError("'fedsock certs client' needs --name (the worker's identity)")
        path = certs.make_client(ca_dir, args.out, args.name, **days)
    print(f"wrote {path} and {path.with_suffix('.key')}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "fedsock", command: str | None = None) -> int:
    """Console entry point. Returns the exit code.

    With ``command`` (as in ``chief.py``), ``argv`` holds only that command's options.
    """
    if command is None:
        args = build_parser(prog).parse_args(argv)
    else:
        add, text = COMMANDS[command]
        parser = argparse.ArgumentParser(prog=prog, description=text)
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add(parser)
        args = parser.parse_args(argv)
        args.command = command
    if not args.verbose:  # before anything imports TensorFlow
        quiet.quiet_environment()
    _setup_logging(args.verbose)
    try:
        return run(args)
    except FedsockError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given on the command line: a file where a directory must be, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    sys.exit(main())
