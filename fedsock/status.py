"""``fedsock status``: ask a running chief how its run is going (read-only).

The query authenticates like a worker (same HMAC challenge), with the
``"status"`` capability in its Hello, so the chief answers with one
``Status`` message instead of a ``Welcome`` and hangs up. It never joins the
federation. With a join token (which every worker holds) the answer has
counts only; a read-only status token (``fedsock token create --status``),
which cannot join, also gets each worker's name and traffic.

A chief that is not running cannot answer; ``stopped_run`` reads what its
state dir says instead (the run finished at round N, with its final model;
or it stopped after round N and resumes there).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedsock import limits, statefiles
from fedsock.errors import ConfigError, ConnectError, RemoteProtocolError
from fedsock.protocol import Status
from fedsock.transport.channel import BlockingChannel, open_tls
from fedsock.transport.credentials import Credentials, parse_address
from fedsock.transport.errors import ConnectionLost
from fedsock.transport.handshake import handshake


def query_status(address: str, token: str | None = None, name: str | None = None,
                 timeout: float = 10.0) -> Status:
    """Connect, authenticate, and return the chief's ``Status``.

    Args:
        address: ``host:port`` of the chief.
        token: join token (default ``$FEDSOCK_TOKEN``).
        name: how the chief's log names this query (default: a per-worker token's
            name, else ``status-<host>-<pid>``).
        timeout: seconds for connecting and for each answer.

    Raises:
        ConfigError: bad address or token.
        ConnectError: the chief is unreachable or does not answer in time.
        AuthenticationError: wrong token or an unexpected certificate.
        PeerError: the chief refused with an Error (e.g. ``busy``).
        RemoteProtocolError: the answer broke the protocol (e.g. a chief
            that does not know status queries answered with Welcome).
    """
    host, port = parse_address(address)
    creds = Credentials.resolve(token)
    # a per-worker token (--worker-tokens-only chiefs) authenticates only under its own name
    name = name or creds.own_name or f"status-{socket.gethostname()}-{os.getpid()}"
    try:
        sock = open_tls(creds.context(), host, port, timeout, creds.pin)
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS with {host}:{port} failed ({exc}); is it a fedsock chief?") from None
    except OSError as exc:
        raise ConnectError(f"could not reach the chief at {host}:{port} ({exc}); is it running?") from None
    channel = BlockingChannel(sock, idle_timeout=timeout, heartbeat_interval=timeout / 4, send_timeout=timeout)
    try:
        answer = handshake(channel, name, creds, os.urandom(limits.INSTANCE_ID_BYTES), status=True)
    except ConnectionLost as exc:
        if "silent" in str(exc):
            raise ConnectError(f"the chief at {host}:{port} did not answer within {timeout:g} s") from None
        raise ConnectError(f"connection to the chief at {host}:{port} failed: {exc}") from None
    except TimeoutError:
        raise ConnectError(f"the chief at {host}:{port} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectError(f"connection to the chief at {host}:{port} failed: {exc}") from None
    finally:
        channel.close()
    if not isinstance(answer, Status):
        raise RemoteProtocolError(f"expected Status, got {type(answer).__name__}")
    return answer


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def format_status(st: Status, address: str) -> str:
    """A human-readable report of ``st``."""
    state = "finished" if st.finished else (
        f"collecting round {st.round + 1}: {st.submitted} submitted, {st.waiting} still training")
    up = time.strftime("%H:%M:%S", time.gmtime(st.uptime)) if st.uptime < 86400 else f"{st.uptime / 86400:.1f} d"
    lines = [f"chief {address}  round {st.round}/{st.rounds}  {state}  (up {up})"]
    if st.upstream:
        lines.append(f"relay of {st.upstream}")
    if st.metrics:
        lines.append("last round  " + "  ".join(f"{k} {_num(v)}" for k, v in st.metrics.items()))
    lines.append(f"workers: {st.connected} connected, {st.known} known")
    if st.known and not st.workers:
        lines.append("  (names and traffic only with a read-only status token: 'fedsock token create --status')")
    if st.workers:
        width = max(4, *(len(w.name) for w in st.workers))
        lines.append(f"  {'name':<{width}} {'id':>5} {'connected':>9} {'last seen':>13} {'rounds':>6} "
                     f"{'MB in':>8} {'MB out':>8}")
        evaluated = any(w.metrics for w in st.workers)
        lines[-1] += "  validation (latest)" if evaluated else ""
        for w in st.workers:
            lines.append(f"  {w.name:<{width}} {w.worker_id:>5} {'yes' if w.connected else 'no':>9} "
                         f"{_ago(w.last_seen):>13} {w.rounds:>6} {w.bytes_in / 1e6:>8.2f} {w.bytes_out / 1e6:>8.2f}"
                         + ("  " + "  ".join(f"{k.removeprefix('val_')} {_num(v)}" for k, v in w.metrics.items())
                            if w.metrics else ""))
    return "\n".join(lines)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def status_json(st: Status) -> str:
    """``st`` as JSON (the Status map of protocol.md)."""
    return json.dumps({**asdict(st), "workers": [asdict(w) for w in st.workers]}, indent=2)



@dataclass(frozen=True)
class StoppedRun:
    """What a chief's state dir says about its run while no chief answers.

    Attributes:
        state_dir: the state dir read.
        round: the last round checkpointed.
        finished: the final model was saved after that checkpoint (the run is over).
        final_model: ``final.keras`` (or ``final_weights.npz`` without ``--model``); None if not finished.
        checkpoint: the newest checkpoint file.
        metrics: the last round's holdout and federated metrics from ``metrics.jsonl`` (may be empty).
    """

    state_dir: Path
    round: int
    finished: bool
    final_model: Path | None
    checkpoint: Path
    metrics: dict[str, float]

    def describe(self) -> str:
        """One paragraph for the user."""
        shown = "  ".join(f"{k} {_num(v)}" for k, v in self.metrics.items())
        if self.finished:
            return (f"the run in {self.state_dir} finished at round {self.round}"
                    + (f" ({shown})" if shown else "") + f"; final model: {self.final_model}; "
                    f"per-round metrics: {self.state_dir / 'metrics.jsonl'}")
        return (f"the run in {self.state_dir} stopped after round {self.round} ({self.checkpoint.name}); "
                "starting the chief again on that state dir resumes there")

    def to_json(self) -> str:
        """The same as JSON, with ``"running": false``."""
        return json.dumps({"running": False, "state_dir": str(self.state_dir), "round": self.round,
                           "finished": self.finished, "checkpoint": str(self.checkpoint), "metrics": self.metrics,
                           "final_model": None if self.final_model is None else str(self.final_model)}, indent=2)


#: The last-round metrics a stopped run's report shows.
SHOWN = ("accuracy", "loss", "fed_val_accuracy", "fed_val_loss")


def stopped_run(state_dir: Path, address: str | None = None) -> StoppedRun | None:
    """Read a chief's state dir: its newest checkpoint, whether the final model came after it.

    Args:
        state_dir: the chief's ``--state-dir``.
        address: the ``host:port`` asked; a state dir whose ``chief.addr``
            names another port belongs to another chief (None is returned).

    Returns:
        None when the state dir holds no checkpoint (no run, or not readable).
    """
    state_dir = Path(state_dir)
    try:
        if address is not None and _listened_on(state_dir) not in (None, _port(address)):
            return None
        ckpts = sorted((state_dir / "checkpoints").glob("round-*.fsck"))
        if not ckpts:
            return None
        newest = ckpts[-1]
        round_ = int(newest.stem.removeprefix("round-"))
        weights = state_dir / "final_weights.npz"
        finished = weights.exists() and weights.stat().st_mtime >= newest.stat().st_mtime
        keras_file = state_dir / "final.keras"
        final = (keras_file if keras_file.exists() else weights) if finished else None
        metrics = _last_metrics(state_dir / "metrics.jsonl", round_)
    except (OSError, ValueError, ConfigError):
        return None
    return StoppedRun(state_dir, round_, finished, final, newest, metrics)


def _last_metrics(path: Path, round_: int) -> dict[str, float]:
    """``SHOWN`` metrics of the row of ``round_`` if it is the last line of ``path`` (its tail only is read)."""
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        lines = f.read().decode(errors="replace").strip().splitlines()
    try:
        row = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    if not isinstance(row, dict) or row.get("round") != round_:
        return {}
    return {k: float(row[k]) for k in SHOWN if isinstance(row.get(k), (int, float))}


def state_dir_token(state_dir: Path, address: str) -> str | None:
    """The join token in ``<state_dir>/token`` if that state dir's chief listened on ``address``'s port
    (``fedsock status`` on the chief's own host needs no ``--token``)."""
    try:
        if _listened_on(Path(state_dir)) != _port(address):
            return None
        return statefiles.read_text(Path(state_dir) / "token").strip() or None
    except (OSError, ConfigError):
        return None


def _port(address: str) -> str:
    return address.strip().rpartition(":")[2]


def _listened_on(state_dir: Path) -> str | None:
    """The port in ``<state_dir>/chief.addr``, None without one.

    Raises:
        OSError, ConfigError: it cannot be read.
    """
    if not (state_dir / "chief.addr").exists():
        return None
    return _port(statefiles.read_text(state_dir / "chief.addr"))
