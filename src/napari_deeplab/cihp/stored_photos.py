"""What a writer puts in ``Images/``, so that a loader that knows nothing of the id list (the
seed's Keras loader pairs ``sorted(glob("Images/*"))`` with ``sorted(glob("Category_ids/*"))``
and decodes both with ``tf.image.decode_png``) reads every pair right:

- a photo whose bytes are JPEG (RGB or grey) is kept byte for byte as ``<id>.jpg``, one whose
  bytes are PNG as ``<id>.png`` (whatever the source file's suffix);
- any other format (BMP, TIFF, WebP, a CMYK JPEG...) is decoded as the project decodes photos
  (:func:`napari_deeplab.photos.read_photo`: H x W x 3 uint8 RGB, the first and only frame)
  and stored as a lossless PNG ``<id>.png``, because ``decode_png``/``decode_image`` refuse
  BMP and TIFF and decode WebP to another shape;
- a write that gives no photo (a new mask for a stored sample) needs a stored photo of the
  mask's size (:func:`stored_photo_problem`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import photos
from .layout import DatasetError, photos_of

KEPT_FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png"}
"""Pillow's format names of the photos kept byte for byte, and the suffix each is stored under
(MPO: a camera's JPEG with a second picture appended, a JPEG to every decoder)."""

KEPT_JPEG_MODES = ("L", "RGB")
"""The JPEG colour modes kept as they are; a CMYK or YCCK JPEG is converted."""


@dataclass(frozen=True)
class StoredPhoto:
    """How a photo file goes into ``Images/``: ``shape`` (H, W); ``suffix`` ``.jpg`` or
    ``.png``; ``pixels`` None when the file's bytes are kept, else the decoded photo
    (H x W x 3 uint8) to write as PNG; ``converted_from`` the format converted (``"BMP"``)."""

    shape: tuple[int, int]
    suffix: str
    pixels: np.ndarray | None = None
    converted_from: str | None = None

    @property
    def note(self) -> str:
        """One line for a converted photo (empty when its bytes are kept)."""
        if self.converted_from is None:
            return ""
        return (
            f"photo converted losslessly from {self.converted_from} to PNG "
            "(Images/ holds JPEG or PNG only, the formats every CIHP loader decodes)"
        )


def save_converted_png(pixels: np.ndarray, path: Path) -> None:
    """Write a converted photo (H x W x 3 uint8) as a lossless PNG, zlib level 1: about 4
    times faster than Pillow's default level 6 on photos, for a slightly larger file."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def plan_stored_photo(path: str | os.PathLike) -> StoredPhoto:
    """How the photo file ``path`` is stored (:class:`StoredPhoto`); a photo to convert is
    decoded here, so that nothing is written for one that cannot be read. Raises
    :class:`~napari_deeplab.cihp.DatasetError` (a photo over the pixel limit, one that cannot be
    decoded: one line naming the file) or ``OSError`` (no such file)."""
    try:
        with photos.open_image(path) as photo:
            kind, mode, shape = photo.format, photo.mode, (photo.height, photo.width)
    except photos.PhotoTooLargeError:
        raise
    except OSError:
        if not Path(path).is_file():
            raise
        kind, mode, shape = None, None, None  # a format Pillow cannot open (some TIFFs)
    if shape is not None and kind in KEPT_FORMATS and (kind == "PNG" or mode in KEPT_JPEG_MODES):
        return StoredPhoto(shape, KEPT_FORMATS[kind])
    try:
        pixels = photos.read_photo(path)
    except photos.PhotoError as error:
        raise DatasetError(f"{path}: {error}") from None
    name = kind or Path(path).suffix.lstrip(".").upper() or "an unknown format"
    if kind == "JPEG":
        name = f"{mode} JPEG"
    return StoredPhoto(pixels.shape[:2], ".png", pixels, name)


def stored_photo(split_dir: Path, sample_id: str) -> Path | None:
    """The photo stored for ``sample_id`` in ``split_dir/Images`` (a photo suffix,
    :data:`~napari_deeplab.cihp.PHOTO_SUFFIXES`, any case), or None."""
    found = photos_of(split_dir / "Images", sample_id, first=True)
    return found[0] if found else None


def stored_photo_problem(split_dir: Path, sample_id: str, shape) -> str | None:
    """Why a mask of ``shape`` (H, W) cannot be written for ``sample_id`` without a photo, or
    None: the split must hold the sample's photo, at the mask's size. Otherwise a loader that
    pairs sorted ``Images/`` with sorted ``Category_ids/`` names would shift every later pair
    (no photo), or pair a photo and a mask of different sizes."""
    path = stored_photo(split_dir, sample_id)
    if path is None:
        return (
            f"sample {sample_id}: no photo given and none stored in {split_dir / 'Images'}; "
            "give its photo (image= or image_path=): a mask without a photo would shift "
            "every later pair of Images/ and Category_ids/"
        )
    try:
        width, height = photos.photo_size(path)
    except (OSError, ValueError) as error:
        return (
            f"sample {sample_id}: its stored photo {path} cannot be read ({error}); give its photo"
        )
    if (height, width) != tuple(shape):
        return (
            f"sample {sample_id}: mask is {shape[0]} x {shape[1]} but its stored photo "
            f"{path.name} is {height} x {width}; give the new photo with the mask "
            "(image= or image_path=), or a mask of the photo's size"
        )
    return None
