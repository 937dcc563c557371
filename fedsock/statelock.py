"""One chief per state dir: an exclusive ``flock`` on ``<state-dir>/chief.lock``.

Two chiefs on one state dir would resume from the same checkpoint, write the
same metrics and overwrite each other's ``chief.addr``. The lock file holds
the PID of the chief that has it, so a second chief can say which process
to stop. The kernel drops the lock when its holder exits, however it exits,
so a stale file from a killed chief never blocks the next one; the file
itself is left in place (removing it would let a third chief lock a new
file while a second still waits on the old one).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from fedsock import statefiles
from fedsock.errors import ConfigError

FILE = "chief.lock"
#: How long a refused chief waits for the holder's PID to appear in the file
#: (the holder writes it right after taking the lock).
PID_WAIT_S = 1.0


class StateDirLock:
    """Holds ``<state_dir>/chief.lock`` from ``acquire`` (or ``with``) until ``release``.

    Args:
        state_dir: the chief's state dir (created if missing).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, and write this process's PID into the file.

        Raises:
            ConfigError: another process holds it (the message names its PID),
                or the file cannot be opened or locked.
        """
        if self._fd is not None:
            raise ConfigError(f"{self.path} is already held by this chief")
        try:
            statefiles.ensure_dir(self.state_dir)  # 0700, ours, not writable by others
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the state dir's lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            who = f"another chief (PID {pid})" if pid is not None else "another process"
            raise ConfigError(
                f"the state dir {self.state_dir} is in use by {who}, which holds {self.path}: "
                "stop that chief first, or give this one its own --state-dir") from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path} ({exc.strerror or exc}); put --state-dir on a local "
                              "file system") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (no-op if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the file no longer names a running chief
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    """The PID in the lock file; None if it is not there within ``PID_WAIT_S``."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
