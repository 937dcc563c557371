"""``final.keras``: ``keras.models.load_model`` loads the chief's final model compiled, without a warning."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")


def load_recording_warnings(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.models.load_model(path)
    return model, [str(w.message) for w in caught]


def test_the_chief_s_final_keras_loads_compiled_and_without_warnings(tmp_path):
    from fedsock.chief import ChiefConfig
    from fedsock.chief.outputs import Outputs

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outputs = Outputs(ChiefConfig(model="fedsock.models:digits_mlp", state_dir=state))
    info = outputs.prepare_model()
    assert info is not None
    final = [w + 1.0 for w in info.weights]
    outputs.save_final(info.specs, final)
    model, caught = load_recording_warnings(state / "final.keras")
    assert caught == []
    for got, want in zip(model.get_weights(), final):
        np.testing.assert_array_equal(got, want)
    assert model.optimizer is not None  # compiled: fit and evaluate work at once
    x = np.random.default_rng(0).random((8, 64), np.float32)
    model.fit(x, np.arange(8) % 10, epochs=1, verbose=0)


def test_a_model_saved_as_keras_saves_it_would_warn(tmp_path):
    """What the test above guards against: the chief's model never trains, so its optimizer has no
    variables when saved plainly."""
    from fedsock.models import digits_mlp

    model = digits_mlp()
    model.save(tmp_path / "plain.keras")
    _, caught = load_recording_warnings(tmp_path / "plain.keras")
    assert any("optimizer" in m and "Skipping variable loading" in m for m in caught), caught
