"""Features at Welcome (protocol.md 7.2, "Features"): a worker that lists what it implements is
refused before Welcome if the plan needs more; Welcome lists what the plan needs; fedsock's
worker refuses a Welcome that requires what it does not know."""

from __future__ import annotations

import pytest

from fedsock.errors import PolicyRefused, RemoteProtocolError
from fedsock.protocol import FEATURES, Error, Hello, Plan, Welcome, required_features
from fedsock.testing.attacker import Hostile
from fedsock.worker.joining import accept_welcome
from fedsock.worker.policy import WorkerPolicy

INSTANCE = bytes(16)


def test_features_travel_in_hello_and_requires_in_welcome():
    h = Hello(name="w1", instance=INSTANCE, features=("dp_clip",))
    assert Hello.from_body(h.to_body()) == h
    plain = Hello(name="w1", instance=INSTANCE)
    assert "features" not in plain.to_body() and Hello.from_body(plain.to_body()).features is None
    w = Welcome(1, 0, Plan(3, 1, 1, dp_clip=1.0), requires=("dp_clip",), reconnect_secret=bytes(32))
    assert Welcome.from_body(w.to_body()) == w
    assert "requires" not in Welcome(1, 0, Plan(3, 1, 1), reconnect_secret=bytes(32)).to_body()
    for bad in ({**plain.to_body(), "features": "dp_clip"}, {**plain.to_body(), "features": [1]}):
        with pytest.raises(RemoteProtocolError) as info:
            Hello.from_body(bad)
        assert info.value.code == "bad_message"


def test_required_features_follow_the_plan():
    assert required_features(Plan(3, 1, 1)) == ()
    assert required_features(Plan(3, 1, 1, secure_agg=True, dp_clip=0.5)) == ("secure_agg", "dp_clip")
    assert set(FEATURES) == {"secure_agg", "dp_clip", "secagg_metrics"}  # the last one no plan requires


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[Error] = []
        self.closed = False

    def send_quietly(self, msg: Error) -> None:
        self.sent.append(msg)

    def close(self) -> None:
        self.closed = True


def test_fedsocks_worker_refuses_a_welcome_that_requires_what_it_does_not_implement():
    channel = FakeChannel()
    welcome = Welcome(1, 0, Plan(3, 1, 1), requires=("dp_clip", "x_later"), reconnect_secret=bytes(32))
    with pytest.raises(PolicyRefused, match="x_later, which this worker does not implement"):
        accept_welcome(channel, welcome, 0, WorkerPolicy(), 1)  # type: ignore[arg-type]
    assert [e.code for e in channel.sent] == ["unsupported_feature"] and channel.closed


def hostile_with(chief, features):
    h = Hostile(chief.address, chief.token)
    original = h.send

    def send(msg, arrays=()):
        if isinstance(msg, Hello):
            msg = Hello(name=msg.name, instance=msg.instance, features=features)
        original(msg, arrays)

    h.send = send  # type: ignore[method-assign]
    return h


@pytest.mark.integration
def test_a_dp_chief_refuses_a_worker_that_says_it_cannot_clip(chiefs):
    chief = chiefs("--rounds", "100", "--min-workers", "2", "--dp-clip", "1.0", "--progress", "plain")
    lacking = hostile_with(chief, ("secure_agg",))
    err = lacking.join("no-clip")
    assert isinstance(err, Error) and err.code == "unsupported_feature", err
    assert "requires dp_clip" in err.message
    able = hostile_with(chief, FEATURES)
    welcome = able.join("clips")
    assert isinstance(welcome, Welcome) and welcome.requires == ("dp_clip",)
    silent = Hostile(chief.address, chief.token)  # says nothing about its features: admitted, told in Welcome
    welcome = silent.join("older")
    assert isinstance(welcome, Welcome) and welcome.requires == ("dp_clip",)
    for h in (lacking, able, silent):
        h.close()
    assert "authentication failed" not in chief.output()
