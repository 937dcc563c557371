"""Workers show their local progress the Keras way: a progress bar per round."""

from __future__ import annotations

import numpy as np

from fedsock.protocol import Plan


class StubClient:
    """What FederatedCallback needs of a fedsock.Client, recording the syncs."""

    def __init__(self) -> None:
        self.plan = Plan(rounds=2, sync_every=3, batch_size=4)
        self.round = 0
        self.finished = False
        self.synced: list[int] = []
        self.given: list[list] = []  # every model handed out, in order
        self.reused: list[list | None] = []  # what each sync was handed back

    def join(self, weights):
        self.given.append(list(weights))
        return self.given[-1]

    def sync(self, weights, num_examples, metrics=None, *, reuse=None):
        self.synced.append(num_examples)
        self.reused.append(reuse)
        self.round += 1
        self.finished = self.round >= self.plan.rounds
        self.given.append(list(weights))
        return self.given[-1]


def test_callback_shows_a_keras_progress_bar_per_round(capsys):
    import keras

    from fedsock.worker.keras import FederatedCallback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((24, 2), np.float32), np.zeros((24, 1), np.float32)
    client = StubClient()
    cb = FederatedCallback(client, num_examples=len(x), progress=True)  # type: ignore[arg-type]
    model.fit(x, y, batch_size=4, epochs=50, callbacks=[cb], verbose=0)
    out = capsys.readouterr().out
    assert client.synced == [12, 12] and client.finished
    # each sync hands back the model received before it (already copied into the Keras model)
    assert len(client.reused) == 2 and all(r is g for r, g in zip(client.reused, client.given))
    assert out.index("round 1/2") < out.index("round 2/2")
    assert out.count("3/3") >= 2 and "loss" in out  # a finished bar per round, with the batch loss


def test_no_bar_without_progress(capsys):
    import keras

    from fedsock.worker.keras import FederatedCallback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    client = StubClient()
    model.fit(np.ones((24, 2)), np.zeros((24, 1)), batch_size=4, epochs=50,
              callbacks=[FederatedCallback(client)], verbose=0)  # type: ignore[arg-type]
    assert client.finished and "round 1/2" not in capsys.readouterr().out
