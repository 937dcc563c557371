"""Run a fedsock command (the chief) on a slow disk: every fsync of a checkpoint takes longer.

    python -m fedsock.testing.slowdisk SECONDS chief --state-dir ... [chief options]

A test seam that lives outside the shipped code path: it wraps ``os.fsync`` in this process
only, before the command starts, so that each fsync of a file or directory under a
``checkpoints`` directory (the checkpoint's temp file, then its directory after the rename)
sleeps ``SECONDS`` first, as a slow or busy disk would. Everything else is the real chief:
its checkpoints are written, renamed and fsynced as always.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence


def slow_fsync(delay: float, marker: str = f"{os.sep}checkpoints") -> None:
    """From now on, fsyncs of paths containing ``marker`` take ``delay`` seconds longer."""
    real = os.fsync

    def fsync(fd: int) -> None:  # type: ignore[override]
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if marker in path:
            time.sleep(delay)
        real(fd)

    os.fsync = fsync


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    slow_fsync(float(args[0]))
    from fedsock.cli import main as cli_main

    return cli_main(args[2:], prog=f"{args[1]}.py", command=args[1])


if __name__ == "__main__":
    sys.exit(main())
