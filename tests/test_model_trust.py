"""A worker need not trust its chief's model: Keras pinned, configs allow-listed and sized before anything is built."""

from __future__ import annotations

import base64
import copy
import json
import marshal

import pytest

from fedsock.errors import ConfigError
from fedsock.modelcheck import check_model_config
from fedsock.worker import modelguard

GIB = 1024**3
DTYPE = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
COMPILE = {"optimizer": {"module": "keras.optimizers", "class_name": "SGD", "config": {"learning_rate": 0.1},
                         "registered_name": None},
           "loss": "sparse_categorical_crossentropy", "loss_weights": None, "metrics": ["accuracy"],
           "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def dense(units: int, inputs: int | None, name: str = "d", **extra) -> dict:
    layer = {"module": "keras.layers", "class_name": "Dense",
             "config": {"name": name, "dtype": DTYPE, "units": units, "activation": "relu", "use_bias": True,
                        "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                               "config": {"seed": None}, "registered_name": None},
                        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                             "registered_name": None}, **extra},
             "registered_name": None}
    if inputs is not None:
        layer["build_config"] = {"input_shape": [None, inputs]}
    return layer


def sequential(*layers: dict, features: int = 4, compile_config: dict | None = None) -> dict:
    model = {"module": "keras", "class_name": "Sequential",
             "config": {"name": "m", "trainable": True, "dtype": DTYPE,
                        "layers": [{"module": "keras.layers", "class_name": "InputLayer",
                                    "config": {"batch_shape": [None, features], "dtype": "float32", "name": "x"},
                                    "registered_name": None}, *layers]},
             "registered_name": None, "build_config": {"input_shape": [None, features]}}
    if compile_config is not None:
        model["compile_config"] = compile_config
    return model


def payload(marker) -> str:
    """Base64 marshalled bytecode of a function that would create ``marker`` (what a Lambda carries)."""
    src = f"def f(x):\n    import os\n    os.system('touch {marker}')\n    return x\n"
    code = compile(src, "<chief>", "exec").co_consts[0]
    return base64.b64encode(marshal.dumps(code)).decode()


def shell(marker) -> str:
    return f"touch {marker}"


def hostile_shapes(marker) -> dict[str, tuple[dict, dict | None]]:
    """The 17 known safe-mode bypass shapes, as a hostile chief would send them: (model config, compile config)."""
    fn_os = {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"}
    lam_new = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
               "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {
                   "code": payload(marker), "defaults": None, "closure": None}}, "arguments": {}}}
    lam_old = {"class_name": "Lambda", "config": {"name": "l", "function": [payload(marker), None, None],
                                                  "function_type": "lambda", "module": "__main__",
                                                  "output_shape": None, "arguments": {}}}
    return {
        "lambda bytecode (Keras 3 __lambda__)": (sequential(lam_new), COMPILE),
        "lambda bytecode (Keras 2 function list)": (sequential(lam_old), COMPILE),
        "Lambda naming os.system (function_type function)": (sequential(
            {"class_name": "Lambda", "config": {"name": "l", "function": "system", "function_type": "function",
                                                "module": "os", "arguments": {"command": shell(marker)}}}),
            COMPILE),
        "activation as os.system via module (CVE-2025-1550)": (sequential(dense(3, 4, activation=fn_os)), COMPILE),
        "model class from module os": ({"module": "os", "class_name": "system",
                                        "config": {"command": shell(marker)}, "registered_name": None}, COMPILE),
        "layer class builtins.exec": (sequential({"module": "builtins", "class_name": "exec",
                                                  "config": {"source": f"open('{marker}', 'w')"}}), COMPILE),
        "keras.config.enable_unsafe_deserialization gadget (CVE-2025-9906)": (sequential(dense(
            3, 4, kernel_initializer={"module": "keras.config", "class_name": "function",
                                      "config": "enable_unsafe_deserialization", "registered_name": None})), COMPILE),
        "keras.utils.get_file gadget (CVE-2025-8747)": (sequential({
            "module": "keras.utils", "class_name": "get_file", "config": {
                "fname": str(marker), "origin": "http://127.0.0.1:9/x"}, "registered_name": None}), COMPILE),
        "TFSMLayer loading a SavedModel (CVE-2026-1462)": (sequential({
            "module": "keras.layers", "class_name": "TFSMLayer", "config": {
                "name": "t", "filepath": "/tmp/evil_saved_model", "call_endpoint": "serve"},
            "registered_name": None}), COMPILE),
        "StringLookup vocabulary file (CVE-2025-12058)": (sequential({
            "module": "keras.layers", "class_name": "StringLookup", "config": {
                "name": "s", "vocabulary": "/etc/passwd"}, "registered_name": None}), COMPILE),
        "IntegerLookup vocabulary file": (sequential({
            "module": "keras.layers", "class_name": "IntegerLookup", "config": {
                "name": "i", "vocabulary": "/etc/shadow"}, "registered_name": None}), COMPILE),
        "TextVectorization vocabulary file": (sequential({
            "module": "keras.layers", "class_name": "TextVectorization", "config": {
                "name": "tv", "vocabulary": "/root/.ssh/id_rsa"}, "registered_name": None}), COMPILE),
        "__typespec__ in a layer's inbound node": (sequential(dense(3, 4, input_spec={
            "class_name": "__typespec__", "spec_name": "TensorSpec", "module": "tensorflow",
            "config": {"shape": [None, 4], "dtype": "float32", "name": None}})), COMPILE),
        "compile config: optimizer os.system": (sequential(dense(3, 4)), dict(COMPILE, optimizer=fn_os)),
        "compile config: loss as __lambda__ bytecode": (sequential(dense(3, 4)), dict(COMPILE, loss={
            "class_name": "__lambda__", "config": {"code": payload(marker), "defaults": None, "closure": None}})),
        "compile config: metric subprocess.getoutput": (sequential(dense(3, 4)), dict(COMPILE, metrics=[
            {"module": "subprocess", "class_name": "function", "config": "getoutput", "registered_name": None}])),
        "compile config inside the model config: loss posix.system": (sequential(dense(3, 4), compile_config=dict(
            COMPILE, loss={"module": "posix", "class_name": "function", "config": "system",
                           "registered_name": None})), None),
    }


