"""The chief's state dir and the files in it: private to the chief's user, no symlinks followed.

The state dir holds the TLS key, the join secret, the per-worker tokens,
checkpoints, metrics and the final model. So:

- it is created 0700; an existing one must be a real directory (not a
  symlink) owned by this user and not writable by group or others, or the
  chief refuses it (someone else could have planted a key, a token or a
  symlink in it). One that others can read is made 0700;
- files are created 0600 with ``O_EXCL``/``O_NOFOLLOW`` (a temp file
  never pre-exists; a planted symlink is never written through), replaced
  by ``rename`` (which replaces a symlink rather than following it), and
  appended to and read with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from fedsock.errors import ConfigError

log = logging.getLogger("fedsock")

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700, parents as usual) or check the existing one.

    Raises:
        ConfigError: a symlink or not a directory, owned by another user, or
            writable by group or others.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the state dir {path}: {exc.strerror or exc}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'}; "
                          "give the chief a real directory of its own as --state-dir")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to user id {st.st_uid}, not to this user ({os.geteuid()}): "
                          "anything in it (key, tokens) could be someone else's; use a directory of your own")
    if st.st_mode & 0o022:
        who = {0o022: "group and others", 0o020: "its group"}.get(st.st_mode & 0o022, "others")
        raise ConfigError(f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o}): another user "
                          f"could plant files in it; 'chmod 700 {path}' if its contents are yours")
    if st.st_mode & 0o077:
        log.warning("%s was readable by other users (mode %o); made it 0700", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, DIR_MODE)
    return path


def check_regular(path: Path) -> None:
    """``path``, if it exists, must be a regular file of this user (not a symlink).

    Raises:
        ConfigError: it is a symlink, not a regular file, or another user's.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a regular file'}; "
                          "the chief follows no links in its state dir: remove it")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to user id {st.st_uid}, not to this user; remove it")


def create_new(path: Path) -> int:
    """A file descriptor of a new file (0600; refused if anything, a symlink included, is there)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def open_append(path: Path) -> int:
    """A file descriptor to append to ``path`` (created 0600; a symlink is refused with ``OSError``)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def read_bytes(path: Path) -> bytes:
    """The contents of ``path``, not through a symlink.

    Raises:
        ConfigError: it is a symlink.
        FileNotFoundError: it does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); the chief follows no links in its "
                          "state dir") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_text(path: Path) -> str:
    return read_bytes(path).decode()
