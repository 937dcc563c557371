"""Keras at the edge: loading, describing and rebuilding models.

Only this module, ``fedsock.worker.keras`` and the chief's evaluator import
TensorFlow/Keras, and only when called.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import datacheck, quiet
from fedsock.errors import ConfigError
from fedsock.protocol import TensorSpec, specs_of


def import_keras() -> Any:
    """Import Keras, its TensorFlow start-up logging hidden (``fedsock.quiet``)."""
    quiet.import_tensorflow()
    import keras

    return keras


def load_model(spec: str) -> Any:
    """Load ``--model``: a ``.keras`` file or ``module:function`` returning a compiled model.

    Raises:
        ConfigError: the file/module/function does not exist or returns no model.
    """
    keras = import_keras()
    if spec.endswith(".keras"):
        if not Path(spec).is_file():
            raise ConfigError(f"model file {spec} does not exist")
        return keras.saving.load_model(spec, safe_mode=True)
    func = import_function(spec)
    model = func()
    if not isinstance(model, keras.Model):
        raise ConfigError(f"--model {spec!r} returned {type(model).__name__}, not a keras.Model")
    if getattr(model, "optimizer", None) is None:
        raise ConfigError(f"--model {spec!r} returned an uncompiled model; call model.compile(...)")
    return model


def import_function(spec: str, cwd: Path | None = None) -> Any:
    """The function named by ``module:function``, found the way ``python -m module`` finds it.

    A module (or package) in the current directory wins, as with ``python -m``:
    that directory is put first on ``sys.path`` (and stays there, so that the
    module's own imports of its neighbours work). Otherwise ``sys.path`` as it is.

    Raises:
        ConfigError: a malformed spec, a module that is nowhere, a module that
            fails to import (naming what it lacks), or no such function.
    """
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"--model {spec!r}: use a .keras file or module:function (e.g. mymodels:build)")
    here = str(Path.cwd() if cwd is None else cwd)
    top = module_name.split(".")[0]
    if importlib.machinery.PathFinder.find_spec(top, [here]) is not None:
        if here in sys.path:
            sys.path.remove(here)
        sys.path.insert(0, here)
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):  # the module itself is missing
            raise ConfigError(
                f"--model {spec!r}: no module {module_name!r} in the current directory ({here}) or on the "
                f"Python path; run from the folder that holds {top}.py, or add its folder to PYTHONPATH"
            ) from None
        raise ConfigError(f"--model {spec!r}: importing {module_name} failed: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"--model {spec!r}: importing {module_name} failed: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"--model {spec!r}: {module_name} ({getattr(module, '__file__', '?')}) has no "
                          f"function {func_name!r}; it has: {', '.join(names) or 'no functions'}")
    return func


def tensor_names(model: Any) -> list[str]:
    """Names of ``model.get_weights()`` tensors, e.g. ``hidden/kernel``."""
    return [getattr(v, "path", None) or v.name for v in model.weights]


def describe(model: Any) -> tuple[str, str | None, tuple[TensorSpec, ...], list[np.ndarray]]:
    """The model's JSON config, compile config (JSON), tensor specs and weights."""
    weights = model.get_weights()
    compile_cfg = model.get_compile_config() if model.optimizer is not None else None
    return (
        model.to_json(),
        json.dumps(compile_cfg) if compile_cfg else None,
        specs_of(weights, tensor_names(model)),
        weights,
    )


def rebuild(model_json: str, compile_json: str | None) -> Any:
    """Rebuild a model sent by the chief, in Keras safe mode (no lambdas, no arbitrary code).

    Raises:
        ConfigError: the config cannot be deserialized safely.
    """
    keras = import_keras()
    try:
        model = keras.saving.deserialize_keras_object(json.loads(model_json), safe_mode=True)
        if not isinstance(model, keras.Model):
            raise ValueError(f"config describes a {type(model).__name__}, not a Model")
        if compile_json:
            model.compile_from_config(json.loads(compile_json))
    except Exception as exc:  # Keras raises many types for bad configs
        raise ConfigError(f"cannot build the chief's model: {exc}") from None
    return model


def check_data_fits(model: Any, x: np.ndarray, y: np.ndarray, source: str = "the shard") -> None:
    """Check a shard against the model before any training.

    Args:
        source: the shard (file or directory), for the message.

    Raises:
        ConfigError: naming the expected and the actual shapes / classes, and
            labels that do not suit the model's loss (``datacheck.check_labels``).
    """
    expected = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ConfigError(
            f"data does not fit the model: model expects inputs of shape "
            f"{('N',) + tuple(expected)}, {source} has x of shape {x.shape}"
        )
    out = model.outputs[0].shape[-1] if model.outputs else None
    datacheck.check_labels(y, datacheck.loss_name(model), out, source)
    if out is not None and y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y):
        if y.min() < 0 or y.max() >= out:
            raise ConfigError(
                f"data does not fit the model: model has {out} output classes (0..{out - 1}), "
                f"{source} has labels {int(y.min())}..{int(y.max())}"
            )


def evaluate(model: Any, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Holdout metrics under their Keras names (``loss``, ``accuracy``, ...)."""
    model.set_weights(list(weights))
    res = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    return {k: float(v) for k, v in res.items()}


def save_model(model: Any, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file that ``keras.models.load_model`` loads without a warning.

    A compiled model whose optimizer never took a step (the chief's: it only
    evaluates) would be saved with fewer optimizer variables than loading
    builds, and ``load_model`` warns that it skips them. Building the
    optimizer first saves its full, fresh state: the file loads compiled,
    ready for ``fit`` or ``evaluate``.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    model.save(path)
