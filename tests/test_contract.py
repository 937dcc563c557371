"""protocol.md is the contract: its limits table and error codes match the code."""

from __future__ import annotations

import re
from pathlib import Path

from fedsock import limits
from fedsock.protocol.messages import ERROR_CODES

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()


def test_limits_table_matches_limits_py():
    rows = dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([0-9.]+) \|", DOC, flags=re.M))
    code = {k: v for k, v in vars(limits).items() if k.isupper()}
    assert set(rows) == set(code), set(rows) ^ set(code)
    for name, value in code.items():
        assert type(value)(rows[name]) == value and ("." in rows[name]) == isinstance(value, float), name


def test_every_error_code_is_documented():
    documented = set(re.findall(r'^\| "([a-z_]+)" \| (?:chief|worker|either)', DOC, flags=re.M))
    assert documented == set(ERROR_CODES)


def test_hex_dumps_are_current():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "tools" / "protocol_dumps.py")], capture_output=True,
                         text=True, check=True, cwd=root).stdout
    hexlines = [ln for ln in out.splitlines() if re.match(r"^[0-9a-f]{8}  ", ln)]
    assert len(hexlines) > 20
    missing = [ln for ln in hexlines if ln not in DOC]
    assert not missing, missing[:5]
