"""TensorFlow without its start-up noise: only fedsock's own lines reach the terminal.

TensorFlow's C++ side writes to file descriptor 2 before its logging is set
up (``All log messages before absl::InitializeLog() ...``, oneDNN and CPU
notices, ``failed call to cuInit`` on a machine without a GPU), whatever
``TF_CPP_MIN_LOG_LEVEL`` says. ``import_tensorflow`` therefore imports it,
and lets it look for devices, with descriptor 2 pointed at a temporary file;
afterwards the lines that are not such noise are written back, and if the
import fails, everything is. With ``show=True`` (``--verbose``) nothing is
hidden.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import MutableMapping
from typing import Any

#: Variables that quiet TensorFlow's C++ logging after start-up (set unless the user set them).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}

# absl/glog prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ")
_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",
)


def quiet_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set ``QUIET_ENV`` in ``environ`` (default ``os.environ``), keeping values already set."""
    environ = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        environ.setdefault(key, value)


def is_noise(line: str) -> bool:
    """Whether ``line`` is TensorFlow/absl/CUDA start-up logging (never a fatal ``F`` line)."""
    return bool(_ABSL_LINE.match(line)) or line.startswith(_NOISE)


def import_tensorflow(show: bool | None = None) -> Any:
    """Import TensorFlow and initialise its devices with their start-up logging hidden.

    Args:
        show: let everything through; default: when fedsock logs at DEBUG (``--verbose``).

    Returns:
        The ``tensorflow`` module.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if show is None:
        show = logging.getLogger("fedsock").isEnabledFor(logging.DEBUG)
    quiet_environment()
    if show:
        import tensorflow as tf

        return tf
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        ok = False
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where CUDA is probed (and cuInit fails without a GPU)
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if not ok else [line for line in lines if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return tf
