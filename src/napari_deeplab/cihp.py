"""The CIHP label set (class names, palette, left/right pairs: the one home of these facts)
and the CIHP dataset layout on disk, with the one commit protocol every writer uses."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

CLASS_NAMES: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat",
    "socks", "pants", "torso-skin", "scarf", "skirt", "face", "left-arm", "right-arm",
    "left-leg", "right-leg", "left-shoe", "right-shoe",
)
"""Class names in index order: ``CLASS_NAMES[i]`` is the name of label value ``i``."""

PALETTE: np.ndarray = np.array([
    [0, 0, 0], [128, 0, 0], [255, 0, 0], [0, 85, 0], [170, 0, 51], [255, 85, 0], [0, 0, 85],
    [0, 119, 221], [85, 85, 0], [0, 85, 85], [85, 51, 0], [52, 86, 128], [0, 128, 0],
    [0, 0, 255], [51, 170, 221], [0, 255, 255], [85, 255, 170], [170, 255, 85],
    [255, 255, 0], [255, 170, 0],
], dtype=np.uint8)
"""20 x 3 uint8 RGB colour of each class, as in the official ``Categories`` pictures."""
PALETTE.setflags(write=False)

LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((14, 15), (16, 17), (18, 19))
"""(left, right) class ids of the person's own sides: a horizontal flip swaps them."""

NUM_CLASSES = len(CLASS_NAMES)

SPLIT_ID_FILES = {"Training": "train_id.txt", "Validation": "val_id.txt", "Testing": "test_id.txt"}
"""The id list of each split of the official layout."""


def colorize(labels: np.ndarray) -> np.ndarray:
    """Return the palette picture of ``labels`` (H x W ints in 0..19) as H x W x 3 uint8."""
    return PALETTE[labels]


# --- the dataset layout ------------------------------------------------------------------------

class DatasetError(ValueError):
    """A sample or dataset request that cannot be honoured; nothing was written."""


class SampleExistsError(DatasetError):
    """The sample is already committed (its id is in the split's id list) and overwrite was
    not asked for; decided under the split's lock, at commit time."""


class PhotoTooLargeError(DatasetError):
    """A photo has more pixels than :func:`max_pixels` allows (a possible decompression bomb)."""


SAMPLE_FOLDERS = ("Images", "Category_ids", "Categories", "Human_ids", "Humans")
"""The folders of a split that hold a sample's files, one file each."""

MAX_ID_BYTES = 120
"""Longest sample id (UTF-8 bytes): its temporary file names must stay under NAME_MAX (255)."""

MAX_SUFFIX_LENGTH = 12
"""Longest photo suffix (``.jpeg``, ``.tiff``...) accepted in ``Images/``."""

_WINDOWS_FORBIDDEN = frozenset('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                               *(f"LPT{i}" for i in range(1, 10))])


def check_split(split: str) -> str:
    """Return ``split`` if it is one of the official splits, else raise :class:`DatasetError`."""
    if split not in SPLIT_ID_FILES:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLIT_ID_FILES)}")
    return split


def check_sample_id(sample_id: str) -> str:
    """Return ``sample_id`` if it can name the files of a sample on every system, else raise
    :class:`DatasetError` saying why. The one id rule of the project (writers, readers, the
    review queue, ``predict``): printable (no line break or control character of any kind),
    no leading dot, no surrounding spaces, no trailing dot, no path separator nor any character
    Windows forbids in file names (``<>:"/\\|?*``), not a Windows device name (``CON``, ``NUL``,
    ``COM1``..., with or without an extension) and at most :data:`MAX_ID_BYTES` UTF-8 bytes."""
    problem = _sample_id_problem(sample_id)
    if problem:
        raise DatasetError(f"invalid sample id {sample_id!r}: {problem}; rename the photo "
                           "(a sample's id is its file stem)")
    return sample_id


