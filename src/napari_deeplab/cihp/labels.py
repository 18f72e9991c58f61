"""The CIHP label set: class names, palette, the person's left/right pairs and the swap table
a horizontal flip applies, the people picture's colours (the one home of these facts)."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "hat",
    "hair",
    "glove",
    "sunglasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "torso-skin",
    "scarf",
    "skirt",
    "face",
    "left-arm",
    "right-arm",
    "left-leg",
    "right-leg",
    "left-shoe",
    "right-shoe",
)
"""Class names in index order: ``CLASS_NAMES[i]`` is the name of label value ``i``."""

PALETTE: np.ndarray = np.array(
    [
        [0, 0, 0],
        [128, 0, 0],
        [255, 0, 0],
        [0, 85, 0],
        [170, 0, 51],
        [255, 85, 0],
        [0, 0, 85],
        [0, 119, 221],
        [85, 85, 0],
        [0, 85, 85],
        [85, 51, 0],
        [52, 86, 128],
        [0, 128, 0],
        [0, 0, 255],
        [51, 170, 221],
        [0, 255, 255],
        [85, 255, 170],
        [170, 255, 85],
        [255, 255, 0],
        [255, 170, 0],
    ],
    dtype=np.uint8,
)
"""20 x 3 uint8 RGB colour of each class, as in the official ``Categories`` pictures."""
PALETTE.setflags(write=False)

LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((14, 15), (16, 17), (18, 19))
"""(left, right) class ids of the person's own sides: a horizontal flip swaps them."""

NUM_CLASSES = len(CLASS_NAMES)

LEFT_RIGHT_SWAP: np.ndarray = np.arange(256, dtype=np.uint8)
"""256 uint8 lookup table: ``LEFT_RIGHT_SWAP[labels]`` swaps each (left, right) class pair of
:data:`LEFT_RIGHT_PAIRS` and keeps every other value (the labels of a horizontally flipped
photo); read-only."""
for left, right in LEFT_RIGHT_PAIRS:
    LEFT_RIGHT_SWAP[left], LEFT_RIGHT_SWAP[right] = right, left
LEFT_RIGHT_SWAP.setflags(write=False)
del left, right


def colorize(labels: np.ndarray) -> np.ndarray:
    """Return the palette picture of ``labels`` (H x W ints in 0..19) as H x W x 3 uint8."""
    return PALETTE[labels]


HUMAN_COLOURS = np.vstack([[0, 0, 0]] + [np.roll(PALETTE[1:], -4, axis=0)] * 14)[:256].astype(
    np.uint8
)
"""256 x 3 uint8: the colour of each person id in ``Humans/`` pictures (0 black)."""
HUMAN_COLOURS.setflags(write=False)


def colorize_humans(human_ids: np.ndarray) -> np.ndarray:
    """The picture of a person-instance map (H x W ints in 0..255): background black, each
    person a colour, as H x W x 3 uint8."""
    return HUMAN_COLOURS[np.asarray(human_ids)]
