"""The seed's own data loader, as the Keras example "Multiclass semantic segmentation using
DeepLabV3+" pairs and decodes a CIHP split, to judge the datasets this project writes by it.

The example (``keras-io/examples/vision/deeplabv3_plus.py``)::

    train_images = sorted(glob(os.path.join(DATA_DIR, "Images/*")))[:NUM_TRAIN_IMAGES]
    train_masks = sorted(glob(os.path.join(DATA_DIR, "Category_ids/*")))[:NUM_TRAIN_IMAGES]

    def read_image(image_path, mask=False):
        image = tf_io.read_file(image_path)
        if mask:
            image = tf_image.decode_png(image, channels=1)
            image.set_shape([None, None, 1])
            image = tf_image.resize(images=image, size=[IMAGE_SIZE, IMAGE_SIZE])
        else:
            image = tf_image.decode_png(image, channels=3)
            image.set_shape([None, None, 3])
            image = tf_image.resize(images=image, size=[IMAGE_SIZE, IMAGE_SIZE])
        return image

    dataset = tf_data.Dataset.from_tensor_slices((image_list, mask_list))  # zip: i-th with i-th

:func:`read_image` is that function run eagerly, keeping the decoded H x W (before the
resize hides it). Run as a script (``python -m tests.seed_loader SPLIT_DIR``) it prints the
problems of a split as JSON, for tests whose process must not load TensorFlow (napari's).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from glob import glob

IMAGE_SIZE = 512


@dataclass
class Pair:
    """One (photo, mask) pair as the seed's loader zips them: the files, the H x W each
    decodes to (None and ``error`` when ``tf.image.decode_png`` or ``set_shape`` refuses it)."""

    image_path: str
    mask_path: str
    image_shape: tuple[int, int] | None
    mask_shape: tuple[int, int] | None
    error: str = ""

    @property
    def ids(self) -> tuple[str, str]:
        """The two files' stems (``Images/a.b.jpg`` -> ``a.b``)."""
        return tuple(os.path.splitext(os.path.basename(p))[0] for p in self.paths)

    @property
    def paths(self) -> tuple[str, str]:
        return self.image_path, self.mask_path


def read_image(image_path: str, mask: bool = False) -> tuple[int, int]:
    """The example's ``read_image`` run eagerly; returns the decoded H x W (the resized
    tensor is computed, as the example does, and dropped). Raises what TensorFlow raises."""
    import tensorflow as tf

    image = tf.io.read_file(image_path)
    channels = 1 if mask else 3
    image = tf.image.decode_png(image, channels=channels)
    image.set_shape([None, None, channels])  # an eager tensor of another rank raises here
    decoded = tuple(int(n) for n in image.shape[:2])
    tf.image.resize(images=image, size=[IMAGE_SIZE, IMAGE_SIZE])
    return decoded


def seed_pairs(split_dir: str | os.PathLike) -> tuple[list[str], list[str], list[Pair]]:
    """(sorted photos, sorted masks, their pairs as the example zips them) of ``split_dir``."""
    train_images = sorted(glob(os.path.join(split_dir, "Images/*")))
    train_masks = sorted(glob(os.path.join(split_dir, "Category_ids/*")))
    pairs = []
    for image_path, mask_path in zip(train_images, train_masks, strict=False):  # as the example
        shapes, errors = [], []
        for path, mask in ((image_path, False), (mask_path, True)):
            try:
                shapes.append(read_image(path, mask=mask))
            except Exception as error:  # noqa: BLE001 - whatever TensorFlow refuses with
                shapes.append(None)
                errors.append(f"{os.path.basename(path)}: {type(error).__name__}")
        pairs.append(Pair(image_path, mask_path, *shapes, "; ".join(errors)))
    return train_images, train_masks, pairs


def pairing_problems(split_dir: str | os.PathLike, ids: list[str]) -> list[str]:
    """One line per way the seed's loader misreads ``split_dir`` whose id list is ``ids``:
    photo and mask counts that differ from the id list, and every pair whose two files are
    not the i-th id of the list, that does not decode, or whose photo and mask differ in
    H x W. Empty: every pair is read right."""
    images, masks, pairs = seed_pairs(split_dir)
    problems = []
    if not (len(images) == len(masks) == len(ids)):
        problems.append(f"{len(images)} photos, {len(masks)} masks, {len(ids)} listed ids")
    for position, pair in enumerate(pairs):
        expected = ids[position] if position < len(ids) else None
        if pair.ids != (expected, expected):
            problems.append(f"pair {position}: {pair.ids} for the listed id {expected!r}")
        if pair.error:
            problems.append(f"pair {position}: cannot decode {pair.error}")
        elif pair.image_shape != pair.mask_shape:
            problems.append(
                f"pair {position} {pair.ids}: photo {pair.image_shape} but mask {pair.mask_shape}"
            )
    return problems


if __name__ == "__main__":
    split = sys.argv[1]
    with open(sys.argv[2], encoding="utf-8") as id_list:
        listed = [line for line in id_list.read().split("\n") if line]
    print(json.dumps(pairing_problems(split, listed)))
