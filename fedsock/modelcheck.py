"""Check a chief's Keras model config before anything of it is deserialized.

A worker need not trust its chief: Keras' ``safe_mode`` has had many
bypasses, so the worker walks the JSON itself first and refuses

* every serialized object whose class is not an allow-listed Keras built-in
  (layers, initializers, regularizers, constraints, optimizers, schedules,
  losses, metrics) under the Keras module it lives in: no ``module`` outside
  ``keras``, no functions (``"class_name": "function"``, ``__lambda__``,
  marshalled bytecode, ``Lambda``), no ``TFSMLayer``, no lookup or
  ``TextVectorization`` layers (they read vocabulary files), no
  ``__typespec__``/``__tensor__``/``__numpy__`` objects, no custom
  ``registered_name``;
* string identifiers (``"activation": "relu"``, ``"loss": "mse"``) that are
  not built-in names;
* a model whose weights would exceed ``max_model_bytes``, counted from the
  config (each weighted layer's ``build_config`` input shape, which is what
  Keras builds it with) -- or whose size cannot be bounded that way;
* a model without compile settings.

Pure Python: no TensorFlow, no Keras import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from fedsock import limits
from fedsock.errors import ConfigError

_WEIGHTLESS = {
    "InputLayer", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "Flatten", "Reshape", "Permute", "RepeatVector", "Activation", "ReLU",
    "LeakyReLU", "ELU", "Softmax", "Identity", "Masking", "Rescaling", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "Dot", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
}
_WEIGHTED = {
    "Dense", "Embedding", "BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU",
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D", "SimpleRNN", "GRU", "LSTM",
}
_INITIALIZERS = {
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "GlorotNormal",
    "GlorotUniform", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform", "VarianceScaling", "Orthogonal",
    "Identity", "IdentityInitializer", "OrthogonalInitializer",
}
_OPTIMIZERS = {"SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSprop", "Nadam", "Ftrl", "Lion"}
_SCHEDULES = {"ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay", "InverseTimeDecay", "CosineDecay",
              "CosineDecayRestarts"}
_LOSSES = {
    "MeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError",
    "BinaryCrossentropy", "BinaryFocalCrossentropy", "CategoricalCrossentropy", "CategoricalFocalCrossentropy",
    "SparseCategoricalCrossentropy", "Hinge", "SquaredHinge", "CategoricalHinge", "Huber", "LogCosh",
    "KLDivergence", "Poisson", "CosineSimilarity",
}
_METRICS = {
    "Accuracy", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy", "TopKCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy", "Mean", "Sum", "MeanSquaredError", "MeanAbsoluteError",
    "RootMeanSquaredError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError", "AUC", "Precision",
    "Recall", "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy",
    "KLDivergence", "Poisson", "CosineSimilarity", "LogCoshError", "Hinge", "SquaredHinge", "CategoricalHinge",
}
#: class name -> the modules Keras serializes it under.
ALLOWED: dict[str, set[str]] = {}
for _names, _modules in (
    (_WEIGHTLESS | _WEIGHTED, {"keras.layers"}),
    (_INITIALIZERS, {"keras.initializers"}),
    ({"L1", "L2", "L1L2", "OrthogonalRegularizer"}, {"keras.regularizers"}),
    ({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}, {"keras.constraints"}),
    (_OPTIMIZERS, {"keras.optimizers"}),
    (_SCHEDULES, {"keras.optimizers.schedules"}),
    (_LOSSES, {"keras.losses"}),
    (_METRICS, {"keras.metrics"}),
):
    for _name in _names:
        ALLOWED.setdefault(_name, set()).update(_modules)
ALLOWED.update({"Sequential": {"keras", "keras.models", "keras.src.models.sequential"},
                "Functional": {"keras.src.models.functional"},
                "DTypePolicy": {"keras", "keras.dtype_policies"},
                "FloatDTypePolicy": {"keras", "keras.dtype_policies"}})
# Keras' own markers for graph structure (a symbolic tensor, a tuple): no module, plain data inside.
_STRUCTURAL = {"__keras_tensor__", "__tuple__"}

#: Built-in names a string identifier may take.
ACTIVATIONS = {
    "linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "log_softmax", "softplus", "softsign",
    "tanh", "elu", "selu", "gelu", "silu", "swish", "exponential", "leaky_relu", "mish", "hard_silu",
    "hard_swish", None,
}
_STRING_IDS = {
    "activation": ACTIVATIONS, "recurrent_activation": ACTIVATIONS,
    "initializer": {"zeros", "ones", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                    "lecun_uniform", "lecun_normal", "random_normal", "random_uniform", "truncated_normal",
                    "orthogonal", "identity", "variance_scaling", "constant", None},
    "regularizer": {"l1", "l2", "l1l2", None}, "constraint": {"max_norm", "min_max_norm", "non_neg",
                                                              "unit_norm", None},
    "optimizer": {n.lower() for n in _OPTIMIZERS},
    "loss": {"mse", "mae", "mape", "msle", "binary_crossentropy", "categorical_crossentropy",
             "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error", "hinge",
             "squared_hinge", "huber", "log_cosh", "kl_divergence", "poisson", "cosine_similarity", None},
    "metric": {"accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
               "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "mse", "mae", "mape", "msle",
               "mean_squared_error", "mean_absolute_error", "root_mean_squared_error", "auc", "precision",
               "recall", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
               "crossentropy", None},
}
_FORBIDDEN_KEYS = {"function", "function_type", "output_shape_type", "vocabulary", "filepath", "__lambda__"}


def _refuse(path: str, why: str) -> ConfigError:
    return ConfigError(f"refusing the chief's model: {path}: {why}; only Keras built-in layers, initializers, "
                       "regularizers, constraints, optimizers, losses and metrics are rebuilt (or train your "
                       "own model with worker.py --model)")


def _string_kind(key: str) -> str | None:
    for kind in ("activation", "recurrent_activation"):
        if key == kind:
            return kind
    for kind in ("initializer", "regularizer", "constraint"):
        if key.endswith(kind):
            return kind
    return {"optimizer": "optimizer", "loss": "loss", "metrics": "metric", "weighted_metrics": "metric"}.get(key)


def _check_object(obj: dict[str, Any], path: str) -> None:
    cls = obj.get("class_name")
    if not isinstance(cls, str):
        raise _refuse(path, f"class_name {cls!r} is not a name")
    module = obj.get("module")
    if cls in _STRUCTURAL:
        if module is not None or set(obj) - {"class_name", "config"}:
            raise _refuse(path, f"{cls} carries unexpected fields {sorted(set(obj) - {'class_name', 'config'})}")
        return
    if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
        raise _refuse(path, f"class {cls!r} from module {module!r} (outside keras)")
    if cls not in ALLOWED:
        raise _refuse(path, f"class {cls!r} (module {module!r}) is not allow-listed")
    if module not in ALLOWED[cls]:
        raise _refuse(path, f"class {cls!r} from module {module!r}, not the Keras built-in "
                      f"({' or '.join(sorted(ALLOWED[cls]))})")
    registered = obj.get("registered_name")
    if registered is not None and registered != cls:
        raise _refuse(path, f"registered_name {registered!r} (a custom object) for class {cls!r}")


MAX_DEPTH = limits.MAX_MODEL_CONFIG_DEPTH


def walk(node: Any, path: str = "$", depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Check every entry of ``node``; yield each serialized object as ``(path, obj)``.

    Raises:
        ConfigError: naming the first offending entry (its JSON path).
    """
    if depth > MAX_DEPTH:
        raise _refuse(path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]", depth + 1)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        _check_object(node, path)
        yield path, node
    elif "module" in node:
        raise _refuse(path, f"a module reference {node['module']!r} outside a Keras object")
    for key, value in node.items():
        where = f"{path}.{key}"
        if key in _FORBIDDEN_KEYS:
            raise _refuse(where, f"the key {key!r} (code, a function or a file to read)")
        kind = _string_kind(key)
        if kind is not None:
            names = value if key in ("metrics", "weighted_metrics") and isinstance(value, list) else [value]
            for i, v in enumerate(names):
                if (isinstance(v, str) or v is None) and v not in _STRING_IDS[kind]:
                    raise _refuse(where if len(names) == 1 else f"{where}[{i}]",
                                  f"{v!r} is not a built-in {kind} name")
        yield from walk(value, where, depth + 1)


