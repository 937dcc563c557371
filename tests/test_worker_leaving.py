"""A worker's way out: ``Client.close()`` from another thread while a sync waits, and a worker
whose chief has gone (nothing listens at its address any more) giving up within ``gone_timeout``."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fedsock.errors import ClientClosed, ConnectError
from fedsock.testing.faultproxy import FaultProxy
from fedsock.worker.client import Client
from fedsock.worker.reconnect import Backoff


def test_backoff_gives_up_after_gone_seconds_of_nobody_listening():
    b = Backoff(now=0.0, timeout=300.0, name_hold=60.0, jitter=lambda lo, hi: 1.0, gone=2.0)
    now, tries = 0.0, 0
    while (d := b.retry_in(now, nobody=True)) is not None:
        tries += 1
        now += d
    assert b.is_gone(now) and now == pytest.approx(2.0) and tries >= 3  # the last try comes when 2 s are up


def test_backoff_gone_counts_only_an_unbroken_run_of_nobody_listening():
    b = Backoff(now=0.0, timeout=300.0, name_hold=60.0, jitter=lambda lo, hi: 1.0, gone=2.0)
    assert b.retry_in(0.0, nobody=True) is not None
    assert b.retry_in(1.5, nobody=False) is not None  # something answered (a reset, a busy chief): start over
    assert b.retry_in(3.0, nobody=True) is not None and not b.is_gone(3.0)
    assert b.retry_in(5.0, nobody=True) is None and b.is_gone(5.0)


def test_backoff_without_gone_retries_nobody_until_the_reconnect_timeout():
    b = Backoff(now=0.0, timeout=20.0, name_hold=60.0, jitter=lambda lo, hi: 1.0)
    now = 0.0
    while (d := b.retry_in(now, nobody=True)) is not None:
        now += d
    assert 15.0 <= now <= 20.0 and not b.is_gone(now)


@pytest.mark.integration
def test_close_from_another_thread_ends_a_waiting_sync_at_once(chiefs):
    chief = chiefs("--rounds", "3", "--min-workers", "2")  # alone, the worker's round never closes
    client = Client(chief.address, token=chief.token, name="w1", connect_timeout=30)
    w = client.join([np.zeros(3, np.float32)])
    outcome: dict[str, object] = {}

    def sync() -> None:
        try:
            client.sync([w[0] + 1], 5)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"], outcome["at"] = exc, time.monotonic()

    t = threading.Thread(target=sync, daemon=True)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), outcome  # waiting for the round to close
    t0 = time.monotonic()
    closer = threading.Thread(target=client.close, daemon=True)  # a close that blocked would fail here, not hang
    closer.start()
    closer.join(5)
    took = time.monotonic() - t0
    t.join(5)
    assert not closer.is_alive() and not t.is_alive() and took < 1.0, took
    err = outcome["error"]
    assert isinstance(err, ClientClosed) and "close()" in str(err), err
    assert float(outcome["at"]) - t0 < 1.0  # type: ignore[arg-type]
    with pytest.raises(ClientClosed):  # and after: a clear error, not a reconnect
        client.sync([w[0] + 1], 5)
    client.close()  # twice is harmless


@pytest.mark.integration
def test_a_worker_whose_chief_is_gone_after_the_run_gives_up_within_gone_timeout(chiefs):
    chief = chiefs("--rounds", "1", "--min-workers", "1", "--round-timeout", "1", "--done-grace", "1")
    host, port = chief.address.rsplit(":", 1)
    with FaultProxy((host, int(port))) as proxy:
        late = Client(proxy.url, token=chief.token, name="late", connect_timeout=30, reconnect_timeout=120,
                      gone_timeout=2)
        w = late.join([np.zeros(3, np.float32)])
    # the proxy is gone: "late" lost its connection and nothing listens at its address any more
    with Client(chief.address, token=chief.token, name="other", connect_timeout=30) as other:
        other.join()
        other.sync([w[0] + 1], 5)
        assert other.finished
    assert chief.wait(30) == 0, chief.output()[-2000:]  # the run is over and the chief has exited
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as exc:
        late.sync([w[0] + 1], 5)
    took = time.monotonic() - t0
    assert 2.0 <= took < 10.0, took  # not its reconnect timeout of 120 s
    assert "nothing has listened" in str(exc.value) and "--gone-timeout" in str(exc.value), exc.value
    late.close()
