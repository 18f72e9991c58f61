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


def _bit_shuffle_colours(count: int) -> np.ndarray:
    """``count`` x 3 uint8: the PASCAL VOC colour map (the bits of each index spread over the
    high bits of R, G and B), which keeps neighbouring indices far apart in colour."""
    colours = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = r, g, b
    return colours


INSTANCE_COLOURS = _bit_shuffle_colours(256)
"""256 x 3 uint8: the colour of each part-instance value in ``Instances/`` pictures (0 black):
the PASCAL VOC colour map, so the instances of one picture are told apart."""
INSTANCE_COLOURS.setflags(write=False)
