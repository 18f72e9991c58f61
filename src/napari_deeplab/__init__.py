"""napari-deeplab: pre-label human body parts with DeepLabV3+, correct them in napari, export to CIHP.

The engine (``cihp``, ``model``, ``inference``, ``prelabel``, ``cli``) runs without napari or Qt.
"""

__version__ = "0.1.0"

DEFAULT_MODEL = "keras-io/deeplabv3p-resnet50"
"""Hugging Face hub id of the seed checkpoint (CC0), the model used when none is given."""
