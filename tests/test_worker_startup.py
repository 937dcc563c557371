"""A worker's first seconds: a chief host name that does not exist fails at once; Ctrl-C in the examples."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fedsock.data import save_shard
from fedsock.errors import ConfigError
from fedsock.worker.config import check_chief_resolves
from tests.conftest import ROOT, env

TOKEN = "fs1." + "ab" * 32 + "." + "cd" * 32


def test_unresolvable_host_fails_with_the_fix(monkeypatch):
    def no_such_name(host, port, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(ConfigError, match=r"host name 'chef\.example' \(--chief chef\.example:7777\) does not "
                                          r"resolve.*spelling.*IP address"):
        check_chief_resolves("chef.example:7777")


def test_temporary_resolver_failure_is_left_to_the_retries(monkeypatch):
    def try_again(host, port, **kw):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", try_again)
    check_chief_resolves("chief.example:7777")  # no error: the connection retries decide
    with pytest.raises(ConfigError, match="use HOST:PORT"):
        check_chief_resolves("chief.example")


@pytest.mark.integration
def test_worker_with_a_mistyped_host_fails_at_once(tmp_path):
    try:
        socket.getaddrinfo("chief-typo.invalid", 7777)
        pytest.skip("this resolver answers for .invalid names")
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            pytest.skip("no resolver reachable here")
    save_shard(tmp_path / "shard", np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--chief", "chief-typo.invalid:7777",
                          "--data", str(tmp_path / "shard"), "--token", TOKEN],
                         capture_output=True, text=True, env=env(), timeout=60)
    assert res.returncode == 2
    assert "'chief-typo.invalid'" in res.stderr and "does not resolve" in res.stderr
    assert time.monotonic() - start < 20  # not --connect-timeout (60 s) of retries


@pytest.mark.integration
def test_example_ctrl_c_exits_without_a_traceback(tmp_path):
    save_shard(tmp_path / "shard", np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "keras_fit.py"), "--chief", "127.0.0.1:9",
                             "--data",
                             str(tmp_path / "shard"), "--token", TOKEN, "--connect-timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            # Ctrl-C as in a terminal, even where the tests run with SIGINT ignored (a background job)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:  # wait until it is retrying the connection
            lines.append(line)
            if "not reachable" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text and "KeyboardInterrupt" not in text


@pytest.mark.integration
def test_worker_without_a_token_fails_before_loading_tensorflow(tmp_path):
    save_shard(tmp_path / "shard", np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    res = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--chief", "127.0.0.1:9",
                          "--data", str(tmp_path / "shard")], capture_output=True, text=True, env=env(), timeout=60)
    assert res.returncode == 2 and "no join token" in res.stderr and "FEDSOCK_TOKEN" in res.stderr
    assert "Keras" not in res.stderr  # it stopped before the seconds of TensorFlow's import
