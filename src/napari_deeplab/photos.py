"""The one photo decoder: every photo (``predict``, the review queue, ``evaluate``, ``finetune``,
napari's reader of our samples) becomes the same H x W x 3 uint8 RGB array.

Rules (docs/cli.md, "Photos"):

- The pixel limit (:func:`max_pixels`) is checked from the file's header, for every decoder,
  before a single pixel is decoded: Pillow's header, else tifffile's (TIFFs Pillow cannot open,
  such as float or 16-bit RGB ones). A file neither can read is refused, never handed to a
  decoder that would decode it whole first.
- Pixels as stored: no EXIF rotation. The masks of a sample are the photo's stored pixel grid
  (``predict`` copies the photo byte for byte into ``Images/``), and CIHP's own loader
  (``tf.image.decode_jpeg``) ignores EXIF too; rotating here would turn every mask of a rotated
  photo by 90 degrees against the photo its trainer sees.
- Colour: grey (1-bit, L, I;16), grey + alpha (LA), palette (P, PA), RGBA and CMYK are
  converted to RGB as Pillow's ``convert("RGB")`` does (CMYK JPEGs with Adobe's inverted
  APP14 are un-inverted by Pillow's decoder first; embedded ICC profiles are not applied, as
  for RGB photos); alpha is dropped, not composited.
- 16-bit (and other integer) samples are scaled to 8 bits by keeping the high byte, ``v >> 8``
  (as Pillow decodes 16-bit RGB, so grey and RGB, PNG and TIFF agree); floats in 0..1
  (or, when larger, 0..255) are scaled and clipped.
- Grey and RGB TIFFs are decoded by tifffile (exact for every sample layout, e.g. planar
  16-bit RGB, which Pillow garbles), other TIFFs by Pillow.
- One frame: multi-page TIFFs and animated GIFs are refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .cihp.layout import PHOTO_SUFFIXES, DatasetError

MAX_PIXELS_ENV = "NAPARI_DEEPLAB_MAX_PIXELS"
"""Environment variable that raises (or lowers) the largest photo accepted, in pixels."""

DEFAULT_MAX_PIXELS = 178_956_970
"""Default pixel limit: Pillow's own hard decompression-bomb limit (2 x 89,478,485), about
13,377 x 13,377 pixels."""

PHOTO_BYTES_PER_PIXEL = 10
"""Peak working memory of ``predict`` per pixel of an RGB photo, beyond the model (see README)."""

BAND_BYTES = 1 << 22
"""Bytes of RGB decoded per band of rows: the photo is converted band by band, so the peak is
the decoder's own copy plus the result (not two full-size temporaries)."""

SIXTEEN_TO_EIGHT_SHIFT = 8
"""A 16-bit sample v keeps its high byte, ``v >> 8``: what Pillow's decoders do with 16-bit
RGB PNGs and TIFFs, so that every 16-bit photo (grey, RGB, Pillow or tifffile) is scaled alike."""

SPLIT_ADVICE = "split multi-page files into single photos first"

_PILLOW_LIMIT = threading.RLock()  # open_image runs inside pillow_limit_lifted


class PhotoError(ValueError):
    """A photo cannot be decoded; the message is one line saying why (not naming the file:
    callers add the file or sample)."""


class PhotoTooLargeError(DatasetError):
    """A photo has more pixels than :func:`max_pixels` allows (a possible decompression bomb)."""


# --- the pixel limit ---------------------------------------------------------------------------


def max_pixels() -> int:
    """The largest photo accepted (width x height): ``$NAPARI_DEEPLAB_MAX_PIXELS`` or
    :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise DatasetError(
            f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a positive number of pixels"
        )
    return int(text)


def check_pixel_count(path, width: int, height: int) -> None:
    """Raise :class:`PhotoTooLargeError` naming ``path``, the limit and how
    to raise it when ``width x height`` exceeds :func:`max_pixels`."""
    limit = max_pixels()
    if width * height > limit:
        raise PhotoTooLargeError(
            f"{path}: {width} x {height} pixels is over the limit of {limit:,} pixels (a possible "
            f"decompression bomb); if the photo is genuine, set {MAX_PIXELS_ENV} to at least "
            f"{width * height} (it needs about {PHOTO_BYTES_PER_PIXEL * width * height // 1_000_000} MB)"
        )


def open_image(path) -> Image.Image:
    """``Image.open`` (header only) under this project's pixel limit instead of Pillow's:
    raises :class:`PhotoTooLargeError` for a photo over
    :func:`max_pixels`, ``OSError`` for one Pillow cannot open."""
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_pixel_count(path, image.width, image.height)
    except PhotoTooLargeError:
        image.close()
        raise
    return image


@contextlib.contextmanager
def pillow_limit_lifted(pixels: int):
    """Let Pillow decode a photo of ``pixels`` that was checked against :func:`max_pixels`
    already, without its own warning or error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if Image.MAX_IMAGE_PIXELS is None or pixels <= 2 * Image.MAX_IMAGE_PIXELS:
            yield
            return
        with _PILLOW_LIMIT:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = saved


