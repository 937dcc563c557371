"""The chief's state dir: private (0700, files 0600), refused when someone else could have planted
something in it, and no symlink in it followed."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

from fedsock import checkpoint, statefiles
from fedsock.chief import tokens
from fedsock.chief.records import MetricsLog
from fedsock.errors import ConfigError
from fedsock.transport.tls import ensure_identity


def mode(path) -> int:  # type: ignore[no-untyped-def]
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():  # type: ignore[no-untyped-def]
    """A umask that lets everything through: the modes below must not depend on the user's umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_new_state_dir_and_its_files_are_private(tmp_path, open_umask):
    state = tmp_path / "state"
    identity = ensure_identity(state, ["127.0.0.1"])
    tokens.create(state, "alice")
    checkpoint.weights_to_npz(state / "final_weights.npz", [], [])
    MetricsLog(state).truncate(0)
    assert mode(state) == 0o700
    for name in ("chief.key", "chief.crt", "token", "worker-tokens.json", "final_weights.npz", "metrics.jsonl"):
        assert mode(state / name) == 0o600, name
    assert identity.created and not [p for p in state.iterdir() if ".tmp-" in p.name]  # no temp file left


@pytest.mark.parametrize("bits", [0o777, 0o770, 0o702])
def test_a_state_dir_others_can_write_to_is_refused(tmp_path, bits):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, bits)
    with pytest.raises(ConfigError, match="writable by .*chmod 700"):
        ensure_identity(state, ["127.0.0.1"])
    assert not (state / "chief.key").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")
def test_a_state_dir_of_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to user id 65534"):
        ensure_identity(state, ["127.0.0.1"])
    with pytest.raises(ConfigError, match="belongs to user id 65534"):
        tokens.create(state, "alice")


def test_a_readable_state_dir_is_made_private(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    with caplog.at_level(logging.WARNING):
        statefiles.ensure_dir(state)
    assert mode(state) == 0o700 and "made it 0700" in caplog.text


def test_a_symlinked_state_dir_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="symlink"):
        ensure_identity(tmp_path / "link", ["127.0.0.1"])


def test_planted_symlinks_are_never_followed(tmp_path):
    state = tmp_path / "state"
    ensure_identity(state, ["127.0.0.1"])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "metrics.jsonl").symlink_to(victim)  # appending must not write through it
    from fedsock.chief.callbacks import RoundRecord

    with pytest.raises(ConfigError, match="follows no links"):
        MetricsLog(state).on_round_end(RoundRecord(round=1, workers=(1,), names=("a",), examples=1, seconds=0.1,
                                                   bytes_in=0, bytes_out=0, time=0.0))
    assert victim.read_text() == "precious\n"
    (state / "token").unlink()
    (state / "token").symlink_to(victim)  # a planted token is not adopted
    with pytest.raises(ConfigError, match="symlink"):
        ensure_identity(state, ["127.0.0.1"])
    (state / "token").unlink()
    (state / "worker-tokens.json").symlink_to(victim)
    with pytest.raises(ConfigError, match="follows no links"):
        tokens.listing(state)
    checkpoint.atomic_write(state / "worker-tokens.json", b"{}\n")  # a rewrite replaces the link itself
    assert victim.read_text() == "precious\n" and not (state / "worker-tokens.json").is_symlink()
    assert json.loads((state / "worker-tokens.json").read_text()) == {}


def test_a_temp_file_is_created_afresh_never_opened_if_it_exists(tmp_path, monkeypatch):
    fixed = "0123456789abcdef"
    monkeypatch.setattr(checkpoint.secrets, "token_hex", lambda n: fixed)
    target = tmp_path / "x.npz"
    planted = tmp_path / f".{target.name}.tmp-{fixed}"
    planted.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        checkpoint.atomic_write(target, b"data")
    assert not (tmp_path / "elsewhere").exists()


def test_checkpoints_round_trip_and_are_private(tmp_path, open_umask):
    from fedsock.protocol.messages import TensorSpec

    w = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    ckpt = checkpoint.Checkpoint(3, (TensorSpec("w", "float32", (2, 3)),), w, [], {"k": 1})
    path = checkpoint.round_path(tmp_path / "checkpoints", 3)
    checkpoint.save(path, ckpt)
    again = checkpoint.round_path(tmp_path / "checkpoints", 4)
    checkpoint.save(again, ckpt, recycle=path)  # the recycled file stays private too
    assert mode(again) == 0o600 and not path.exists()
    np.testing.assert_array_equal(checkpoint.load(again).weights[0], w[0])


@pytest.mark.parametrize("secure", [False, True])
def test_the_start_message_never_shows_the_join_secret(tmp_path, caplog, secure):
    from fedsock.chief.config import ChiefConfig
    from fedsock.chief.notices import announce

    identity = ensure_identity(tmp_path / "state", ["127.0.0.1"])
    cfg = ChiefConfig(state_dir=tmp_path / "state", secure_agg=secure, min_workers=2)
    with caplog.at_level(logging.INFO, logger="fedsock.chief"):
        announce(cfg, 7777, identity)
    assert identity.token.secret.hex() not in caplog.text and "--token" not in caplog.text
    assert ("fedsock token create NAME" in caplog.text) == secure
    assert str(tmp_path / "state") in caplog.text


def test_tokens_created_at_once_are_all_kept(tmp_path):
    import threading

    state = tmp_path / "state"
    ensure_identity(state, ["127.0.0.1"])
    names = [f"w{i}" for i in range(12)]
    threads = [threading.Thread(target=tokens.create, args=(state, n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(e.name for e in tokens.listing(state)) == sorted(names)
    assert mode(state / "worker-tokens.json") == 0o600


def test_token_create_status_issues_a_read_only_token(tmp_path, capsys):
    from fedsock.cli import main

    state = tmp_path / "state"
    ensure_identity(state, ["127.0.0.1"])
    assert main(["token", "create", "--status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "read-only status token 'status'" in out and "cannot join" in out
    assert main(["token", "create", "alice", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert main(["token", "list", "--state-dir", str(state)]) == 0
    listing = capsys.readouterr().out
    assert "status\tstatus\t" in listing and "alice\tworker\t" in listing
    assert {e.name: e.status for e in tokens.listing(state)} == {"alice": False, "status": True}