@pytest.fixture
def keras_must_not_run(monkeypatch):
    """Fail the test if Keras deserializes or compiles anything."""
    import keras

    def reached(*a, **k):
        pytest.fail("Keras deserialization was reached")

    monkeypatch.setattr(keras.saving, "deserialize_keras_object", reached)
    monkeypatch.setattr(keras.Model, "compile_from_config", reached)
    monkeypatch.setattr("fedsock.kerasutil.rebuild", reached)


def test_seventeen_known_bypass_shapes_are_refused_before_anything_runs(tmp_path, keras_must_not_run):
    marker = tmp_path / "pwned"
    shapes = hostile_shapes(marker)
    assert len(shapes) == 17
    for what, (model, compiled) in shapes.items():
        with pytest.raises(ConfigError, match=r"refusing the chief's model: (model|compile)\S*: ") as err:
            modelguard.build_chief_model(json.dumps(model), json.dumps(compiled) if compiled else None, GIB)
        assert "built-in" in str(err.value), (what, str(err.value))
        assert not marker.exists(), what


def test_refusal_names_the_offending_entry():
    model, compiled = hostile_shapes("/nonexistent/m")["activation as os.system via module (CVE-2025-1550)"]
    with pytest.raises(ConfigError, match=r"model\.config\.layers\[1\]\.config\.activation: class 'function' from "
                       r"module 'os' \(outside keras\)"):
        check_model_config(json.dumps(model), json.dumps(compiled), GIB)
    bad_string = sequential(dense(3, 4, activation="os.system"))
    with pytest.raises(ConfigError, match=r"activation: 'os.system' is not a built-in activation name"):
        check_model_config(json.dumps(bad_string), json.dumps(COMPILE), GIB)
    custom = sequential(dense(3, 4))
    custom["config"]["layers"][1]["registered_name"] = "evil>Dense"
    with pytest.raises(ConfigError, match=r"registered_name 'evil>Dense'"):
        check_model_config(json.dumps(custom), json.dumps(COMPILE), GIB)


