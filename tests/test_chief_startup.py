"""A chief whose port is taken says so before it makes its state dir."""

from __future__ import annotations

import os
import socket

import pytest

from fedsock import cli
from fedsock.errors import ConfigError


def test_port_in_use_is_refused_before_the_state_dir_is_made(tmp_path, capsys, monkeypatch):
    for k in [k for k in os.environ if k.startswith("FEDSOCK_")]:
        monkeypatch.delenv(k)
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        state = tmp_path / "state"
        assert cli.main(["chief", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]) == 2
        err = capsys.readouterr().err
        assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err and "Traceback" not in err
        assert not state.exists()


def test_free_port_and_port_zero_pass():
    cli.check_port_free("127.0.0.1", 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli.check_port_free("127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"cannot listen on 192\.0\.2\.1.*--host"):
        cli.check_port_free("192.0.2.1", port)  # TEST-NET-1: not an address of this machine


def test_chief_on_a_port_taken_after_the_check_says_so(tmp_path):
    """The listener itself turns a busy port into a ConfigError (the port can be taken between the
    CLI's early check and the bind, and the Chief API has no such check)."""
    import fedsock

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        chief = fedsock.Chief(host="127.0.0.1", port=port, state_dir=tmp_path / "state", rounds=1)
        with pytest.raises(ConfigError, match=rf"port {port} on 127\.0\.0\.1 is in use.*--port"):
            chief.run()
