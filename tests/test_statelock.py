"""One chief per state dir: the flock on <state-dir>/chief.lock, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fedsock.errors import ConfigError
from fedsock.statelock import FILE, StateDirLock
from tests.conftest import ROOT, env

HOLD = ("import sys\n"
        "from fedsock.statelock import StateDirLock\n"
        "with StateDirLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n")


def holder(state_dir) -> subprocess.Popen[str]:
    """A process that holds the lock of ``state_dir`` until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    state = tmp_path / "state"
    proc = holder(state)
    try:
        assert (state / FILE).read_text() == f"{proc.pid}\n"
        lock = StateDirLock(state)
        with pytest.raises(ConfigError, match=rf"the state dir {state} is in use by another chief "
                                              rf"\(PID {proc.pid}\), which holds {state / FILE}: stop that chief "
                                              r"first, or give this one its own --state-dir"):
            lock.acquire()
        assert not lock.held
    finally:
        proc.communicate("", timeout=30)  # the holder releases and exits
    with StateDirLock(state) as lock:  # free again
        assert lock.held and (state / FILE).read_text().strip() == str(os.getpid())
    assert not lock.held and (state / FILE).read_text() == ""


def test_a_killed_holder_leaves_nothing_that_blocks(tmp_path):
    state = tmp_path / "state"
    proc = holder(state)
    proc.kill()
    proc.wait(30)
    assert (state / FILE).read_text() == f"{proc.pid}\n"  # a stale PID, but no lock behind it
    with StateDirLock(state):
        pass


def test_one_process_cannot_take_it_twice(tmp_path):
    with StateDirLock(tmp_path) as first:
        with pytest.raises(ConfigError, match="in use by another chief"):
            StateDirLock(tmp_path).acquire()
        with pytest.raises(ConfigError, match="already held"):
            first.acquire()
    second = StateDirLock(tmp_path / "new" / "dir")  # a missing state dir is created
    second.acquire()
    second.release()
    second.release()


def test_a_state_dir_that_cannot_hold_a_lock_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="not a directory"):
        StateDirLock(tmp_path / "file").acquire()


def test_the_library_chief_takes_the_lock_before_touching_the_state_dir(tmp_path):
    from fedsock.chief import Chief

    state = tmp_path / "state"
    proc = holder(state)
    try:
        chief = Chief(state_dir=state, host="127.0.0.1", port=0, rounds=1, min_workers=1, progress="plain")
        with pytest.raises(ConfigError, match=rf"in use by another chief \(PID {proc.pid}\)"):
            chief.run()
        assert sorted(p.name for p in state.iterdir()) == [FILE]  # no key, certificate, token or address
    finally:
        proc.communicate("", timeout=30)


@pytest.mark.integration
def test_a_second_chief_on_the_same_state_dir_exits_at_once_naming_the_first(tmp_path, chiefs):
    first = chiefs("--rounds", "1", "--min-workers", "1")
    addr = (first.state_dir / "chief.addr").read_text()
    start = time.monotonic()
    second = subprocess.run([sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0",
                             "--state-dir", str(first.state_dir)],
                            capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    assert second.returncode == 2, second.stderr
    assert time.monotonic() - start < 30
    assert f"in use by another chief (PID {first.proc.pid})" in second.stderr, second.stderr
    assert "--state-dir" in second.stderr and "Traceback" not in second.stderr
    assert "listening" not in second.stderr  # it never got as far as the listener
    assert (first.state_dir / "chief.addr").read_text() == addr
    assert first.proc.poll() is None  # the first chief runs on, untouched