# --- the header --------------------------------------------------------------------------------


def check_readable_file(path) -> None:
    """Raise :class:`PhotoError` for a path that is not a readable regular file (a FIFO would
    block the reader forever; a folder or device is not a photo). File objects pass."""
    if not isinstance(path, (str, os.PathLike)):
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PhotoError("no such file") from None
    except PermissionError:
        raise PhotoError(
            "permission denied: the file's folder cannot be read by this user"
        ) from None
    if stat.S_ISDIR(mode):
        raise PhotoError("a folder, not a photo file")
    if not stat.S_ISREG(mode):
        raise PhotoError("not a regular file (a FIFO, socket or device); give photo files")
    if not os.access(path, os.R_OK):
        raise PhotoError(
            "permission denied: this user cannot read the file (check its permissions)"
        )


def photo_size(path) -> tuple[int, int]:
    """(width, height) of a photo from its header alone, checked against the pixel limit.

    Raises :class:`PhotoTooLargeError` over :func:`max_pixels` and
    :class:`PhotoError` for a file neither Pillow nor tifffile can read the header of."""
    check_readable_file(path)
    try:
        with open_image(path) as image:
            return image.size
    except DatasetError:  # over the limit, or a bad limit
        raise
    except PermissionError:
        raise PhotoError("permission denied: this user cannot read the file") from None
    except (OSError, ValueError, SyntaxError):  # SyntaxError: some Pillow plugins' bad headers
        pass
    _rewind(path)
    shape, axes = _tiff_header(path)
    width, height = shape[axes.index("X")], shape[axes.index("Y")]
    check_pixel_count(path, width, height)
    return width, height


