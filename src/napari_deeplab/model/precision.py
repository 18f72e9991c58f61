"""The precisions our models compute in: float32, or bfloat16 mixed precision."""

from __future__ import annotations

import keras

from .. import PRECISIONS

_FLOAT32_OUTPUT_LAYERS = ("output_upsample", "model_info")
"""Layers that keep float32 in a bfloat16 model (the logits' upsampling and the output)."""


def model_precision(model: keras.Model) -> str:
    """``"bfloat16"`` if ``model``'s convolutions compute in bfloat16, else ``"float32"``."""
    return "bfloat16" if model.get_layer("logits").compute_dtype == "bfloat16" else "float32"


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` itself if it already computes in ``precision`` (one of :data:`PRECISIONS`),
    else a copy of it that does, with the same weights (float32 variables in both).

    A bfloat16 copy has the ``mixed_bfloat16`` dtype policy on every layer except the
    logits' upsampling and the output (float32), so it still returns float32 logits.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if model_precision(model) == precision:
        return model
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in _FLOAT32_OUTPUT_LAYERS else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy
