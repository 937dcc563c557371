"""What the chief tells its operator in the log: where it listens and how a worker joins,
whom it waits for before training starts, and that a restarted run has nothing left to train."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from fedsock import tls
from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import RoundController

log = logging.getLogger("fedsock.chief")


def log_already_finished(cfg: ChiefConfig, round_: int, rounds: int) -> None:
    """A chief restarted on a finished run says so, and how to train further."""
    log.warning("the run in %s already finished at round %d (--rounds %d asks for no more): nothing to "
                "train; workers that join in the next %g s get the final model at once. To train "
                "further, start the chief with --rounds above %d; for a new run, use another --state-dir",
                cfg.state_dir, round_, rounds, 3 * cfg.done_grace, round_)


def log_waiting(ctrl: RoundController, who: Callable[[Iterable[int]], str]) -> None:
    """Training has not started: who is there, and what starts it."""
    log.info("waiting for workers: %d of %d connected (%s)%s; training starts at --min-workers %d "
             "(start more workers, or restart the chief with a lower --min-workers)",
             len(ctrl.members), ctrl.min_workers, who(ctrl.members),
             "" if ctrl.has_model else "; no model yet: the first worker's becomes round 0", ctrl.min_workers)


def announce(cfg: ChiefConfig, port: int, identity: tls.ChiefIdentity) -> None:
    """Log where the chief listens and the join command to copy."""
    host = cfg.advertise or (cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "CHIEF_HOST")
    log.info("fedsock chief listening on %s:%s (TLS 1.3, state dir %s)", cfg.host, port, cfg.state_dir)
    log.info("certificate sha256 %s%s", identity.token.fingerprint.hex(), " (new)" if identity.created else "")
    if cfg.secure_agg or cfg.worker_tokens_only:
        # the shared token admits nobody here: each worker needs its own (or a client certificate)
        log.info("this chief admits only per-worker tokens%s: issue one per worker with\n"
                 "  fedsock token create NAME --state-dir %s\nand start that worker with\n"
                 "  read -rs FEDSOCK_TOKEN && export FEDSOCK_TOKEN   # paste its token\n"
                 "  python worker.py --chief %s:%s --name NAME --data ./shard",
                 " (--secure-agg: the shared token would let one holder join as many identities as it likes)"
                 if cfg.secure_agg else "", cfg.state_dir, host, port)
        return
    # the secret stays out of the log and out of any command line (argv is visible in ps and shell history)
    log.info("join token in %s (give it only to your workers)", cfg.state_dir / "token")
    own_model = "" if cfg.model is not None or cfg.upstream is not None else " --model YOUR_MODEL"
    log.info("start a worker with:\n  read -rs FEDSOCK_TOKEN && export FEDSOCK_TOKEN   # paste the token\n"
             "  python worker.py --chief %s:%s --data ./shard%s%s", host, port, own_model,
             "\n(this chief has no --model: each worker brings its own, a .keras file or module:function)"
             if own_model else "")
