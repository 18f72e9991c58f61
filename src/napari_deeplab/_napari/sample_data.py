"""napari sample data: a real CIHP photo (with or without its ground-truth parts)."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
from PIL import Image

from .parts_layer import PARTS_SUFFIX, parts_colormap, parts_features

_DATA = files("napari_deeplab") / "data"
SAMPLE_NAME = "CIHP 0005008"


def cihp_photo():
    """The photo of CIHP sample 0005008 (313 x 576 RGB)."""
    photo = np.array(Image.open(_DATA / "cihp_0005008.jpg").convert("RGB"))
    return [(photo, {"name": SAMPLE_NAME}, "image")]


def cihp_photo_with_parts():
    """The photo and its ground-truth parts from the CIHP dataset, as a parts Labels layer."""
    truth = np.array(Image.open(_DATA / "cihp_0005008_category_ids.png"))  # writable: editable
    return cihp_photo() + [
        (
            truth,
            {
                "name": SAMPLE_NAME + PARTS_SUFFIX + " (ground truth)",
                "colormap": parts_colormap(),
                "features": parts_features(),
            },
            "labels",
        )
    ]