def _sample_id_problem(sample_id) -> str | None:
    if not isinstance(sample_id, str) or not sample_id:
        return "it is empty"
    if not sample_id.isprintable():
        return "it contains a line break, tab or other unprintable character"
    if sample_id.startswith("."):
        return "it starts with a dot (a hidden file)"
    if sample_id != sample_id.strip() or sample_id.endswith("."):
        return "it starts or ends with a space, or ends with a dot"
    forbidden = sorted(set(sample_id) & _WINDOWS_FORBIDDEN)
    if forbidden:
        return f"it contains {''.join(forbidden)!r} (path separators or characters Windows forbids)"
    if sample_id.split(".")[0].rstrip().upper() in _WINDOWS_RESERVED:
        return "it is a device name that Windows reserves"
    if len(sample_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"it is longer than {MAX_ID_BYTES} bytes"
    return None


def id_list_path(root: str | os.PathLike, split: str) -> Path:
    """``<root>/<split>/<split's id file>``, e.g. ``root/Training/train_id.txt``."""
    return Path(root) / check_split(split) / SPLIT_ID_FILES[split]


def split_folder(root: str | os.PathLike, split: str | None) -> Path:
    """``<root>/<split>``, or ``root`` itself when ``split`` is None (a split folder, or a
    folder laid out like one, such as ``tests/data/cihp_samples``)."""
    return Path(root) if split is None else Path(root) / check_split(split)


def sample_paths(root: str | os.PathLike, sample_id: str, split: str | None = "Training",
                 image_suffix: str = ".png") -> dict[str, Path]:
    """Where each file of a sample lives: keys ``Images``, ``Category_ids``, ``Categories``,
    ``Human_ids`` and ``Humans``."""
    base = split_folder(root, split)
    sample_id = check_sample_id(sample_id)
    paths = {"Images": base / "Images" / f"{sample_id}{image_suffix}"}
    for folder in SAMPLE_FOLDERS[1:]:
        paths[folder] = base / folder / f"{sample_id}.png"
    return paths


# --- what "a sample exists" means ----------------------------------------------------------------
#
# A sample exists when its id is in its split's id list: the id list is the commit record, and
# it is only changed under the split's lock (see "the commit protocol" below). Files of an
# unlisted id are leftovers of an unfinished write; the next write of that id replaces them.
# A folder without any id list (an official download, a folder laid out like one split) lists
# the stems of its Category_ids masks instead; the first commit into such a split writes the
# id list with those stems, so nothing that was visible disappears.

def read_id_list(root: str | os.PathLike, split: str) -> list[str]:
    """The ids listed for ``split`` (empty when the list does not exist), in file order."""
    return list_samples(root, split) if id_list_path(root, split).exists() else []


def list_samples(root: str | os.PathLike, split: str | None = "Training") -> list[str]:
    """The split's committed sample ids: its id list, or (for a folder without one, such as a
    download of part of the dataset) the stems of its ``Category_ids`` masks, sorted.

    An interrupted commit found on the way (a crashed writer) is completed first."""
    base = split_folder(root, split)
    with _reading(base):
        return _committed_ids(base, split)


def _committed_ids(base: Path, split: str | None) -> list[str]:
    names = [SPLIT_ID_FILES[split]] if split else list(SPLIT_ID_FILES.values())
    for name in names:
        if (base / name).exists():
            return _read_ids(base / name)
    return _mask_stems(base)


def _mask_stems(base: Path) -> list[str]:
    folder = base / "Category_ids"
    if not folder.is_dir():
        return []
    stems = (entry.name[:-4] for entry in os.scandir(folder) if entry.name.endswith(".png"))
    return sorted(stem for stem in stems if _sample_id_problem(stem) is None)


def _read_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: the id list is not UTF-8 text; repair or remove it") from None
    # split on "\n" only: str.splitlines would also split at \x0c, \x85, U+2028...
    return [line.strip() for line in text.split("\n") if line.strip()]


def sample_exists(root: str | os.PathLike, sample_id: str, split: str = "Training",
                  listed_ids: set[str] | None = None) -> bool:
    """Whether the split has committed this sample (its id is listed, see :func:`list_samples`).

    ``listed_ids``: the split's ids when the caller has read them already (many lookups). A
    writer decides again under the split's lock when it commits (:func:`write_sample`).
    """
    if listed_ids is None:
        listed_ids = set(list_samples(root, split))
    return sample_id in listed_ids


def find_image(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Path:
    """The photo of a sample, whatever its format; raises ``FileNotFoundError``."""
    folder = split_folder(root, split) / "Images"
    found = _photos_of(folder, check_sample_id(sample_id))
    if not found:
        raise FileNotFoundError(f"no photo for sample {sample_id} in {folder}")
    return found[0]


def _photos_of(folder: Path, sample_id: str) -> list[Path]:
    """``folder/<sample_id>.<suffix>`` files, sorted (``a.b.jpg`` is not a photo of ``a``)."""
    if not folder.is_dir():
        return []
    prefix = sample_id + "."
    return sorted(folder / entry.name for entry in os.scandir(folder)
                  if entry.name.startswith(prefix) and "." not in entry.name[len(prefix):]
                  and entry.name != prefix)


# --- reading -------------------------------------------------------------------------------------

MAX_PIXELS_ENV = "NAPARI_DEEPLAB_MAX_PIXELS"
"""Environment variable that raises (or lowers) the largest photo accepted, in pixels."""

DEFAULT_MAX_PIXELS = 178_956_970
"""Default pixel limit: Pillow's own hard decompression-bomb limit (2 x 89,478,485), about
13,377 x 13,377 pixels."""

# The decoding itself lives in photos.py (the one photo decoder); these names stay for the
# callers of cihp. photos imports this module, so it is imported here when first needed.

def max_pixels() -> int:
    """The largest photo accepted: :func:`napari_deeplab.photos.max_pixels`."""
    from . import photos

    return photos.max_pixels()


def check_pixel_count(path: str | os.PathLike, width: int, height: int) -> None:
    """:func:`napari_deeplab.photos.check_pixel_count`."""
    from . import photos

    photos.check_pixel_count(path, width, height)


PHOTO_BYTES_PER_PIXEL = 10
"""Peak working memory of ``predict`` per pixel of an RGB photo, beyond the model (see README)."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """:func:`napari_deeplab.photos.open_image`: the header, under this project's pixel limit."""
    from . import photos

    return photos.open_image(path)


def pillow_limit_lifted(pixels: int):
    """:func:`napari_deeplab.photos.pillow_limit_lifted`."""
    from . import photos

    return photos.pillow_limit_lifted(pixels)


@dataclass
class Sample:
    """One sample read back: ``image`` H x W x 3 uint8 RGB (as
    :func:`napari_deeplab.photos.read_photo` decodes it), ``category_ids`` H x W uint8 (None
    for an unlabelled Testing photo), ``human_ids`` H x W uint8 or None, ``image_path``."""

    sample_id: str
    image: np.ndarray
    category_ids: np.ndarray | None
    human_ids: np.ndarray | None
    image_path: Path


def read_sample(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Sample:
    """Read a sample of the official layout (or of ours) back into arrays, all files from one
    commit: under the split's lock when the split has one (ours), after completing any
    interrupted commit. Photos over :func:`max_pixels` raise :class:`PhotoTooLargeError`."""
    paths = sample_paths(root, sample_id, split)
    with _reading(split_folder(root, split)):
        image_path = find_image(root, sample_id, split)
        image = _read_photo(image_path)

        def optional(key):
            return _read_array(paths[key]) if paths[key].exists() else None

        return Sample(sample_id, image, optional("Category_ids"), optional("Human_ids"), image_path)


def _read_photo(path: Path) -> np.ndarray:
    """The photo as :func:`napari_deeplab.photos.read_photo` decodes it (H x W x 3 uint8 RGB),
    writable; its errors name the file."""
    from . import photos

    try:
        return photos.read_photo(path)
    except photos.PhotoError as error:
        raise photos.PhotoError(f"{path}: {error}") from None


def _read_array(path: Path) -> np.ndarray:
    """A mask as stored (:func:`napari_deeplab.photos.read_array`)."""
    from . import photos

    return photos.read_array(path)


# --- writing -------------------------------------------------------------------------------------

def write_sample(root: str | os.PathLike, sample_id: str, category_ids: np.ndarray, *,
                 split: str = "Training", image: np.ndarray | None = None,
                 image_path: str | os.PathLike | None = None, human_ids: np.ndarray | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write one sample into the CIHP layout under ``root`` and list its id; return its paths.

    ``category_ids``: H x W integers in 0..19. ``image_path`` is copied byte for byte into
    ``Images/`` (its suffix kept); else ``image`` (H x W [x 3|4] uint8) is written as a
    lossless PNG. ``human_ids`` (H x W integers, 0 background, 1..255 people) adds
    ``Human_ids/`` and its picture ``Humans/``.

    Everything is checked before anything is written, then the sample is committed with the
    dataset's commit protocol (:func:`stage_sample`, :func:`commit_samples`): all or nothing,
    even across a crash, and safe against concurrent writers. Whether the sample exists is
    decided at commit time under the split's lock: :class:`SampleExistsError` unless
    ``overwrite``. An overwrite replaces the sample's files and removes its photo of another
    suffix (and people maps that no longer fit the mask).
    """
    staged = stage_sample(root, sample_id, category_ids, split=split, image=image,
                          image_path=image_path, human_ids=human_ids, overwrite=overwrite)
    error = commit_samples([staged])[0]
    if error is not None:
        raise error
    return dict(staged.paths)


@dataclass
class StagedSample:
    """One sample's files written and fsynced under temporary names, not yet committed.

    ``staged`` maps each destination to its temporary; ``paths`` the sample's files by folder
    (``Category_ids``...). Commit it with :func:`commit_samples`, or :meth:`discard` it."""

    split_dir: Path
    id_list_name: str
    sample_id: str
    staged: dict[Path, Path]
    paths: dict[str, Path]
    shape: tuple[int, int] | None
    overwrite: bool

    def discard(self) -> None:
        """Remove the temporaries (a sample that will not be committed)."""
        for tmp in self.staged.values():
            _unlink_quietly(tmp)


def stage_sample(root: str | os.PathLike, sample_id: str, category_ids: np.ndarray, *,
                 split: str = "Training", image: np.ndarray | None = None,
                 image_path: str | os.PathLike | None = None, human_ids: np.ndarray | None = None,
                 overwrite: bool = False) -> StagedSample:
    """Check a sample (arguments as :func:`write_sample`) and write its files under temporary
    names in their folders, fsynced: the part of a write that needs no lock, so that many
    samples can be staged in parallel and committed together (:func:`commit_samples`).
    Raises :class:`DatasetError` (nothing written) for a sample that cannot be written."""
    check_split(split)
    check_sample_id(sample_id)
    labels = _checked_ids(category_ids, "category ids", NUM_CLASSES - 1)
    photo_shape, suffix = _photo_shape_and_suffix(image, image_path)
    if photo_shape is not None and photo_shape != labels.shape:
        raise DatasetError(f"sample {sample_id}: mask shape {labels.shape} differs from image "
                           f"shape {photo_shape}")
    people = None
    if human_ids is not None:
        people = _checked_ids(human_ids, "human ids", 255)
        if people.shape != labels.shape:
            raise DatasetError(f"sample {sample_id}: human ids shape {people.shape} differs from "
                               f"mask shape {labels.shape}")
    paths = sample_paths(root, sample_id, split, suffix)
    writers = {
        "Category_ids": lambda tmp: save_label_png(labels, tmp),
        "Categories": lambda tmp: save_rgb_png(labels, PALETTE, tmp),
    }
    if image_path is not None:
        writers["Images"] = lambda tmp: _copy_file(image_path, tmp)
    elif image is not None:
        writers["Images"] = lambda tmp: _save_png(np.asarray(image), tmp)
    if people is not None:
        writers["Human_ids"] = lambda tmp: save_label_png(people, tmp)
        writers["Humans"] = lambda tmp: save_rgb_png(people, HUMAN_COLOURS, tmp)
    sample = StagedSample(split_folder(root, split), SPLIT_ID_FILES[split], sample_id, {},
                          {key: paths[key] for key in writers}, labels.shape, overwrite)
    try:
        for key, write in writers.items():
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            sample.staged[paths[key]] = _stage(paths[key], write)
            _checkpoint(f"staged {key}")
    except BaseException:
        sample.discard()
        raise
    return sample


def _checked_ids(array, what: str, largest: int) -> np.ndarray:
    """``array`` as H x W uint8 if it is an integer array of values in 0..``largest``."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise DatasetError(f"{what} must be H x W, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise DatasetError(f"{what} must be an integer array, got {array.dtype} (round or cast "
                           "it to integers first; NaN is no class)")
    if array.size and (array.min() < 0 or array.max() > largest):
        raise DatasetError(f"{what} must lie in 0..{largest}, got {array.min()}..{array.max()}")
    return np.ascontiguousarray(array, dtype=np.uint8)  # no copy when it is uint8 already


def _photo_shape_and_suffix(image, image_path) -> tuple[tuple[int, int] | None, str]:
    if image_path is None:
        return (None if image is None else tuple(np.shape(image)[:2])), ".png"
    suffix = Path(image_path).suffix
    if not suffix or len(suffix) > MAX_SUFFIX_LENGTH or not suffix.isprintable():
        raise DatasetError(f"{image_path}: a photo needs a file suffix such as .jpg or .png "
                           f"(at most {MAX_SUFFIX_LENGTH} characters); rename it")
    try:
        with open_image(image_path) as photo:
            return (photo.height, photo.width), suffix
    except PhotoTooLargeError:
        raise
    except OSError:
        if not Path(image_path).is_file():
            raise
        return None, suffix  # a format Pillow cannot open (some TIFFs): the caller read it its way


HUMAN_COLOURS = np.vstack([[0, 0, 0]] + [np.roll(PALETTE[1:], -4, axis=0)] * 14)[:256].astype(np.uint8)
"""256 x 3 uint8: the colour of each person id in ``Humans/`` pictures (0 black)."""
HUMAN_COLOURS.setflags(write=False)


def colorize_humans(human_ids: np.ndarray) -> np.ndarray:
    """The picture of a person-instance map (H x W ints in 0..255): background black, each
    person a colour, as H x W x 3 uint8."""
    return HUMAN_COLOURS[np.asarray(human_ids)]


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


PNG_COMPRESSION = {0: (1, zlib.Z_RLE), 2: (1, zlib.Z_DEFAULT_STRATEGY)}
"""zlib level and strategy of the label PNGs by colour type (0 gray, 2 RGB): fast, and runs of
one class still compress well (a CIHP-sized mask and its picture: 0.9-2.8 ms and 14-39 KB
together, where Pillow's defaults took 4.7-14.9 ms for 13-32 KB)."""


def save_label_png(ids: np.ndarray, path: Path) -> None:
    """Write ``ids`` (H x W uint8) as an 8-bit grayscale PNG (``Category_ids``, ``Human_ids``),
    band by band."""
    _write_png(path, ids, 0, lambda band: band)


def save_rgb_png(ids: np.ndarray, colours: np.ndarray, path: Path) -> None:
    """Write the picture ``colours[ids]`` (H x W x 3 uint8) as an RGB PNG, band by band, so
    that no H x W x 3 array is made (a 169-megapixel mask would need 0.5 GB for it)."""
    import cv2

    table = np.zeros((256, 1, 3), np.uint8)
    table[:len(colours), 0] = colours[:256]

    def coloured(band):
        return cv2.LUT(cv2.merge([band, band, band]), table)

    _write_png(path, ids, 2, coloured)


def _copy_file(source, path: Path) -> None:
    with open(source, "rb") as reader, open(path, "xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


PNG_BAND_PIXELS = 1 << 20
"""Pixels colourised at once when writing a palette picture (bounds its working memory)."""


def _write_png(path: Path, ids: np.ndarray, colour_type: int, pixels) -> None:
    """Write an 8-bit PNG of colour type 0 (gray) or 2 (RGB) of ``ids`` (H x W uint8), whose
    pixels ``pixels(band of rows of ids)`` gives as H' x W [x 3] uint8; rows unfiltered."""
    height, width = ids.shape
    channels = 3 if colour_type == 2 else 1
    band = max(1, PNG_BAND_PIXELS // max(width, 1))
    level, strategy = PNG_COMPRESSION[colour_type]
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    with open(path, "xb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        _png_chunk(file, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
        for first in range(0, height, band):
            values = pixels(np.ascontiguousarray(ids[first:first + band], np.uint8))
            rows = np.zeros((values.shape[0], 1 + channels * width), np.uint8)  # filter byte 0
            rows[:, 1:] = values.reshape(values.shape[0], -1)
            _png_chunk(file, b"IDAT", compressor.compress(rows))
        _png_chunk(file, b"IDAT", compressor.flush())
        _png_chunk(file, b"IEND", b"")


def _png_chunk(file, kind: bytes, data: bytes) -> None:
    if kind == b"IDAT" and not data:
        return
    file.write(struct.pack(">I", len(data)) + kind)
    file.write(data)
    file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def add_to_id_list(root: str | os.PathLike, split: str, sample_ids) -> None:
    """Add ids to the split's id list (sorted, no duplicates), atomically, under its lock."""
    ids = [check_sample_id(i) for i in sample_ids]
    base = split_folder(root, split)
    with _split_locked(base):
        _write_id_list(base, SPLIT_ID_FILES[split], set(_committed_ids(base, split)) | set(ids))


# --- the commit protocol -------------------------------------------------------------------------
#
# 1. The caller validates everything.
# 2. Every file is written under a temporary name in its destination folder and fsynced
#    (``.<name>.<host>-<pid>-<nonce>.tmp[.<suffix>]``: hidden, and attributable to its writer).
# 3. Under the split's lock (filelock, ``<split>/.napari-deeplab.lock``): complete any commit a
#    crashed writer left (its journal), remove stale temporaries, decide whether the sample
#    exists, write the journal (the renames, removals and the id to list; atomically), apply
#    it (rename, remove, rewrite the id list atomically), fsync the folders, delete the journal.
# 4. Release the lock.
# A group commit (:func:`commit_samples`) does steps 3-4 once for several staged samples: each
# is decided on its own, the journal lists all that are committed, the id list (kept sorted,
# so its bytes do not depend on the commit order) is rewritten once.
# Applying a journal is idempotent, so recovery simply applies it again (rolls forward): after
# any crash a sample is wholly old or wholly new once recovered, and readers recover first.

LOCK_NAME = ".napari-deeplab.lock"
JOURNAL_NAME = ".napari-deeplab-commit.json"
LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for the split's lock before giving up with a message."""

CRASH_ENV = "NAPARI_DEEPLAB_CRASH_AT"
"""Test-only: ``<n>`` or a step name makes the process exit (``os._exit``) at that commit step."""
CRASH_EXIT_CODE = 86

STALE_FOREIGN_S = 3600.0
"""Temporaries of another host are removed once this old (their writer cannot be asked)."""
STALE_ANY_S = 24 * 3600.0
"""Temporaries of any writer are removed once this old (a recycled process id)."""

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:24] or "host"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}"
                        r"\.tmp(\.[^.]*)?$")
_steps = itertools.count(1)
_swept: set[str] = set()


def _checkpoint(step: str) -> None:
    """A commit step: the test-only crash hook (:data:`CRASH_ENV`) may stop the process here."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    number = next(_steps)
    if wanted in (step, str(number)):
        sys.stderr.write(f"napari-deeplab: test crash at commit step {number} ({step})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` naming this host and process, ending in ``path``'s suffix
    (``model.save`` needs ``.keras``). At most 60 characters longer than ``path``'s name."""
    nonce = uuid.uuid4().hex[:8]
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{nonce}.tmp{path.suffix}")


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Replace ``path`` in one step: ``write(temporary path)``, fsync, rename, fsync the folder.

    A failure (or a kill) leaves ``path`` as it was; a killed writer's temporary is removed
    by :func:`remove_stale_temporaries`. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _stage(path, write)
    _checkpoint(f"staged {path.name}")
    try:
        os.replace(staged, path)
    except BaseException:
        _unlink_quietly(staged)
        raise
    _fsync_folder(path.parent)
    return path


def _stage(path: Path, write: Callable[[Path], object]) -> Path:
    staged = temporary_path(path)
    try:
        write(staged)
        _fsync_file(staged)
    except BaseException:
        _unlink_quietly(staged)
        raise
    return staged


def commit_samples(samples: list[StagedSample]) -> list[DatasetError | None]:
    """Commit staged samples of one split together (a group commit): one lock, one journal,
    one rewrite of the id list for all of them, in the given order.

    Each sample is decided under the lock: one whose id is listed (and not ``overwrite``) gets
    a :class:`SampleExistsError`, one whose temporaries vanished a :class:`DatasetError`;
    theirs are removed and the others are committed. Returns one entry per sample: None
    (committed) or its error. All the committed samples are one journal: a crash leaves all of
    them old or, once recovered, all new. An error of the whole commit (a full disk, the lock
    held too long) is raised, and nothing of the group is committed unless it was journalled
    (then the next writer or reader completes it)."""
    if not samples:
        return []
    split_dir, id_list_name = samples[0].split_dir, samples[0].id_list_name
    if any((s.split_dir, s.id_list_name) != (split_dir, id_list_name) for s in samples):
        raise ValueError("commit_samples commits samples of one split at a time")
    results: list[DatasetError | None] = [None] * len(samples)
    journalled = False
    try:
        with _split_locked(split_dir):
            _checkpoint("locked")
            listed = set(_committed_ids(split_dir, _split_of(id_list_name)))
            records, in_group = [], set()
            for position, sample in enumerate(samples):
                results[position] = _refusal(sample, listed, in_group)
                if results[position] is None:
                    in_group.add(sample.sample_id)
                    records.append(_commit_record(split_dir, sample))
                else:
                    sample.discard()
            if records:
                journal = {"id_list": id_list_name, "samples": records}
                _write_journal(split_dir, journal)
                journalled = True
                _apply(split_dir, journal)
                _finish(split_dir)
    except BaseException:
        if not journalled:  # once journalled, the temporaries belong to the roll-forward
            for sample in samples:
                sample.discard()
        raise
    return results


def _refusal(sample: StagedSample, listed: set[str], in_group: set[str]) -> DatasetError | None:
    """Why ``sample`` cannot be committed now (under the lock), or None."""
    if sample.sample_id in in_group:
        return DatasetError(f"sample {sample.sample_id} is twice in one commit; write it once")
    if not sample.overwrite and sample.sample_id in listed:
        return SampleExistsError(f"sample {sample.sample_id} exists in {sample.split_dir}; pass "
                                 "overwrite=True (--overwrite) to replace it")
    vanished = [str(tmp) for tmp in sample.staged.values() if not tmp.exists()]
    if vanished:
        return DatasetError(f"{vanished[0]} vanished before the commit (removed as stale?); "
                            "write the sample again")
    return None


def _split_of(id_list_name: str) -> str:
    return next(split for split, name in SPLIT_ID_FILES.items() if name == id_list_name)


def _commit_record(split_dir: Path, sample: StagedSample) -> dict:
    written = set(sample.staged)
    new_photo = any(dest.parent.name == "Images" for dest in written)
    removals = [p for p in _photos_of(split_dir / "Images", sample.sample_id)
                if new_photo and p not in written]  # a photo of another suffix
    for folder in ("Human_ids", "Humans"):
        old = split_dir / folder / f"{sample.sample_id}.png"
        if old not in written and old.exists() and _size_differs(old, sample.shape):
            removals.append(old)
    return {"sample_id": sample.sample_id,
            "renames": [[_relative(tmp, split_dir), _relative(dest, split_dir)]
                        for dest, tmp in sample.staged.items()],
            "removals": [_relative(p, split_dir) for p in removals]}


def _size_differs(path: Path, shape) -> bool:
    try:
        with Image.open(path) as image:
            return shape is None or (image.height, image.width) != tuple(shape)
    except OSError:
        return True


def _relative(path: Path, split_dir: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _write_journal(split_dir: Path, record: dict) -> None:
    text = json.dumps(record, ensure_ascii=True)
    staged = _stage(split_dir / JOURNAL_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _checkpoint("journal staged")
    os.replace(staged, split_dir / JOURNAL_NAME)
    _fsync_folder(split_dir)
    _checkpoint("journal written")


def _apply(split_dir: Path, journal: dict) -> None:
    """Apply a journal (one or more samples' renames and removals, then one listing of their
    ids); idempotent, so a crashed commit is completed by applying it again."""
    folders = set()
    for record in journal["samples"]:
        for tmp, destination in record["renames"]:
            if (split_dir / tmp).exists():
                os.replace(split_dir / tmp, split_dir / destination)
            _checkpoint(f"renamed {destination}")
            folders.add(Path(destination).parent)
        for removal in record["removals"]:
            (split_dir / removal).unlink(missing_ok=True)
            _checkpoint(f"removed {removal}")
            folders.add(Path(removal).parent)
    for folder in sorted(folders):
        _fsync_folder(split_dir / folder)
    listed = _committed_ids(split_dir, _split_of(journal["id_list"]))
    ids = {record["sample_id"] for record in journal["samples"]}
    if not ids <= set(listed) or not (split_dir / journal["id_list"]).exists():
        _write_id_list(split_dir, journal["id_list"], set(listed) | ids)


def _finish(split_dir: Path) -> None:
    (split_dir / JOURNAL_NAME).unlink()
    _fsync_folder(split_dir)
    _checkpoint("journal removed")


def _write_id_list(split_dir: Path, name: str, ids) -> None:
    text = "".join(f"{sample_id}\n" for sample_id in sorted(ids))
    staged = _stage(split_dir / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _checkpoint("id list staged")
    try:
        os.replace(staged, split_dir / name)
    except BaseException:
        _unlink_quietly(staged)
        raise
    _fsync_folder(split_dir)
    _checkpoint("id list written")


def _read_journal(split_dir: Path) -> dict:
    """The journal of an interrupted commit: ``{"id_list", "samples": [{"sample_id", "renames",
    "removals"}, ...]}`` (a journal of one sample from before group commits, with those keys
    at the top, is read as a group of one)."""
    path = split_dir / JOURNAL_NAME
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        if "samples" not in journal:
            journal = {"id_list": journal["id_list"], "samples": [journal]}
        records = journal["samples"]
        names = [name for record in records for pair in record["renames"] for name in pair] + \
            [name for record in records for name in record["removals"]]
        valid = (journal["id_list"] in SPLIT_ID_FILES.values() and isinstance(records, list)
                 and all(_sample_id_problem(record["sample_id"]) is None for record in records)
                 and all(isinstance(n, str) and len(Path(n).parts) == 2
                         and Path(n).parts[0] in SAMPLE_FOLDERS and ".." not in n for n in names))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise DatasetError(f"{path}: this record of an interrupted commit is damaged; move it "
                           "away and check the samples it names by hand")
    return journal


def recover(root: str | os.PathLike, split: str | None = "Training") -> None:
    """Complete any commit a crashed writer left in the split and remove stale temporaries
    (writers and readers do this themselves; this is for tools and tests)."""
    base = split_folder(root, split)
    if base.is_dir():
        with _split_locked(base, sweep=True):
            pass


def _recover(split_dir: Path, sweep: bool = False) -> None:
    """Under the split's lock: roll forward a journal left by a crashed writer (a live writer
    never leaves one behind the lock), then remove stale temporaries once per process."""
    journal_found = (split_dir / JOURNAL_NAME).exists()
    if journal_found:
        try:
            _apply(split_dir, _read_journal(split_dir))
        except OSError as error:
            raise DatasetError(f"{split_dir}: cannot complete a commit that was interrupted "
                               f"({error}); fix the cause (e.g. free disk space) and run again") from None
        _finish(split_dir)
    key = os.path.abspath(split_dir)
    if sweep or journal_found or key not in _swept:
        for folder in (split_dir, *(split_dir / name for name in SAMPLE_FOLDERS)):
            remove_stale_temporaries(folder)
        _swept.add(key)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries (of ``name`` only, if given) in ``folder`` whose writer is gone:
    a dead process of this host, or older than an hour for another host (a day for anyone).
    A live writer's temporaries are left alone. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in os.scandir(folder):
        match = _TEMPORARY.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > STALE_ANY_S or (age > STALE_FOREIGN_S if match["host"] != _HOST
                                 else not _process_alive(int(match["pid"]))):
            _unlink_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it: rely on the age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _split_locked(split_dir: Path, sweep: bool = False):
    """Hold the split's inter-process lock, after completing any interrupted commit."""
    split_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(split_dir / LOCK_NAME, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise DatasetError(f"{split_dir / LOCK_NAME}: another writer has held this dataset's lock "
                           f"for {LOCK_TIMEOUT_S:.0f} s; try again when it is done") from None
    try:
        _recover(split_dir, sweep)
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _reading(split_dir: Path):
    """Read a split's files from one commit: under its lock when it has one (written by us;
    a foreign folder never has one), after completing an interrupted commit. A folder we may
    not write (read-only media) is read without the lock: nobody can be writing it."""
    with contextlib.ExitStack() as stack:
        if (split_dir / LOCK_NAME).exists():
            with contextlib.suppress(OSError):  # read-only: EACCES, EROFS
                stack.enter_context(_split_locked(split_dir))
        yield


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: Path) -> None:
    """Make renames in ``path`` durable (POSIX; Windows has no folder fsync)."""
    if os.name != "nt":
        _fsync_file(path)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
