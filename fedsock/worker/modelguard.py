"""Which Keras model a worker trains: its own ``--model``, or the chief's config once it passed the checks.

With ``--model`` the worker trains its own model and never builds the
chief's config; only the tensor signature (count, shapes, dtypes in order)
must match the chief's Welcome. Without it, the chief's config is built only
after ``fedsock.modelcheck`` has accepted it and the installed Keras has no
known safe-mode bypass. Imports Keras (through ``fedsock.kerasutil``) only
when a model is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.kerasversion import check_keras_version
from fedsock.modelcheck import check_model_config
from fedsock.protocol import TensorSpec, check_signature, specs_of

log = logging.getLogger("fedsock.worker")


def build_chief_model(model_json: str, compile_json: str | None, max_model_bytes: int) -> Any:
    """Build the chief's model if every class in it is an allow-listed Keras built-in and it fits.

    Raises:
        ConfigError: an old Keras, an offending config entry (named), a model
            larger than ``max_model_bytes`` or without compile settings.
    """
    check_keras_version()
    nbytes = check_model_config(model_json, compile_json, max_model_bytes)
    from fedsock import kerasutil

    model = kerasutil.rebuild(model_json, compile_json)
    log.info("built the chief's model (%d bytes of weights, every class a Keras built-in)", nbytes)
    return model


def check_own_model(model: Any, chief: Sequence[TensorSpec], spec: str) -> None:
    """Check that the worker's own model has the chief's tensor signature.

    Raises:
        ConfigError: naming the first tensor that differs.
    """
    if not chief:
        return  # the chief has no model yet: this worker's weights may become the first one
    from fedsock import kerasutil

    try:
        check_signature(chief, specs_of(model.get_weights(), kerasutil.tensor_names(model)))
    except RemoteProtocolError as exc:
        raise ConfigError(
            f"--model {spec} does not match the chief's model ({exc}); train a model with the same "
            "tensors (count, shapes and dtypes, in order) or leave out --model to use the chief's"
        ) from None


def choose_model(model_config: str | None, compile_config: str | None, chief: Sequence[TensorSpec],
                 own: str | None, max_model_bytes: int) -> Any:
    """The model to train: ``own`` (``--model``) if given, else the chief's config.

    Args:
        model_config, compile_config: what the chief's Welcome carries (None: no model).
        chief: the Welcome's tensor specs.
        own: ``--model`` (``.keras`` file or ``module:function``), or None.
        max_model_bytes: ``--max-model-bytes``.

    Raises:
        ConfigError: with a message to act on.
    """
    check_keras_version()
    from fedsock import kerasutil

    if own is not None:
        model = kerasutil.load_model(own)
        check_own_model(model, chief, own)
        log.info("training this worker's own model %s (%s); the chief's config is not built",
                 own, ", ".join(layer.name for layer in model.layers))
        return model
    if model_config is not None:
        return build_chief_model(model_config, compile_config, max_model_bytes)
    raise ConfigError("the chief provides no model (it runs without --model): pass --model "
                      "module:function or a .keras file")
