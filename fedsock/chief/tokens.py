"""Per-worker join tokens, kept in ``<state-dir>/worker-tokens.json`` (mode 0600).

``fedsock token create NAME`` issues ``fs1.<fingerprint>.<secret>.<NAME>``;
``token create --status [NAME]`` issues a read-only status token: it cannot
join as a worker, and ``fedsock status`` with it shows every worker's name
and traffic (with a join token, status shows counts only);
``token revoke NAME`` marks it revoked. The running chief re-reads the file
when it changes: a revoked token is refused for new connections at once, and
its live connection is dropped when the next round closes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedsock import limits, statefiles, tls
from fedsock.checkpoint import atomic_write
from fedsock.errors import ConfigError

FILE = "worker-tokens.json"


@dataclass(frozen=True)
class Entry:
    """One worker's token record (the secret never appears in logs)."""

    name: str
    secret: bytes
    created: str
    revoked: str | None
    status: bool = False  # a read-only status token: answers status queries, never joins


def _read(state_dir: Path) -> dict[str, Entry]:
    path = state_dir / FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(statefiles.read_text(path))
        return {n: Entry(n, bytes.fromhex(e["secret"]), e["created"], e.get("revoked"), e.get("role") == "status")
                for n, e in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); fix or remove it") from None


def _write(state_dir: Path, entries: dict[str, Entry]) -> None:
    data = {e.name: {"secret": e.secret.hex(), "created": e.created, "revoked": e.revoked,
                     **({"role": "status"} if e.status else {})}
            for e in entries.values()}
    atomic_write(state_dir / FILE, (json.dumps(data, indent=1) + "\n").encode())  # 0600 from the start


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the token file (two ``token create`` at once
    would otherwise lose one of the tokens)."""
    fd = statefiles.open_append(state_dir / f".{FILE}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def create(state_dir: Path, name: str, status: bool = False) -> tls.JoinToken:
    """Issue a token for worker ``name`` (the chief's identity must exist); with ``status``, a
    read-only status token under that name.

    Raises:
        ConfigError: bad name, an active token for it exists, or no chief state dir.
    """
    tls.check_name(name)
    if state_dir.exists():  # ours, private: a token file planted by someone else is not extended
        statefiles.ensure_dir(state_dir)
    cert = state_dir / "chief.crt"
    if not cert.exists():
        raise ConfigError(f"no chief certificate in {state_dir}: start the chief once first (it creates one)")
    import ssl

    fp = tls.cert_fingerprint(ssl.PEM_cert_to_DER_cert(statefiles.read_text(cert)))
    with _locked(state_dir):
        entries = _read(state_dir)
        if name in entries and entries[name].revoked is None:
            raise ConfigError(f"worker {name!r} already has a token; revoke it first to issue a new one")
        entries[name] = Entry(name, secrets.token_bytes(limits.SECRET_BYTES), _now(), None, status)
        _write(state_dir, entries)
    return tls.JoinToken(fp, entries[name].secret, name)


def revoke(state_dir: Path, name: str) -> None:
    """Revoke worker ``name``'s token.

    Raises:
        ConfigError: no such token.
    """
    with _locked(state_dir):
        entries = _read(state_dir)
        if name not in entries:
            raise ConfigError(f"no token for worker {name!r} in {state_dir / FILE}")
        e = entries[name]
        entries[name] = Entry(e.name, e.secret, e.created, e.revoked or _now(), e.status)
        _write(state_dir, entries)


def listing(state_dir: Path) -> list[Entry]:
    """All token records, by name."""
    return [e for _, e in sorted(_read(state_dir).items())]


class TokenStore:
    """The chief's view of the token file, re-read when it changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, Entry] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file if its size or mtime changed."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return
        if stamp != self._stamp:
            self._entries = _read(self.path.parent)
            self._stamp = stamp

    def lookup(self, name: str) -> Entry | None:
        """The record for ``name``, if it has a per-worker token."""
        self.refresh()
        return self._entries.get(name)

    def revoked(self) -> set[str]:
        self.refresh()
        return {n for n, e in self._entries.items() if e.revoked}
