"""protocol.md is the contract: its limits table and error codes match the code."""

from __future__ import annotations

import re
from pathlib import Path

from fedsock import limits
from fedsock.protocol import ERROR_CODES

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()


def test_limits_table_matches_limits_py():
    rows = dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([0-9.]+) \|", DOC, flags=re.M))
    code = {k: v for k, v in vars(limits).items() if k.isupper()}
    assert set(rows) == set(code), set(rows) ^ set(code)
    for name, value in code.items():
        assert type(value)(rows[name]) == value and ("." in rows[name]) == isinstance(value, float), name


def test_tuning_constants_are_apart_in_both():
    """limits.py's tuning section and protocol.md's 9.2 list the same names; no limit is among them."""
    source = (Path(limits.__file__)).read_text()
    tuning_src = set(re.findall(r"^([A-Z_0-9]+) = ", source.split("# === tuning constants")[1], flags=re.M))
    section = DOC.split("### 9.2 Tuning constants")[1].split("## 10.")[0]
    tuning_doc = set(re.findall(r"^\| `([A-Z_0-9]+)` \|", section, flags=re.M))
    assert tuning_src == tuning_doc and {"CHUNK_BYTES", "HEARTBEAT_INTERVAL_S"} <= tuning_src
    peer = DOC.split("### 9.1 Limits on peer input")[1].split("### 9.2")[0]
    assert not tuning_doc & set(re.findall(r"^\| `([A-Z_0-9]+)` \|", peer, flags=re.M))


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
    # Whole frames too, title, annotations and dump in order: each one in protocol.md is generated
    # exactly so, and each generated one is there (but the Chunks of the EvalRequest example, whose
    # model the text has shown already).
    generated, documented = _dump_blocks(out), _dump_blocks(DOC)
    assert len(documented) > 40
    stale = [b.splitlines()[0] for b in documented if b not in generated]
    assert not stale, stale
    absent = [b.splitlines()[0] for b in generated if b not in documented]
    assert all(t.startswith("--- EvalRequest") and "Chunk" in t for t in absent), absent


def _dump_blocks(text: str) -> list[str]:
    """Each frame's block: its ``--- title: N bytes`` line and what follows up to a blank line or a fence."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if re.match(r"^--- .*: \d+ bytes$", line):
            current = [line]
            blocks.append(current)
        elif current is not None and (not line.strip() or line.startswith("```")):
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(b) for b in blocks]


def test_every_exception_class_is_defined_in_errors_py():
    import importlib
    import pkgutil

    import fedsock
    from fedsock import errors

    skip = {"fedsock.keras", "fedsock.kerasutil", "fedsock.models", "fedsock.worker.keras", "fedsock.plot"}
    for mod in pkgutil.walk_packages(fedsock.__path__, "fedsock."):
        if mod.name in skip or mod.name.endswith("__main__"):
            continue  # TensorFlow or matplotlib at import time, or a command line
        module = importlib.import_module(mod.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__.startswith("fedsock"):
                assert value.__module__ == "fedsock.errors" and getattr(errors, value.__name__) is value, value


def test_every_hex_dump_is_inside_a_code_fence():
    """An unclosed fence swaps code and prose from there on when the page is rendered."""
    inside, outside = False, []
    for number, line in enumerate(DOC.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif not inside and (re.match(r"^[0-9a-f]{8}  ", line) or re.match(r"^--- .*: \d+ bytes$", line)):
            outside.append(number)
    assert not inside and not outside, outside[:5]
