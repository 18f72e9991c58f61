"""The PNG encoder of the label files: 8-bit grey masks and their palette pictures, written
band by band with fast zlib settings (the photos of ``Images/`` are encoded by Pillow)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GREY, RGB = 0, 2
"""PNG colour types: 8-bit grey (the masks) and 8-bit RGB (their pictures)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIT_DEPTH = 8
ZLIB_WINDOW_BITS, ZLIB_MEMORY_LEVEL = 15, 8
"""zlib's defaults (a 32 KB window, as PNG requires at most)."""

PNG_COMPRESSION = {GREY: (1, zlib.Z_RLE), RGB: (1, zlib.Z_DEFAULT_STRATEGY)}
"""zlib level and strategy of the label PNGs by colour type (0 gray, 2 RGB): fast, and runs of
one class still compress well (a CIHP-sized mask and its picture: 0.9-2.8 ms and 14-39 KB
together, where Pillow's defaults took 4.7-14.9 ms for 13-32 KB)."""


def save_label_png(ids: np.ndarray, path: Path) -> None:
    """Write ``ids`` (H x W uint8) as an 8-bit grayscale PNG (``Category_ids``, ``Human_ids``),
    band by band."""
    _write_png(path, ids, GREY, lambda band: band)


def save_rgb_png(ids: np.ndarray, colours: np.ndarray, path: Path) -> None:
    """Write the picture ``colours[ids]`` (H x W x 3 uint8) as an RGB PNG, band by band, so
    that no H x W x 3 array is made (a 169-megapixel mask would need 0.5 GB for it)."""
    import cv2

    table = np.zeros((256, 1, 3), np.uint8)
    table[: len(colours), 0] = colours[:256]

    def coloured(band):
        return cv2.LUT(cv2.merge([band, band, band]), table)

    _write_png(path, ids, RGB, coloured)


PNG_BAND_PIXELS = 1 << 20
"""Pixels colourised at once when writing a palette picture (bounds its working memory)."""


def _write_png(path: Path, ids: np.ndarray, colour_type: int, pixels) -> None:
    """Write an 8-bit PNG of colour type :data:`GREY` or :data:`RGB` of ``ids`` (H x W uint8),
    whose pixels ``pixels(band of rows of ids)`` gives as H' x W [x 3] uint8; rows unfiltered."""
    height, width = ids.shape
    channels = 3 if colour_type == RGB else 1
    band = max(1, PNG_BAND_PIXELS // max(width, 1))
    level, strategy = PNG_COMPRESSION[colour_type]
    compressor = zlib.compressobj(
        level, zlib.DEFLATED, ZLIB_WINDOW_BITS, ZLIB_MEMORY_LEVEL, strategy
    )
    with open(path, "xb") as file:
        file.write(PNG_SIGNATURE)
        header = struct.pack(">IIBBBBB", width, height, BIT_DEPTH, colour_type, 0, 0, 0)
        _png_chunk(file, b"IHDR", header)  # deflate, adaptive filtering, no interlace
        for first in range(0, height, band):
            values = pixels(np.ascontiguousarray(ids[first : first + band], np.uint8))
            rows = np.zeros((values.shape[0], 1 + channels * width), np.uint8)  # filter byte 0
            rows[:, 1:] = values.reshape(values.shape[0], -1)
            _png_chunk(file, b"IDAT", compressor.compress(rows.tobytes()))
        _png_chunk(file, b"IDAT", compressor.flush())
        _png_chunk(file, b"IEND", b"")


def _png_chunk(file, kind: bytes, data: bytes) -> None:
    if kind == b"IDAT" and not data:
        return
    file.write(struct.pack(">I", len(data)) + kind)
    file.write(data)
    file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def save_image_png(image: np.ndarray, path: Path) -> None:
    """Write a photo given as pixels (H x W [x 3|4] uint8) as a lossless PNG, with Pillow."""
    Image.fromarray(image).save(path, format="PNG")
