"""The Keras releases a worker accepts: those with every known ``safe_mode`` bypass fixed.

Keras' ``safe_mode`` is only as safe as the installed Keras. Known bypasses
and where they were fixed (CVE records, GitHub advisories, release notes):

* CVE-2025-1550 (``"module": "os", "class_name": "function"``): 3.9.0;
* CVE-2025-8747 / CVE-2025-9906 (``get_file`` gadget, a config turning
  ``enable_unsafe_deserialization`` on): 3.11.0; CVE-2025-9905 (HDF5): 3.11.3;
* CVE-2025-12058 / CVE-2025-12060 (lookup vocabulary files, archive paths): 3.12.0;
* CVE-2026-1462 (``TFSMLayer`` loading a SavedModel in safe mode) and
  CVE-2026-0897 (``saving/file_editor.py``): 3.13.2 (its advisory says
  3.13.1, which does not ship the fix), backported as 3.12.1;
* archive-extraction paths (GHSA-hqp4-2352-xf5r): 3.14.0;
* the zip-bomb, HDF5-path and pickle fixes of 3.15.1 (3.15.0 lacks them:
  compare the two wheels' ``saving_lib.py`` and ``datasets``), backported to
  the 3.12 line as 3.12.4.

So a release is accepted if it is 3.12.4 or a later 3.12.x (the line that
still supports Python 3.10), or 3.15.1 or later. ``pyproject.toml`` says the
same. Reading the version does not import Keras (or TensorFlow).
"""

from __future__ import annotations

import re
from importlib import metadata

from fedsock.errors import ConfigError

#: The oldest accepted release of each line: (first accepted, first not accepted of that line).
ACCEPTED = (((3, 12, 4), (3, 13, 0)), ((3, 15, 1), None))
UPGRADE = 'pip install --upgrade "keras>=3.15.1" (on Python 3.10: "keras>=3.12.4,<3.13")'


def parse_version(text: str) -> tuple[int, int, int]:
    """``"3.15.1"`` (or ``"3.15.1rc0"``, ``"3.16.0.dev2026"``) -> ``(3, 15, 1)``.

    Raises:
        ConfigError: not a version number.
    """
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        raise ConfigError(f"cannot read the Keras version {text!r}; {UPGRADE}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def is_accepted(version: tuple[int, int, int]) -> bool:
    """Whether this Keras release has every known safe-mode bypass fixed."""
    return any(low <= version and (high is None or version < high) for low, high in ACCEPTED)


def check_keras_version(text: str | None = None) -> str:
    """Refuse a Keras release with a known safe-mode bypass.

    Args:
        text: the version to check (default: the installed ``keras``).

    Returns:
        The version checked.

    Raises:
        ConfigError: Keras is missing or too old, with the command to upgrade.
    """
    if text is None:
        try:
            text = metadata.version("keras")
        except metadata.PackageNotFoundError:
            raise ConfigError(f"Keras is not installed; {UPGRADE}") from None
    if not is_accepted(parse_version(text)):
        raise ConfigError(
            f"Keras {text} has known safe-mode bypasses (a chief's model config could run code on this "
            f"machine); upgrade it: {UPGRADE}"
        )
    return text
