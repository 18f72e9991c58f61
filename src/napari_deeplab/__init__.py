"""napari-deeplab: pre-label human body parts with DeepLabV3+, correct them in napari, export to CIHP.

The engine (``cihp``, ``model``, ``inference``, ``prelabel``, ``cli``) runs without napari or Qt.
"""

__version__ = "0.1.0"

DEFAULT_MODEL = "keras-io/deeplabv3p-resnet50"
"""Hugging Face hub id of the seed checkpoint (CC0), the model used when none is given."""

PRECISIONS = ("float32", "bfloat16")
"""What a model computes in (:func:`~napari_deeplab.model.load_model`'s ``precision``), the first
the default. ``bfloat16`` is Keras's ``mixed_bfloat16``: variables stay float32, layers compute
in bfloat16, and the logits are cast to float32 before the last upsampling, so the loss, the
argmax and the softmax work in float32. Here, not in ``model``, so that the command line knows
its choices without loading Keras."""