def _tiff_header(path) -> tuple[tuple[int, ...], str]:
    """(shape, axes) of the first series of a TIFF, read from its tags only (no pixel data)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shape, axes = tuple(tiff.series[0].shape), tiff.series[0].axes
    except Exception:  # tifffile raises many types on a file that is not a TIFF
        raise PhotoError(
            "cannot read this file as an image (corrupt, truncated or of an unknown format)"
        ) from None
    if "X" not in axes or "Y" not in axes:
        raise PhotoError(f"not a 2-D photo (TIFF axes {axes}, shape {shape})")
    return shape, axes


def _rewind(path) -> None:
    if hasattr(path, "seek"):
        path.seek(0)


# --- decoding ----------------------------------------------------------------------------------


def read_photo(path) -> np.ndarray:
    """Decode a photo by the module's rules into H x W x 3 uint8 RGB, as stored (no EXIF).

    ``path``: a file path or a binary file object (its ``str`` names it in messages). Raises
    :class:`PhotoTooLargeError` (a ``ValueError`` naming the file, the
    limit and how to raise it) before decoding a photo over :func:`max_pixels`, and
    :class:`PhotoError` (a ``ValueError``) with a one-line reason for anything else that cannot
    be read: no such file, not a regular file, permission denied, corrupt or truncated,
    multi-page, empty.
    """
    width, height = photo_size(path)
    if width * height == 0:
        raise PhotoError("the image is empty")
    _rewind(path)
    try:
        image = open_image(path)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError):
        _rewind(path)
        return _read_tiff(path)
    with image, pillow_limit_lifted(width * height):
        if image.format == "TIFF" and _tifffile_decodes(path):
            _rewind(path)
            return _read_tiff(path)
        frames = getattr(image, "n_frames", 1)  # only multi-frame formats have it
        if frames > 1:
            raise PhotoError(f"{frames} frames or pages in one file; {SPLIT_ADVICE}")
        try:
            image.load()
            return _pillow_to_rgb(image)
        except PermissionError:
            raise PhotoError("permission denied: this user cannot read the file") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise PhotoError(
                f"cannot decode this photo: it is truncated or corrupt ({_first_line(error)})"
            ) from None


def read_array(path) -> np.ndarray:
    """A mask (or any picture) as stored: ``np.array`` of Pillow's pixels (writable), no
    conversion; the pixel limit is checked first. For ``Category_ids``, ``Human_ids`` ...:
    H x W uint8."""
    with open_image(path) as image, pillow_limit_lifted(image.width * image.height):
        return np.array(image)  # np.array: writable, napari paints on these


def _pillow_to_rgb(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> H x W x 3 uint8 RGB, band by band of rows."""
    width, height = image.size
    rgb = np.empty((height, width, 3), np.uint8)
    band = max(1, BAND_BYTES // (3 * width))
    for top in range(0, height, band):
        bottom = min(top + band, height)
        rgb[top:bottom] = _band_to_rgb(image.crop((0, top, width, bottom)))
    return rgb


def _band_to_rgb(band: Image.Image) -> np.ndarray:
    """One band of a photo (any Pillow mode) -> h x w x 3 uint8 RGB."""
    if band.mode == "RGB":
        return np.asarray(band)
    if band.mode.startswith("I") or band.mode == "F":  # I;16*, I (32-bit), F: not 8-bit grey
        return samples_to_rgb(np.asarray(band))
    if band.mode == "RGBa":
        band = band.convert("RGBA")  # un-premultiply, then drop the alpha
    return np.asarray(band.convert("RGB"))


def samples_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Decoded samples (H x W, or H x W x C with C in 1..4: grey, grey + alpha, RGB, RGBA) of
    any numeric dtype -> H x W x 3 uint8 RGB (alpha dropped).

    uint8 as is; bool 0/255; uint16 and wider integers clipped to 0..65535, then ``v >> 8``;
    floats with a maximum of at most 1 scaled by 255, else taken as 0..255."""
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
        pixels = pixels[..., :-1]  # alpha
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or pixels.ndim == 3 and pixels.shape[-1] != 3:
        raise PhotoError(
            f"not a single 2-D photo (pixel array of shape {pixels.shape}); {SPLIT_ADVICE}"
        )
    if pixels.dtype == np.uint8:
        eight = pixels
    elif pixels.dtype == bool:
        eight = pixels.astype(np.uint8) * 255
    elif pixels.dtype.kind in "ui":
        eight = (np.clip(pixels, 0, 65535).astype(np.uint16) >> SIXTEEN_TO_EIGHT_SHIFT).astype(
            np.uint8
        )
    elif pixels.dtype.kind == "f":
        values = np.nan_to_num(pixels.astype(np.float32))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        eight = np.round(np.clip(values * scale, 0, 255)).astype(np.uint8)
    else:
        raise PhotoError(f"unsupported pixel type {pixels.dtype}")
    if eight.ndim == 2:
        eight = np.repeat(eight[..., None], 3, axis=-1)
    return np.ascontiguousarray(eight)


def _tifffile_decodes(path) -> bool:
    """Whether a TIFF is grey or RGB, which tifffile decodes exactly whatever its sample
    layout (Pillow garbles some, e.g. planar 16-bit RGB); CMYK, YCbCr and palette TIFFs are
    left to Pillow's colour conversion."""
    import tifffile

    _rewind(path)
    try:
        with tifffile.TiffFile(path) as tiff:
            photometric = tiff.pages.first.photometric
    except Exception:
        return False
    finally:
        _rewind(path)
    return photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)


def _read_tiff(path) -> np.ndarray:
    """A TIFF Pillow cannot open, decoded by tifffile (its size was checked from the header)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            if len(tiff.series) > 1:
                raise PhotoError(f"{len(tiff.series)} images in one file; {SPLIT_ADVICE}")
            series = tiff.series[0]
            pixels, axes = series.asarray(), series.axes
    except PhotoError:
        raise
    except Exception as error:
        raise PhotoError(
            f"cannot decode this photo: it is truncated or corrupt ({_first_line(error)})"
        ) from None
    if axes.replace("S", "") != "YX" or pixels.ndim != len(axes):
        raise PhotoError(
            f"not a single 2-D photo (TIFF axes {axes}, shape {pixels.shape}); {SPLIT_ADVICE}"
        )
    if "S" in axes and axes.index("S") == 0:  # planar: samples first
        pixels = np.moveaxis(pixels, 0, -1)
    return samples_to_rgb(pixels)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


# --- the folder lister -------------------------------------------------------------------------


def is_photo_name(name: str) -> bool:
    """Whether a file called ``name`` is taken as a photo from a folder: a suffix of
    :data:`~napari_deeplab.cihp.PHOTO_SUFFIXES` in any case, and not hidden (a writer's
    temporaries are)."""
    return not name.startswith(".") and Path(name).suffix.lower() in PHOTO_SUFFIXES


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """The photos of ``folder``, sorted by name: its regular files (or links to them) whose
    names pass :func:`is_photo_name`; not recursive. The one lister of a folder's photos
    (``predict``, the review queue, the Ray engine's local folders)."""
    return sorted(
        path for path in Path(folder).iterdir() if is_photo_name(path.name) and path.is_file()
    )