def test_size_is_counted_from_the_config_and_bounded_before_building(keras_must_not_run):
    ok = sequential(dense(10, 4), dense(2, 10))
    assert check_model_config(json.dumps(ok), json.dumps(COMPILE), GIB) == 4 * (4 * 10 + 10 + 10 * 2 + 2)
    huge = sequential(dense(40_000, 4), dense(45_000, 40_000))  # < 1 KB of JSON, ~6.7 GiB of weights
    assert len(json.dumps(huge)) < 2000
    with pytest.raises(ConfigError, match=r"more than --max-model-bytes 1073741824 bytes .* by model\.config\."
                       r"layers\[2\]"):
        modelguard.build_chief_model(json.dumps(huge), json.dumps(COMPILE), GIB)
    embedding = sequential({"module": "keras.layers", "class_name": "Embedding", "registered_name": None,
                            "config": {"name": "e", "input_dim": 10**9, "output_dim": 64}})
    with pytest.raises(ConfigError, match="--max-model-bytes"):
        check_model_config(json.dumps(embedding), json.dumps(COMPILE), GIB)
    unbounded = sequential(dense(10, None))
    with pytest.raises(ConfigError, match=r"layers\[1\]: Dense layer without build_config input shape, so its "
                       "size cannot be bounded"):
        check_model_config(json.dumps(unbounded), json.dumps(COMPILE), GIB)
    unknown_dim = sequential(dense(10, 4))
    unknown_dim["config"]["layers"][1]["build_config"]["input_shape"] = [None, None]
    with pytest.raises(ConfigError, match="cannot be bounded"):
        check_model_config(json.dumps(unknown_dim), json.dumps(COMPILE), GIB)


def test_a_config_without_compile_settings_is_a_clear_error(keras_must_not_run):
    with pytest.raises(ConfigError, match=r"has no compile settings \(optimizer, loss\); the chief must send a "
                       "compiled model"):
        modelguard.build_chief_model(json.dumps(sequential(dense(3, 4))), None, GIB)
    with pytest.raises(ConfigError, match="not JSON"):
        check_model_config("{nope", None, GIB)
    with pytest.raises(ConfigError, match="nested too deeply"):
        check_model_config("[" * 100_000 + "]" * 100_000, None, GIB)
    deep = sequential(dense(3, 4, kernel_constraint=json.loads('{"a": ' * 150 + "1" + "}" * 150)))
    with pytest.raises(ConfigError, match=r"nested more than 100 levels deep"):
        check_model_config(json.dumps(deep), json.dumps(COMPILE), GIB)


def test_real_keras_models_pass_and_their_size_is_exact():
    import keras

    from fedsock import kerasutil
    from fedsock.models import digits_mlp

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.SeparableConv2D(5, 3, padding="same")(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Reshape((2 * 2, 5))(x)
    x = keras.layers.LSTM(6, return_sequences=True)(x)
    x = keras.layers.GRU(3)(x)
    out = keras.layers.Dense(2, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.01))(x)
    functional = keras.Model(inp, out)
    functional.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
                       loss=keras.losses.SparseCategoricalCrossentropy(),
                       metrics=[keras.metrics.SparseCategoricalAccuracy()])
    emb = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 8),
                            keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    emb.compile(optimizer="adam", loss="mse", metrics=["mae"])
    for model in (digits_mlp(), functional, emb):
        config, compiled, _, _ = kerasutil.describe(model)
        assert check_model_config(config, compiled, GIB) == 4 * model.count_params()
        rebuilt = modelguard.build_chief_model(config, compiled, GIB)
        assert rebuilt.count_params() == model.count_params()
    config, compiled, _, _ = kerasutil.describe(digits_mlp())
    with pytest.raises(ConfigError, match="--max-model-bytes 1000 "):
        modelguard.build_chief_model(config, compiled, 1000)


def test_the_chief_model_is_not_built_on_a_keras_with_known_bypasses(monkeypatch):
    monkeypatch.setattr("fedsock.kerasversion.metadata.version", lambda name: "3.8.0")
    with pytest.raises(ConfigError, match="Keras 3.8.0 has known safe-mode bypasses"):
        modelguard.build_chief_model(json.dumps(sequential(dense(3, 4))), json.dumps(COMPILE), GIB)


def test_hostile_shapes_fixture_is_not_mutated_by_the_check():
    model, compiled = hostile_shapes("/nonexistent/m")["TFSMLayer loading a SavedModel (CVE-2026-1462)"]
    before = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="TFSMLayer"):
        check_model_config(json.dumps(model), json.dumps(compiled), GIB)
    assert model == before


def test_layers_that_would_add_weights_the_count_misses_are_refused():
    lora = sequential(dense(8, 4, lora_rank=10**6))
    with pytest.raises(ConfigError, match=r"layers\[1\]\.config\.lora_rank: LoRA weights are not allow-listed"):
        check_model_config(json.dumps(lora), json.dumps(COMPILE), GIB)
    wide = sequential(dense(8, 4, dtype={"module": "keras", "class_name": "DTypePolicy",
                                         "config": {"name": "float64"}, "registered_name": None}))
    assert check_model_config(json.dumps(wide), json.dumps(COMPILE), GIB) == 8 * (4 * 8 + 8)
