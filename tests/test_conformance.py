"""conformance/: the vectors are current, ``fedsock conformance`` passes against the chief, and it
fails against a chief with one check removed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fedsock import conformance
from tests.conftest import ROOT, env

pytestmark = pytest.mark.integration

CHIEF = ("--rounds", "1000000", "--round-timeout", "1", "--heartbeat-interval", "1", "--min-workers", "1",
         "--progress", "plain")


def run_cli(chief, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedsock", "conformance", "--chief", chief.address,
                           "--token", chief.token, *args], capture_output=True, text=True, env=env(),
                          timeout=120, cwd=ROOT)


def test_vectors_are_what_the_tool_generates():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "conformance_vectors.py"), "--check"],
                         capture_output=True, text=True, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_vector_has_a_header_and_expects_an_answer():
    for path in conformance.vector_files():
        header, steps = conformance.load(path)
        assert header["vector"] == path.stem and header["token"].startswith("fs1.")
        assert any(s["op"] == "expect" or s["op"] == "model" for s in steps), path
        if header["code"] is not None:
            assert steps[-2:] == [{"op": "expect", "kind": "Error", "code": header["code"]},
                                  {"op": "expect", "kind": "closed"}], path


def test_conformance_passes_against_the_chief(chiefs):
    chief = chiefs(*CHIEF)
    out = run_cli(chief)
    n = len(conformance.vector_files())
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"{n} passed, 0 failed, 0 skipped", out.stdout


def test_conformance_fails_against_a_chief_that_skips_one_check(tmp_path, chiefs, monkeypatch):
    """The chief's code is patched at start (a sitecustomize on its PYTHONPATH) so that it no
    longer refuses an encoded Update it did not ask for; everything else is unchanged."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        import fedsock.chief.intake as intake

        original = intake.check_update

        def check_update(specs, num_examples, compress, max_examples):
            original(specs, num_examples, "fp16" if compress == "none" else compress, max_examples)

        for module in list(sys.modules.values()):  # intake itself and every module that imported it
            if getattr(module, "check_update", None) is original:
                module.check_update = check_update
    """))
    monkeypatch.setenv("PYTHONPATH", str(shim))
    chief = chiefs(*CHIEF)
    out = run_cli(chief)
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert out.returncode == 1, out.stdout + out.stderr
    assert len(failed) == 1 and failed[0].startswith("FAIL  32-semantics-encoding-not-asked: expected Error "
                                                     "bad_message"), out.stdout


def test_a_vector_needing_another_chief_is_skipped(chiefs):
    chief = chiefs(*CHIEF, "--compress", "fp16")
    out = run_cli(chief, "--only", "encoding-not-asked")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("SKIP  32-semantics-encoding-not-asked: needs a chief whose Welcome has compress = "
                                 "None (this one: 'fp16')"), out.stdout