def _dims(shape: Any, path: str, what: str) -> list[int | None]:
    if not isinstance(shape, list) or not all(d is None or (isinstance(d, int) and d >= 0) for d in shape):
        raise _refuse(path, f"{what} must be a list of sizes, got {shape!r}")
    return shape


def _known(d: int | None, path: str, what: str) -> int:
    if d is None:
        raise _refuse(path, f"the size of {what} is not known, so the model's size cannot be bounded")
    return d


def _int(cfg: dict[str, Any], key: str, path: str, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _refuse(f"{path}.config.{key}", f"expected a non-negative integer, got {v!r}")
    return v


def _kernel(cfg: dict[str, Any], path: str, rank: int) -> int:
    k = cfg.get("kernel_size")
    k = [k] * rank if isinstance(k, int) else k
    if not isinstance(k, list) or len(k) != rank or not all(isinstance(d, int) and d > 0 for d in k):
        raise _refuse(f"{path}.config.kernel_size", f"expected {rank} positive sizes, got {cfg.get('kernel_size')!r}")
    return math.prod(k)


def layer_parameters(cls: str, cfg: dict[str, Any], input_shape: list[int | None] | None, path: str) -> int:
    """Number of weights (trainable or not) a built-in layer creates for ``input_shape``.

    Raises:
        ConfigError: a weighted layer without a known input shape, or bad sizes.
    """
    if cls in _WEIGHTLESS:
        return 0
    if cfg.get("lora_rank"):
        raise _refuse(f"{path}.config.lora_rank", "LoRA weights are not allow-listed")
    if cls == "Embedding":
        return _int(cfg, "input_dim", path) * _int(cfg, "output_dim", path)
    if input_shape is None:
        raise _refuse(path, f"{cls} layer without build_config input shape, so its size cannot be bounded")
    first = cfg.get("data_format") == "channels_first"
    last = _known(input_shape[1] if first and len(input_shape) > 1 else input_shape[-1], path, "its input")
    bias = 1 if cfg.get("use_bias", True) else 0
    rank = len(input_shape) - 2
    if cls == "Dense":
        units = _int(cfg, "units", path)
        return last * units + bias * units
    if cls in ("BatchNormalization", "LayerNormalization", "GroupNormalization"):
        axes = cfg.get("axis", -1)
        axes = axes if isinstance(axes, list) else [axes]
        if not all(isinstance(a, int) and -len(input_shape) <= a < len(input_shape) for a in axes):
            raise _refuse(f"{path}.config.axis", f"bad axis {cfg.get('axis')!r}")
        size = math.prod(_known(input_shape[a], path, f"axis {a}") for a in axes)
        if cls != "BatchNormalization":
            return 2 * size
        return size * (8 if cfg.get("renorm") else 4)  # renorm keeps more statistics: an upper bound
    if cls == "PReLU":
        return math.prod(_known(d, path, "its input") for d in input_shape[1:])
    if cls in ("SimpleRNN", "GRU", "LSTM"):
        units = _int(cfg, "units", path)
        gates = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}[cls]
        biases = 2 if cls == "GRU" and cfg.get("reset_after", True) else 1
        return gates * (units * (last + units) + bias * biases * units)
    if rank < 1:
        raise _refuse(path, f"{cls} needs an input of rank >= 3, build_config says {input_shape!r}")
    k = _kernel(cfg, path, rank)
    if cls.startswith("DepthwiseConv"):
        mult = _int(cfg, "depth_multiplier", path, 1)
        return k * last * mult + bias * last * mult
    filters = _int(cfg, "filters", path)
    if cls.startswith("SeparableConv"):
        mult = _int(cfg, "depth_multiplier", path, 1)
        return k * last * mult + last * mult * filters + bias * filters
    groups = max(1, _int(cfg, "groups", path, 1))
    return k * (last // groups) * filters + bias * filters


def _bytes_per_weight(cfg: dict[str, Any]) -> int:
    dtype = cfg.get("dtype")
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if not isinstance(name, str):
        return 4
    return 16 if "128" in name else 8 if "64" in name else 4


def check_model_config(model_json: str, compile_json: str | None, max_model_bytes: int) -> int:
    """Refuse a chief's config unless it is safe to hand to Keras.

    Args:
        model_json: the chief's ``model.to_json()``.
        compile_json: the chief's compile config (JSON), if sent apart.
        max_model_bytes: the most the model's weights may take (``--max-model-bytes``).

    Returns:
        The size of the model's weights in bytes, as counted from the config.

    Raises:
        ConfigError: naming the offending entry, the size, or the missing compile settings.
    """
    try:
        model = json.loads(model_json)
        compiled = json.loads(compile_json) if compile_json else None
    except ValueError as exc:
        raise ConfigError(f"refusing the chief's model: its config is not JSON ({exc})") from None
    except RecursionError:
        raise ConfigError("refusing the chief's model: its config is nested too deeply") from None
    total = 0
    for path, obj in walk(model, "model"):
        cls = obj["class_name"]
        if obj.get("module") == "keras.layers":
            cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
            build = obj.get("build_config")
            shape = build.get("input_shape") if isinstance(build, dict) else None
            shape = None if shape is None else _dims(shape, f"{path}.build_config.input_shape", "input_shape")
            total += layer_parameters(cls, cfg, shape, path) * _bytes_per_weight(cfg)
            if total > max_model_bytes:
                raise ConfigError(f"refusing the chief's model: its weights would take more than "
                                  f"--max-model-bytes {max_model_bytes} bytes (at least {total} by {path})")
    if not isinstance(model, dict) or model.get("class_name") not in ("Sequential", "Functional"):
        raise ConfigError("refusing the chief's model: the config does not describe a Keras Sequential or "
                          "Functional model")
    if compiled is not None:
        for _ in walk(compiled, "compile"):
            pass
    elif not isinstance(model.get("compile_config"), dict):
        raise ConfigError("the chief's model has no compile settings (optimizer, loss); the chief must send "
                          "a compiled model (model.compile(...) before starting it with --model)")
    return total
