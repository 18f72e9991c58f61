"""Cost of re-parsing people (``predict --per-person``) with the random-weight stand-in model.

    python benchmarks/reparse.py [--12mp-only]

Per photo of the CIHP samples: the plain run, the people proposed, and the per-person re-parse
(people of at least MIN_PIXELS); then one person's re-parse in a 12-megapixel photo (a 3000 x
4000 stand-in: the photo upscaled), which is one model call on a crop at the model's input.
"""

import time
from pathlib import Path

import numpy as np

from napari_deeplab.inference import resize_bilinear, segment
from napari_deeplab.model import build_model
from napari_deeplab.people import propose_people
from napari_deeplab.photos import read_photo
from napari_deeplab.reparse import crop_box, merge_crop, reparse_with_model

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "cihp_samples" / "Images"
MIN_PIXELS = 500


def main(samples: bool = True) -> None:
    model = build_model()
    segment(np.zeros((64, 64, 3), np.uint8), model)  # warm up
    for path in sorted(SAMPLES.iterdir()) if samples else []:
        _sample(path, model)
    _twelve_megapixels(model)


def _sample(path, model) -> None:
    photo = read_photo(path)
    start = time.perf_counter()
    plain, _ = segment(photo, model)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    _, count = reparse_with_model(photo, plain, model, MIN_PIXELS)
    extra_s = time.perf_counter() - start
    people = int(propose_people(plain).max())
    print(
        f"{path.stem} {photo.shape[1]}x{photo.shape[0]}: plain {plain_s:.2f} s; "
        f"{people} people proposed, {count} re-parsed in {extra_s:.2f} s "
        f"({extra_s / max(count, 1):.2f} s per person)"
    )


def _twelve_megapixels(model) -> None:
    photo = read_photo(SAMPLES / "0005008.jpg")
    big = resize_bilinear(photo.astype(np.float32), 4000, 3000).astype(np.uint8)
    labels = np.zeros(big.shape[:2], np.uint8)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        box = crop_box((1000, 2000, 1150, 2060), big.shape[:2])  # a person 150 px tall
        crop_labels, _ = segment(big[box], model)
        merge_crop(labels, crop_labels, box, np.zeros(labels.shape, bool))
        times.append(time.perf_counter() - start)
    print(
        f"12 MP photo, one person 150 px tall (crop {big[box].shape[0]} px): "
        f"{min(times):.2f} s (best of 3; crop, model at 512 x 512, upsample, merge)"
    )


if __name__ == "__main__":
    import sys

    main(samples="--12mp-only" not in sys.argv)
