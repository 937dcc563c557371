"""protocol.md 8.2, the error matrix, walked against a real chief over TLS: every case's code and
close (the conformance vectors), which cases count as failed authentications (the address is
locked out after MAX_AUTH_FAILURES_PER_MINUTE of them), and the cases that need two connections
(a replaced connection, closing with and without TLS close_notify)."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import pytest

from fedsock import conformance, limits, tls
from fedsock.protocol import Challenge, Welcome
from fedsock.testing.attacker import Hostile

pytestmark = pytest.mark.integration

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
CHIEF = ("--rounds", "1000000", "--round-timeout", "1", "--heartbeat-interval", "1", "--min-workers", "1",
         "--progress", "plain")


def matrix() -> dict[str, tuple[str, str, str]]:
    """vector name -> (code, closes, counts) from protocol.md's 8.2 table."""
    text = DOC.split("### 8.2 Error matrix")[1].split("\n## ")[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[5].startswith("`"):
            for name in re.findall(r"`(\d\d-[a-z0-9-]+)`", cells[5]):
                rows[name] = (cells[2].strip("`"), cells[3], cells[4])
    return rows


def test_every_vector_is_a_row_of_the_matrix_with_the_same_answer():
    rows = matrix()
    names = set()
    for path in conformance.vector_files():
        header, _ = conformance.load(path)
        names.add(header["vector"])
        if header["code"] is None:
            continue
        assert header["vector"] in rows, f"{header['vector']} is not in protocol.md 8.2"
        code, closes, counts = rows[header["vector"]]
        assert code == header["code"] and closes == "yes", header["vector"]
        assert counts == ("yes" if header["auth_failure"] else "no"), header["vector"]
    assert set(rows) <= names, set(rows) - names


def locked_out(address: str, source: str) -> bool:
    """Whether the chief closes a new connection from ``source`` before TLS (or answers no Hello)."""
    try:
        h = Hostile(address, None, source=source, timeout=3.0)
    except (OSError, ssl.SSLError):
        return True
    try:
        ch = h.hello("probe")
        return not isinstance(ch, Challenge)
    finally:
        h.close()


def test_which_refusals_count_as_failed_authentications(chiefs):
    """Each case before Welcome, MAX_AUTH_FAILURES_PER_MINUTE times from its own address: only
    those the matrix marks lock that address out."""
    chief = chiefs(*CHIEF)
    token = tls.JoinToken.parse(chief.token)
    checked = 0
    for i, path in enumerate(conformance.vector_files(), 1):
        header, steps = conformance.load(path)
        if header["code"] is None or any(s.get("kind") == "Welcome" for s in steps):
            continue
        source = f"127.0.20.{i}"
        for _ in range(limits.MAX_AUTH_FAILURES_PER_MINUTE):
            outcome = conformance.run_vector(path, chief.address, token, source=source)
            assert outcome.status == "pass", outcome
        assert locked_out(chief.address, source) == header["auth_failure"], header["vector"]
        checked += 1
    assert checked >= 20


def test_a_replaced_connection_is_told_name_in_use_and_not_logged_as_broken(chiefs):
    chief = chiefs(*CHIEF)
    old = Hostile(chief.address, chief.token)
    first = old.join("twice")
    assert isinstance(first, Welcome)
    new = Hostile(chief.address, chief.token)
    assert isinstance(new.join("twice", reconnect_secret=first.reconnect_secret), Welcome)
    err = old.error()
    assert err is not None and err.code == "name_in_use" and "replaced" in err.message, err
    new.close()
    old.close()
    time.sleep(0.5)
    log = chief.output()
    assert "reconnected from" in log and "is replaced" in log
    assert "[bad_frame]" not in log, log[-2000:]


@pytest.mark.parametrize("close_notify", [True, False])
def test_closing_with_or_without_close_notify_is_a_normal_close(chiefs, close_notify):
    chief = chiefs(*CHIEF)
    h = Hostile(chief.address, chief.token)
    name = f"closer-{int(close_notify)}"
    assert isinstance(h.join(name), Welcome)
    if close_notify:
        h.sock.settimeout(3.0)
        try:
            h.sock.unwrap()  # sends close_notify (and waits for the chief's, which may not come)
        except (OSError, ssl.SSLError):
            pass
    h.close()
    deadline = time.monotonic() + 10
    while f"({name}) disconnected" not in chief.output():
        assert time.monotonic() < deadline, chief.output()[-2000:]
        time.sleep(0.1)
    assert "[bad_frame]" not in chief.output()
