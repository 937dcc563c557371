"""What the chief prints at start: a worker command that works, with the secret out of it."""

from __future__ import annotations

import logging
from pathlib import Path

from fedsock.chief.config import ChiefConfig
from fedsock.chief.notices import announce
from fedsock.transport.tls import ChiefIdentity, JoinToken

TOKEN = JoinToken(bytes(range(32)), bytes(range(32, 64)))


def _printed(caplog, tmp_path: Path, **overrides) -> str:
    ident = ChiefIdentity(tmp_path / "cert.pem", tmp_path / "key.pem", TOKEN, created=True)
    with caplog.at_level(logging.INFO, logger="fedsock.chief"):
        announce(ChiefConfig(state_dir=tmp_path, **overrides), 7777, ident)
    return caplog.text


def test_a_chief_without_a_model_prints_a_worker_command_that_brings_one(caplog, tmp_path):
    text = _printed(caplog, tmp_path)
    assert "python worker.py --chief CHIEF_HOST:7777 --data ./shard --model YOUR_MODEL" in text
    assert "no --model" in text and TOKEN.secret.hex() not in text


def test_a_chief_with_a_model_prints_a_worker_command_without_one(caplog, tmp_path):
    text = _printed(caplog, tmp_path, model="fedsock.models:digits_mlp")
    assert "--data ./shard\n" in text + "\n" and "--model" not in text.split("start a worker with:")[1]
    assert "FEDSOCK_TOKEN" in text and TOKEN.secret.hex() not in text
