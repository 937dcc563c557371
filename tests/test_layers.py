"""The layering rules: the protocol core and aggregation do no I/O and need no TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fedsock"
FORBIDDEN = {"socket", "ssl", "asyncio", "selectors", "tensorflow", "keras"}


def test_pure_packages_do_not_import_io_or_tensorflow():
    code = (
        "import sys, fedsock.protocol, fedsock.aggregation\n"
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_forbidden_import_statements_in_pure_packages():
    for path in [*(PKG / "protocol").glob("*.py"), *(PKG / "aggregation").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{path.name} imports {n}"


def test_import_fedsock_is_light():
    code = "import sys, fedsock; print('tensorflow' in sys.modules, 'asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_chief_without_model_starts_without_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from fedsock import cli, settings, status\n"
        "from fedsock.chief import Chief\n"
        f"c = Chief(progress='plain', rounds=1, state_dir={str(tmp_path)!r})\n"
        "from fedsock.chief.tensorboard import TensorBoard\n"  # off by default without --model
        "tb = [cb for cb in c.callbacks.callbacks if isinstance(cb, TensorBoard)]\n"
        "print(tb or None, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False", "False"], out.stdout + out.stderr
