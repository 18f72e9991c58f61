"""The CIHP label set (class names, palette, left/right pairs: the one home of these facts)
and the CIHP dataset layout on disk, with the one commit protocol every writer uses."""

from __future__ import annotations

import bisect
import contextlib
import datetime
import errno
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import struct
import threading
import time
import unicodedata
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import files

try:
    import fcntl
except ImportError:  # Windows: the lock is filelock's
    fcntl = None

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

LEFT_RIGHT_SWAP = np.arange(256, dtype=np.uint8)
for _left, _right in LEFT_RIGHT_PAIRS:
    LEFT_RIGHT_SWAP[_left], LEFT_RIGHT_SWAP[_right] = _right, _left
LEFT_RIGHT_SWAP.flags.writeable = False
"""256 uint8 entries: ``LEFT_RIGHT_SWAP[labels]`` swaps each pair of :data:`LEFT_RIGHT_PAIRS`
and keeps every other value (a lookup table for a mirrored mask)."""

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
    sample_id = normal_id(check_sample_id(sample_id))
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
# Ids are compared in one normal form everywhere (Unicode NFC, see normal_id): an id typed on
# macOS (NFD) and the same id in an id list written on Linux (NFC) are one sample.

def normal_id(sample_id: str) -> str:
    """``sample_id`` in the one normal form ids are compared in (Unicode NFC)."""
    return sample_id if sample_id.isascii() else unicodedata.normalize("NFC", sample_id)


def read_id_list(root: str | os.PathLike, split: str) -> list[str]:
    """The ids listed for ``split`` (empty when the list does not exist), in file order."""
    return list_samples(root, split) if id_list_path(root, split).exists() else []


def list_samples(root: str | os.PathLike, split: str | None = "Training") -> list[str]:
    """The split's committed sample ids (NFC, see :func:`normal_id`): its id list, or (for a
    folder without one, such as a download of part of the dataset) the stems of its
    ``Category_ids`` masks, sorted.

    An interrupted commit found on the way (a crashed writer) is completed first; on a split
    this process may not write (read-only media) it is applied logically instead (its ids
    listed, its removals left out), without writing."""
    base = split_folder(root, split)
    with _reading(base) as pending:
        ids = _committed_ids(base, split)
        return pending.listed(ids) if pending else ids


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
    stems = (normal_id(entry.name[:-4]) for entry in os.scandir(folder)
             if entry.name.endswith(".png"))
    return sorted(stem for stem in stems if _sample_id_problem(stem) is None)


_BOM = "\ufeff"
_LINE_BREAKS = re.compile(r"\r\n?")


def _read_ids(path: Path) -> list[str]:
    """The ids of an id list in file order, NFC: a byte-order mark (Windows Notepad writes
    one) is dropped, lines end in ``\\n``, ``\\r\\n`` or ``\\r``, blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: the id list is not UTF-8 text; repair or remove it") from None
    return _parse_ids(text)


def _parse_ids(text: str) -> list[str]:
    # split on line ends only: str.splitlines would also split at \x0c, \x85, U+2028...
    text = text.removeprefix(_BOM)
    if "\r" in text:
        text = _LINE_BREAKS.sub("\n", text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)  # line ends are normalisation boundaries
    lines = text.split("\n")
    if " " in text or "\t" in text:
        lines = [line.strip() for line in lines]
    return [line for line in lines if line]


def _is_listed(base: Path, split: str | None, sample_id: str) -> bool:
    """Whether ``sample_id`` (NFC) is committed in the split: one search of the id list's bytes
    where it is plain (ASCII, ``\\n`` line ends), else a full read."""
    for name in [SPLIT_ID_FILES[split]] if split else list(SPLIT_ID_FILES.values()):
        try:
            data = (base / name).read_bytes()
        except FileNotFoundError:
            continue
        if data.isascii() and b"\r" not in data and b" " not in data and b"\t" not in data:
            return f"\n{sample_id}\n".encode() in b"\n" + data + b"\n"
        return sample_id in set(_read_ids(base / name))
    return sample_id in set(_mask_stems(base))


@dataclass
class _Listed:
    """A split's committed ids as a writer needs them under the lock: ``ids`` sorted and
    unique (what the id list is rewritten to), ``present`` the same as a set, ``exists``
    whether the id list file exists (else the ids are the mask stems)."""

    ids: list[str]
    present: set[str]
    exists: bool
    _folded: dict[str, str] | None = None

    def case_twin(self, sample_id: str) -> str | None:
        """A listed id other than ``sample_id`` that differs from it only in case, or None."""
        if self._folded is None:
            self._folded = {}
            for listed in self.ids:
                self._folded.setdefault(listed.casefold(), listed)
        twin = self._folded.get(sample_id.casefold())
        return twin if twin != sample_id else None

    def add(self, sample_id: str) -> None:
        if sample_id not in self.present:
            bisect.insort(self.ids, sample_id)
            self.present.add(sample_id)
            if self._folded is not None:
                self._folded.setdefault(sample_id.casefold(), sample_id)

    def remove(self, sample_id: str) -> None:
        if sample_id in self.present:
            del self.ids[bisect.bisect_left(self.ids, sample_id)]
            self.present.discard(sample_id)
            self._folded = None


_LISTINGS: dict[str, tuple[tuple, _Listed]] = {}
"""Per process: each id list read or written, by path, with the identity of the file then
(device, inode, size, modification and change times): a commit of 100,000 listed samples
neither reads nor parses the list again while no other process changed it."""


def _file_identity(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _listed(base: Path, split: str) -> _Listed:
    """The split's committed ids for a writer (under the split's lock), from the cache while
    the id list file is unchanged."""
    path = base / SPLIT_ID_FILES[split]
    identity = _file_identity(path)
    if identity is None:
        stems = _mask_stems(base)
        return _Listed(stems, set(stems), False)
    cached = _LISTINGS.get(os.path.abspath(path))
    if cached is not None and cached[0] == identity:
        return cached[1]
    ids = sorted(dict.fromkeys(_read_ids(path)))
    listed = _Listed(ids, set(ids), True)
    _LISTINGS[os.path.abspath(path)] = (identity, listed)
    return listed


def sample_exists(root: str | os.PathLike, sample_id: str, split: str = "Training",
                  listed_ids: set[str] | None = None) -> bool:
    """Whether the split has committed this sample (its id is listed, see :func:`list_samples`).

    ``listed_ids``: the split's ids when the caller has read them already (many lookups). A
    writer decides again under the split's lock when it commits (:func:`write_sample`).
    """
    if listed_ids is None:
        listed_ids = set(list_samples(root, split))
    return normal_id(sample_id) in listed_ids


def find_image(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Path:
    """The photo of a sample, whatever its format; raises ``FileNotFoundError``.

    O(1) in the size of the split: the photo suffixes (:data:`PHOTO_SUFFIXES`, lower and upper
    case) are tried in turn; only a photo of another suffix costs a scan of the folder."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    if os.path.lexists(base / JOURNAL_NAME):  # a commit in progress, or read-only media
        with _reading(base) as pending:
            return _find_photo(base, sample_id, pending)
    return _find_photo(base, sample_id, None)


def _find_photo(base: Path, sample_id: str, pending: _Pending | None) -> Path:
    found = pending.photos(sample_id) if pending else _photos_of(base / "Images", sample_id,
                                                                  first=True)
    if not found:
        found = _scan_photos(base / "Images", sample_id)
    if not found:
        raise FileNotFoundError(f"no photo for sample {sample_id} in {base / 'Images'}")
    return found[0]


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Suffixes of the photos this project reads from folders and writes into ``Images/`` (any case):
the only files of ``Images/`` a commit ever removes."""


_SUFFIX_VARIANTS = tuple(dict.fromkeys([*PHOTO_SUFFIXES, *(s.upper() for s in PHOTO_SUFFIXES)]))
"""The photo suffixes tried, in this order: lower case, then upper case."""


def _photos_of(folder: Path, sample_id: str, follow: bool = True,
               first: bool = False) -> list[Path]:
    """The photos ``folder/<sample_id><photo suffix>`` that exist (files; with ``follow=False``
    also symbolic links, never followed), without scanning the folder; only the first found
    with ``first``. A case-insensitive file system finds one file under several names: each
    file is named once."""
    found, seen = [], set()
    prefix = os.path.join(folder, sample_id)  # strings: this runs once per sample of a split
    for suffix in _SUFFIX_VARIANTS:
        try:
            info = os.stat(prefix + suffix, follow_symlinks=follow)
        except OSError:  # missing, or not a folder
            continue
        if (stat.S_ISREG(info.st_mode) or (not follow and stat.S_ISLNK(info.st_mode))) \
                and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            found.append(folder / (sample_id + suffix))
            if first:
                break
    return found


def _scan_photos(folder: Path, sample_id: str) -> list[Path]:
    """``folder/<sample_id>.<any suffix>`` files, sorted (``a.b.jpg`` is not a photo of ``a``):
    for photos of a foreign dataset with another suffix. The folder is scanned once while it
    is unchanged (its modification time), so that many samples without a photo of a photo
    suffix do not cost a scan each."""
    try:
        changed = os.stat(folder).st_mtime_ns
    except OSError:
        return []
    key = os.path.abspath(folder)
    cached = _SCANS.get(key)
    if cached is None or cached[0] != changed:
        by_stem: dict[str, list[str]] = {}
        for entry in os.scandir(folder):
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and stem and suffix and not entry.name.startswith("."):
                by_stem.setdefault(normal_id(stem), []).append(entry.name)
        cached = _SCANS[key] = (changed, by_stem)
        while len(_SCANS) > _SCANS_KEPT:
            _SCANS.pop(next(iter(_SCANS)), None)
    return sorted(folder / name for name in cached[1].get(sample_id, ()))


_SCANS: dict[str, tuple[int, dict[str, list[str]]]] = {}
_SCANS_KEPT = 8
"""Folders whose scan (:func:`_scan_photos`) is kept."""


# --- versions and writers of samples -------------------------------------------------------------

WRITERS_FOLDER = ".napari-deeplab/writers"
"""Where (in a split) the writer record ``<id>.json`` of a sample committed by an interactive
writer (``writer_tool``) lives: hidden, so a foreign loader's ``glob(Images/*)`` never sees it;
renamed into place (or removed) by the sample's commit, so it always describes the committed
version."""

WRITER_KEYS = ("user", "host", "pid", "tool", "time")
"""The keys of a writer record (:func:`sample_writer`)."""


class _AnyVersion:
    def __repr__(self) -> str:
        return "cihp.ANY_VERSION"


ANY_VERSION = _AnyVersion()
"""``expected_version`` meaning "whatever is there" (``overwrite`` decides)."""


class SampleChangedError(DatasetError):
    """The sample's committed version is not the one the writer expected (another writer
    committed or removed it since it was read); decided under the split's lock.

    ``sample_id``; ``writer``: the current version's writer record (:func:`sample_writer`) or
    None; ``current_version``: :func:`sample_version` now (None: not listed)."""

    def __init__(self, message: str, sample_id: str, writer: dict | None,
                 current_version: str | None):
        super().__init__(message)
        self.sample_id, self.writer, self.current_version = sample_id, writer, current_version


def sample_version(root: str | os.PathLike, sample_id: str,
                   split: str | None = "Training") -> str | None:
    """An opaque version (str) of the committed sample, None when it is not listed. Every
    commit of the sample changes it (it comes from the identity, size and modification time of
    its mask, photo and writer record, all replaced by a commit). O(1) in the split's size:
    a few ``lstat`` calls and one search of the id list."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    with _reading(base) as pending:
        return _version(base, split, sample_id, pending)


def _version(base: Path, split: str | None, sample_id: str, pending: _Pending | None = None,
             listed: set[str] | None = None) -> str | None:
    if listed is not None:
        is_listed = sample_id in listed
    elif pending:
        is_listed = sample_id in pending.listed(_committed_ids(base, split))
    else:
        is_listed = _is_listed(base, split, sample_id)
    if not is_listed:
        return None
    resolve = pending.resolve if pending else (lambda path: path)
    photos = pending.photos(sample_id) if pending else _photos_of(base / "Images", sample_id)
    files = [resolve(base / "Category_ids" / f"{sample_id}.png"),
             resolve(base / WRITERS_FOLDER / f"{sample_id}.json"), *photos[:1]]
    parts = []
    for path in files:
        try:
            info = os.lstat(path) if path is not None else None
        except OSError:
            info = None
        parts.append("-" if info is None else
                     f"{info.st_ino:x}.{info.st_size:x}.{info.st_mtime_ns:x}.{info.st_ctime_ns:x}")
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def sample_writer(root: str | os.PathLike, sample_id: str,
                  split: str | None = "Training") -> dict | None:
    """Who committed the sample's current version: ``{"user", "host", "pid", "tool", "time"}``
    (``time`` ISO 8601 UTC, e.g. ``2026-12-02T10:03:04Z``), read from its writer record; None
    when it is not listed or has no record (a sample of a foreign dataset, one written by
    ``predict`` or another writer without ``writer_tool``, or before writer records existed)."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    with _reading(base) as pending:
        if _version(base, split, sample_id, pending) is None:
            return None
        path = base / WRITERS_FOLDER / f"{sample_id}.json"
        return _read_writer(pending.resolve(path) if pending else path)


def _read_writer(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:  # small: refuse to read a planted huge file
            record = json.loads(file.read(WRITER_RECORD_MAX_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in WRITER_KEYS}


WRITER_RECORD_MAX_BYTES = 4096
"""A writer record is a few hundred bytes; a larger file is not read as one."""


ANNOTATOR_ENV = "NAPARI_DEEPLAB_USER"
"""The annotator's name when several share one login (else the login name)."""


def annotator_name() -> str:
    """Who this process works for: ``$NAPARI_DEEPLAB_USER``, else the login name."""
    try:
        return os.environ.get(ANNOTATOR_ENV) or getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "user"


def _writer_record(tool: str | None, photo_name: str | None) -> dict:
    """This process's writer record of a commit (see :func:`sample_writer`)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"user": annotator_name(), "host": socket.gethostname(), "pid": os.getpid(),
            "tool": tool or "napari-deeplab", "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "writer": files.HOST_TAG, "photo": photo_name, "commit": uuid.uuid4().hex}


def _changed_message(sample_id: str, expected, current: str | None, writer: dict | None) -> str:
    if current is None:
        return (f"sample {sample_id} was removed by another writer since you opened it; write "
                "it again as a new sample (expected_version=None) to restore it")
    who = "another writer (one that keeps no writer record, such as predict)"
    if writer:
        who = f"{writer.get('user')}@{writer.get('host')}"
        when = str(writer.get("time") or "").replace("T", " ").replace("Z", " UTC")
        tool = str(writer.get("tool") or "")
        tool = tool if tool.startswith("napari-deeplab") else f"napari-deeplab {tool}".strip()
        who += f" at {when} ({tool})" if when else f" ({tool})"
    if expected is None:
        return (f"sample {sample_id} was committed by {who} since you opened it; open it "
                "again to see that version, then save yours over it if it should win")
    return (f"sample {sample_id} was changed by {who} since you opened it; open it again to see "
            "that version, then save yours over it if it should win")


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
    base = split_folder(root, split)
    with _reading(base) as pending:
        image_path = _find_photo(base, paths["Images"].stem, pending)
        image = _read_photo(image_path)

        def optional(key):
            path = pending.resolve(paths[key]) if pending else paths[key]
            return _read_array(path) if path is not None and path.exists() else None

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
                 overwrite: bool = False, expected_version=ANY_VERSION,
                 writer_tool: str | None = None) -> dict[str, Path]:
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
    photo suffix (and people maps that no longer fit the mask).

    ``expected_version``: :data:`ANY_VERSION` (``overwrite`` decides); None: the sample must
    not be listed; a :func:`sample_version` string: replace the sample only if that is still
    its version (implies overwrite). Otherwise :class:`SampleChangedError` (decided under the
    lock). ``writer_tool`` ("review", "napari writer"...): an interactive writer's name; the
    commit then records who wrote the sample (:func:`sample_writer`). Without it no writer
    record is written (``predict``'s output stays the same bytes whoever runs it, serial,
    pipelined or on Ray) and an earlier record of the sample is removed.
    """
    staged = stage_sample(root, sample_id, category_ids, split=split, image=image,
                          image_path=image_path, human_ids=human_ids, overwrite=overwrite,
                          expected_version=expected_version, writer_tool=writer_tool)
    error = commit_samples([staged])[0]
    if error is not None:
        raise error
    return dict(staged.paths)


@dataclass
class StagedSample:
    """One sample's files written and fsynced under temporary names, not yet committed.

    ``staged`` maps each destination (with the writer record) to its temporary; ``paths`` the
    sample's files by folder (``Category_ids``...). Commit it with :func:`commit_samples`, or
    :meth:`discard` it."""

    split_dir: Path
    id_list_name: str
    sample_id: str
    staged: dict[Path, Path]
    paths: dict[str, Path]
    shape: tuple[int, int] | None
    overwrite: bool
    expected_version: object = ANY_VERSION

    def discard(self) -> None:
        """Remove the temporaries (a sample that will not be committed)."""
        for tmp in self.staged.values():
            files.unlink_quietly(tmp)


def stage_sample(root: str | os.PathLike, sample_id: str, category_ids: np.ndarray, *,
                 split: str = "Training", image: np.ndarray | None = None,
                 image_path: str | os.PathLike | None = None, human_ids: np.ndarray | None = None,
                 overwrite: bool = False, expected_version=ANY_VERSION,
                 writer_tool: str | None = None) -> StagedSample:
    """Check a sample (arguments as :func:`write_sample`) and write its files under temporary
    names in their folders, fsynced: the part of a write that needs no lock, so that many
    samples can be staged in parallel and committed together (:func:`commit_samples`).
    Raises :class:`DatasetError` (nothing written) for a sample that cannot be written."""
    check_split(split)
    sample_id = normal_id(check_sample_id(sample_id))
    if not (expected_version is ANY_VERSION or expected_version is None
            or isinstance(expected_version, str)):
        raise TypeError("expected_version is cihp.ANY_VERSION, None or a sample_version string")
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
    split_dir = split_folder(root, split)
    _check_real_folders(split_dir)
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
    record_path = split_dir / WRITERS_FOLDER / f"{sample_id}.json"
    sample = StagedSample(split_dir, SPLIT_ID_FILES[split], sample_id, {},
                          {key: paths[key] for key in writers}, labels.shape, overwrite,
                          expected_version)
    try:
        for key, write in writers.items():
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            sample.staged[paths[key]] = files.stage(paths[key], write)
            files.checkpoint(f"staged {key}")
        if writer_tool is not None:
            record = json.dumps(_writer_record(writer_tool, paths["Images"].name
                                               if "Images" in writers else None), ensure_ascii=True)
            record_path.parent.mkdir(parents=True, exist_ok=True)
            sample.staged[record_path] = files.stage(
                record_path, lambda tmp: tmp.write_text(record, encoding="utf-8"))
            files.checkpoint("staged writer record")
    except BaseException:
        sample.discard()
        raise
    return sample


def remove_sample(root: str | os.PathLike, sample_id: str, split: str = "Training",
                  expected_version=ANY_VERSION) -> list[Path]:
    """Unlist a committed sample and remove its files through the commit protocol (journal,
    id-list rewrite: all or nothing across a crash); returns the files removed.

    Only files the protocol knows are removed: the photo of a photo suffix
    (:data:`PHOTO_SUFFIXES`), the masks and pictures, the writer record. ``expected_version``
    as in :func:`write_sample`: a :func:`sample_version` string removes the sample only if that
    is still its version, None succeeds (removing nothing) only when the sample is not listed;
    else :class:`SampleChangedError`. With :data:`ANY_VERSION` an unlisted sample is a
    :class:`DatasetError`."""
    split_dir = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} does not exist; nothing to remove")
    with _split_locked(split_dir):
        files.checkpoint("locked")
        listed = _listed(split_dir, split)
        current = _version(split_dir, split, sample_id, listed=listed.present)
        if expected_version is not ANY_VERSION and expected_version != current:
            writer = _read_writer(split_dir / WRITERS_FOLDER / f"{sample_id}.json") \
                if current else None
            raise SampleChangedError(_changed_message(sample_id, expected_version, current, writer),
                                     sample_id, writer, current)
        if current is None:
            if expected_version is None:
                return []
            raise DatasetError(f"sample {sample_id} is not listed in {split_dir}; nothing to "
                               "remove")
        removals = [*_photos_of(split_dir / "Images", sample_id, follow=False),
                    *(split_dir / folder / f"{sample_id}.png" for folder in SAMPLE_FOLDERS[1:]),
                    split_dir / WRITERS_FOLDER / f"{sample_id}.json"]
        removals = [path for path in removals if os.path.lexists(path)]
        journal = {"id_list": SPLIT_ID_FILES[split],
                   "samples": [{"sample_id": sample_id, "renames": [], "unlist": True,
                                "removals": [_relative(p, split_dir) for p in removals]}]}
        _write_journal(split_dir, journal)
        _apply(split_dir, _checked_journal(split_dir, journal), listed)
        _finish(split_dir)
    return removals


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
    ids = [normal_id(check_sample_id(i)) for i in sample_ids]
    base = split_folder(root, split)
    with _split_locked(base):
        listed = _listed(base, split)
        _update_id_list(base, SPLIT_ID_FILES[split], listed, set(ids), set())


# --- the commit protocol -------------------------------------------------------------------------
#
# 1. The caller validates everything.
# 2. Every file is written under a temporary name in its destination folder and fsynced
#    (``.<name>.<writer>-<pid>-<nonce>.tmp[.<suffix>]``: hidden, and attributable to its writer),
#    with the sample's writer record (``<split>/.napari-deeplab/writers/<id>.json``).
# 3. Under the split's lock (``<split>/.napari-deeplab.lock``, flock): complete any commit a
#    crashed writer left (its journal), remove stale temporaries, decide whether the sample
#    exists (and has the version the writer expects), write the journal (the renames, removals
#    and the ids to list or unlist; atomically), apply it (rename, remove, rewrite the id list
#    atomically), fsync the folders, delete the journal.
# 4. Release the lock.
# A group commit (:func:`commit_samples`) does steps 3-4 once for several staged samples: each
# is decided on its own, the journal lists all that are committed, the id list (kept sorted,
# so its bytes do not depend on the commit order) is rewritten once.
# Applying a journal is idempotent, so recovery simply applies it again (rolls forward): after
# any crash a sample is wholly old or wholly new once recovered, and readers recover first.
# Every rename and removal goes through folder descriptors opened without following links
# (O_NOFOLLOW), and a journal that names anything but its own samples' files is refused: a
# planted journal or a folder replaced by a link cannot make a commit touch files elsewhere.

LOCK_NAME = ".napari-deeplab.lock"
JOURNAL_NAME = ".napari-deeplab-commit.json"
LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for the split's lock before giving up with a message."""
LOCK_POLL_S = (0.001, 0.05)
"""First and longest wait between two tries of a held lock (doubling in between)."""

_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_DIR_FDS = all(f in os.supports_dir_fd for f in (os.open, os.replace, os.unlink, os.stat)) \
    and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_RENAME_ORDER = {WRITERS_FOLDER: 1, "Category_ids": 2, "Images": 3}
"""Order of a sample's renames (other folders 0): the photo last, right after its mask, so a
foreign loader pairing ``glob(Images/*)`` with ``glob(Category_ids/*)`` sees the two differ
for the shortest time (see docs/dataset-format.md)."""


_swept: set[str] = set()
_held = threading.local()


def commit_samples(samples: list[StagedSample]) -> list[DatasetError | None]:
    """Commit staged samples of one split together (a group commit): one lock, one journal,
    one rewrite of the id list for all of them, in the given order.

    Each sample is decided under the lock: one whose id is listed (and not ``overwrite``) gets
    a :class:`SampleExistsError`, one whose version is not its ``expected_version`` a
    :class:`SampleChangedError`, one whose id differs only in case from a listed one or whose
    temporaries vanished a :class:`DatasetError`; theirs are removed and the others are
    committed. Returns one entry per sample: None (committed) or its error. All the committed
    samples are one journal: a crash leaves all of them old or, once recovered, all new. An
    error of the whole commit (a full disk, the lock held too long) is raised, and nothing of
    the group is committed unless it was journalled (then the next writer or reader completes
    it)."""
    if not samples:
        return []
    split_dir, id_list_name = samples[0].split_dir, samples[0].id_list_name
    if any((s.split_dir, s.id_list_name) != (split_dir, id_list_name) for s in samples):
        raise ValueError("commit_samples commits samples of one split at a time")
    results: list[DatasetError | None] = [None] * len(samples)
    journalled = False
    try:
        with _split_locked(split_dir):
            files.checkpoint("locked")
            listed = _listed(split_dir, _split_of(id_list_name))
            decider = _Decider(split_dir, listed)
            records = []
            for position, sample in enumerate(samples):
                results[position] = decider.refusal(sample)
                if results[position] is None:
                    records.append(_commit_record(split_dir, sample))
                else:
                    sample.discard()
            if records:
                journal = _checked_journal(split_dir, {"id_list": id_list_name,
                                                       "samples": records})
                _write_journal(split_dir, journal)
                journalled = True
                _apply(split_dir, journal, listed)
                _finish(split_dir)
    except BaseException:
        if not journalled:  # once journalled, the temporaries belong to the roll-forward
            for sample in samples:
                sample.discard()
        raise
    return results


class _Decider:
    """Decides, under the split's lock, whether each sample of a commit may be committed,
    against the split's ids read (at most) once per commit."""

    def __init__(self, split_dir: Path, listed: _Listed):
        self.split_dir, self.listed, self.present = split_dir, listed, listed.present
        self.in_group: dict[str, str] = {}  # case-folded id -> id
        self.group_ids: set[str] = set()

    def refusal(self, sample: StagedSample) -> DatasetError | None:
        """Why ``sample`` cannot be committed now, or None (then it is part of the group)."""
        sample_id, expected = sample.sample_id, sample.expected_version
        key = sample_id.casefold()
        if sample_id in self.group_ids:
            return DatasetError(f"sample {sample_id} is twice in one commit; write it once")
        if key in self.in_group:
            return DatasetError(f"samples {self.in_group[key]} and {sample_id} differ only in case "
                                "(on macOS and Windows they are one file); rename one photo")
        if expected is not ANY_VERSION:
            current = _version(self.split_dir, None, sample_id, listed=self.present)
            if current != expected:
                writer = _read_writer(self.split_dir / WRITERS_FOLDER / f"{sample_id}.json") \
                    if current else None
                return SampleChangedError(_changed_message(sample_id, expected, current, writer),
                                          sample_id, writer, current)
        elif not sample.overwrite and sample_id in self.present:
            return SampleExistsError(f"sample {sample_id} exists in {sample.split_dir}; pass "
                                     "overwrite=True (--overwrite) to replace it")
        if sample_id not in self.present:
            other = self.listed.case_twin(sample_id)
            if other is not None:
                return DatasetError(f"sample {sample_id} differs only in case from the listed "
                                    f"sample {other} in {self.split_dir} (on macOS and Windows "
                                    "they are one file); rename the photo, or write it as "
                                    f"{other}")
        vanished = [str(tmp) for tmp in sample.staged.values() if not tmp.exists()]
        if vanished:
            return DatasetError(f"{vanished[0]} vanished before the commit (removed as stale?); "
                                "write the sample again")
        self.in_group[key] = sample_id
        self.group_ids.add(sample_id)
        return None


def _split_of(id_list_name: str) -> str:
    return next(split for split, name in SPLIT_ID_FILES.items() if name == id_list_name)


def _commit_record(split_dir: Path, sample: StagedSample) -> dict:
    """The journal record of a staged sample: its renames, and the removal of its photo of
    another photo suffix (``x.jpg`` replaced by ``x.png``) and of people maps of another size."""
    written = set(sample.staged)
    removals = []
    if "Images" in sample.paths:
        destination = sample.paths["Images"]
        try:
            same = os.lstat(destination)  # a case-insensitive file system: x.JPG is x.jpg
            same = (same.st_dev, same.st_ino)
        except OSError:
            same = None
        for old in _photos_of(split_dir / "Images", sample.sample_id, follow=False):
            info = os.lstat(old)
            if old != destination and (info.st_dev, info.st_ino) != same:
                removals.append(old)
    for folder in ("Human_ids", "Humans"):
        old = split_dir / folder / f"{sample.sample_id}.png"
        if old not in written and old.exists() and _size_differs(old, sample.shape):
            removals.append(old)
    record = split_dir / WRITERS_FOLDER / f"{sample.sample_id}.json"
    if record not in written and os.path.lexists(record):  # it described the version replaced
        removals.append(record)
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
    return path.relative_to(split_dir).as_posix()


def _write_journal(split_dir: Path, record: dict) -> None:
    text = json.dumps(record, ensure_ascii=True)
    staged = files.stage(split_dir / JOURNAL_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    files.checkpoint("journal staged")
    os.replace(staged, split_dir / JOURNAL_NAME)
    files.fsync_folder(split_dir)
    files.checkpoint("journal written")


def _apply(split_dir: Path, journal: dict, listed: _Listed | None = None) -> None:
    """Apply a checked journal (:func:`_checked_journal`: one or more samples' renames and
    removals, then one listing or unlisting of their ids); idempotent, so a crashed commit is
    completed by applying it again. ``listed``: the split's ids when the caller read them
    under this lock already. Files are renamed and removed through folder descriptors opened
    without following links; a temporary that is not a regular file, or a destination or
    removal that is a folder or a link, stops it before anything is changed."""
    with _Folders(split_dir) as folders:
        steps = []
        for record in journal["samples"]:
            for tmp, destination in sorted(record["renames"],
                                           key=lambda pair: _RENAME_ORDER.get(_folder(pair[1]), 0)):
                steps.append(("rename", tmp, destination))
            steps += [("remove", removal, removal) for removal in record["removals"]]
        for kind, source, destination in steps:  # check everything first, then change
            _check_target(folders, kind, source, destination)
        for kind, source, destination in steps:
            folder, fd = folders.get(_folder(destination))
            if fd is not None:
                if kind == "rename" and _lstat(folders, folder, fd, _name(source)) is not None:
                    if fd is folders.NO_FD:
                        os.replace(folder / _name(source), folder / _name(destination))
                    else:
                        os.replace(_name(source), _name(destination), src_dir_fd=fd, dst_dir_fd=fd)
                elif kind == "remove" and _lstat(folders, folder, fd, _name(source)) is not None:
                    if fd is folders.NO_FD:
                        os.unlink(folder / _name(source))
                    else:
                        os.unlink(_name(source), dir_fd=fd)
            files.checkpoint(f"renamed {destination}" if kind == "rename" else f"removed {destination}")
        folders.fsync()
    if listed is None:
        listed = _listed(split_dir, _split_of(journal["id_list"]))
    _update_id_list(split_dir, journal["id_list"], listed,
                    {r["sample_id"] for r in journal["samples"] if not r.get("unlist")},
                    {r["sample_id"] for r in journal["samples"] if r.get("unlist")})


def _update_id_list(split_dir: Path, name: str, listed: _Listed, added: set[str],
                    unlisted: set[str]) -> None:
    """List ``added`` and unlist ``unlisted`` (rewriting the id list) unless that is done."""
    added, unlisted = added - listed.present, unlisted & listed.present
    if not (added or unlisted or not listed.exists):
        return
    key = os.path.abspath(split_dir / name)
    _LISTINGS.pop(key, None)  # changed below: cached again only once it is on disk
    for sample_id in sorted(added):
        listed.add(sample_id)
    for sample_id in unlisted:
        listed.remove(sample_id)
    _write_id_list(split_dir, name, listed.ids)
    listed.exists = True
    _LISTINGS[key] = (_file_identity(split_dir / name), listed)


def _folder(relative: str) -> str:
    return relative.rpartition("/")[0]


def _name(relative: str) -> str:
    return relative.rpartition("/")[2]


def _check_target(folders: _Folders, kind: str, source: str, destination: str) -> None:
    folder, fd = folders.get(_folder(destination))
    if fd is None:
        return  # no such folder: nothing to rename or remove there
    info = _lstat(folders, folder, fd, _name(source))
    if kind == "rename" and info is not None and not stat.S_ISREG(info.st_mode):
        raise DatasetError(f"{folder / _name(source)}: a temporary of this commit is not a regular "
                           "file (a link?); the commit was not applied: remove it and the journal "
                           f"{folders.split_dir / JOURNAL_NAME}, and check who planted them")
    target = info if kind == "remove" else _lstat(folders, folder, fd, _name(destination))
    if target is not None and not stat.S_ISREG(target.st_mode) and not (
            kind == "remove" and stat.S_ISLNK(target.st_mode)):
        raise DatasetError(f"{folder / _name(destination)} is a link or a folder, not a file; "
                           "the commit was not applied: replace it by the file it points to (or "
                           "remove it) and run again")


def _lstat(folders: _Folders, folder: Path, fd, name: str) -> os.stat_result | None:
    try:
        if fd is folders.NO_FD:
            return os.lstat(folder / name)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Folders:
    """The split's folders opened once per journal without following links (``O_NOFOLLOW``,
    component by component from the split folder), so that renames and removals stay inside
    the dataset even if a folder is replaced by a link meanwhile. ``get(relative)`` ->
    (path, descriptor or None when the folder does not exist); without descriptor support
    (Windows) paths are used, after the same link checks."""

    NO_FD = -1

    def __init__(self, split_dir: Path):
        self.split_dir = split_dir
        self._fds: dict[str, int | None] = {}

    def __enter__(self) -> _Folders:
        if _DIR_FDS:
            self._fds[""] = self._open(str(self.split_dir), None, self.split_dir)
        return self

    def __exit__(self, *exc) -> None:
        for fd in set(self._fds.values()):
            if fd is not None and fd != self.NO_FD:
                os.close(fd)

    def get(self, relative: str) -> tuple[Path, int | None]:
        path = self.split_dir / relative
        if not _DIR_FDS:
            _check_real_folders(self.split_dir)
            return path, (self.NO_FD if path.is_dir() else None)
        if relative not in self._fds:
            parent_rel, _, name = relative.rpartition("/")
            _, parent = self.get(parent_rel)
            self._fds[relative] = None if parent is None else self._open(name, parent, path)
        return path, self._fds[relative]

    @staticmethod
    def _open(name: str, parent: int | None, path: Path) -> int | None:
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DatasetError(_link_message(path)) from None
            raise

    def fsync(self) -> None:
        if os.name == "nt":
            return
        for relative, fd in self._fds.items():
            if fd is not None and fd != self.NO_FD and relative:
                os.fsync(fd)


def _link_message(path: Path) -> str:
    return (f"{path} is a symbolic link (or not a folder): the dataset's commits rename and "
            "remove files in its folders and never follow a link out of it; replace the link by "
            "a real folder (move the files in) and run again")


def _check_real_folders(split_dir: Path) -> None:
    """Refuse (:class:`DatasetError`, one line) a split folder or sample folder that is a link."""
    for path in (split_dir, *(split_dir / name for name in SAMPLE_FOLDERS),
                 split_dir / _folder(WRITERS_FOLDER), split_dir / WRITERS_FOLDER):
        if path.is_symlink():
            raise DatasetError(_link_message(path))


def _finish(split_dir: Path) -> None:
    (split_dir / JOURNAL_NAME).unlink()
    files.fsync_folder(split_dir)
    files.checkpoint("journal removed")


def _write_id_list(split_dir: Path, name: str, ids: list[str]) -> None:
    """Rewrite the id list atomically with ``ids`` (sorted and unique), one per line."""
    text = "\n".join(ids) + "\n" if ids else ""
    staged = files.stage(split_dir / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    files.checkpoint("id list staged")
    try:
        os.replace(staged, split_dir / name)
    except BaseException:
        files.unlink_quietly(staged)
        raise
    files.fsync_folder(split_dir)
    files.checkpoint("id list written")


def _read_journal(split_dir: Path) -> dict:
    """The journal of an interrupted commit: ``{"id_list", "samples": [{"sample_id", "renames",
    "removals", "unlist"?}, ...]}`` (a journal of one sample from before group commits, with
    those keys at the top, is read as a group of one), checked (:func:`_checked_journal`)."""
    path = split_dir / JOURNAL_NAME
    try:
        with open(path, "rb") as file:
            journal = json.loads(file.read().decode("utf-8"))
        if isinstance(journal, dict) and "samples" not in journal:
            journal = {"id_list": journal["id_list"], "samples": [journal]}
    except (ValueError, KeyError, TypeError):
        journal = None
    return _checked_journal(split_dir, journal)


def _checked_journal(split_dir: Path, journal) -> dict:
    """``journal`` if it only renames its own samples' temporaries onto their files and only
    removes its own samples' files, else :class:`DatasetError` (it is not applied)."""
    try:
        problem = _journal_problem(journal)
    except (KeyError, TypeError, ValueError, AttributeError):
        problem = "it is not a record of this program"
    if problem:
        raise DatasetError(f"{split_dir / JOURNAL_NAME}: this record of an interrupted commit is "
                           f"damaged or names files that are not its samples' ({problem}), so it "
                           "was not applied; move it away and check the samples it names by hand")
    return journal


def _journal_problem(journal) -> str | None:
    if journal["id_list"] not in SPLIT_ID_FILES.values() or not isinstance(journal["samples"], list):
        return "unknown id list"
    for record in journal["samples"]:
        sample_id = record["sample_id"]
        if _sample_id_problem(sample_id) is not None:
            return f"invalid sample id {sample_id!r}"
        if not isinstance(record.get("unlist", False), bool):
            return "bad unlist flag"
        for tmp, destination in record["renames"]:
            if not _is_sample_file(destination, sample_id, renamed=True):
                return f"{destination!r} is not a file of sample {sample_id}"
            match = files.TEMPORARY_NAME.match(_name(tmp)) if isinstance(tmp, str) else None
            if match is None or _folder(tmp) != _folder(destination) \
                    or match["name"] != _name(destination) or not tmp.isprintable():
                return f"{tmp!r} is not a temporary of {destination}"
        for removal in record["removals"]:
            if not _is_sample_file(removal, sample_id):
                return f"{removal!r} is not a file of sample {sample_id}"
    return None


def _is_sample_file(relative, sample_id: str, renamed: bool = False) -> bool:
    """Whether ``relative`` (to the split) names a file of ``sample_id``: its photo (any photo
    suffix; a renamed-in photo any suffix at all, as ``write_sample`` keeps it), a mask or
    picture, or its writer record."""
    if not isinstance(relative, str) or not relative.isprintable():
        return False
    folder, name = _folder(relative), _name(relative)
    if folder == "Images":
        suffix = name[len(sample_id):]
        return name.startswith(sample_id) and (
            suffix.lower() in PHOTO_SUFFIXES
            or (renamed and suffix.startswith(".") and 1 < len(suffix) <= MAX_SUFFIX_LENGTH
                and not set(suffix[1:]) & {".", "/", "\\"}))
    if folder in SAMPLE_FOLDERS:
        return name == f"{sample_id}.png"
    return folder == WRITERS_FOLDER and name == f"{sample_id}.json"


def recover(root: str | os.PathLike, split: str | None = "Training") -> None:
    """Complete any commit a crashed writer left in the split and remove stale temporaries
    (writers and readers do this themselves; this is for tools and tests)."""
    base = split_folder(root, split)
    if base.is_dir():
        with _split_locked(base, sweep=True):
            pass


def _recover(split_dir: Path, sweep: bool = False, reader: bool = False) -> _Pending | None:
    """Under the split's lock: roll forward a journal left by a crashed writer (a live writer
    never leaves one behind the lock), then remove stale temporaries once per process. A
    reader that may not write the split gets the journal to apply logically instead."""
    journal_found = os.path.lexists(split_dir / JOURNAL_NAME)
    if journal_found:
        journal = _read_journal(split_dir)
        try:
            _apply(split_dir, journal)
            _finish(split_dir)
        except OSError as error:
            if reader and error.errno in _READ_ONLY_ERRNOS:
                return _Pending(split_dir, journal)
            raise DatasetError(f"{split_dir}: cannot complete a commit that was interrupted "
                               f"({error}); fix the cause (e.g. free disk space) and run again") from None
    key = os.path.abspath(split_dir)
    if sweep or journal_found or key not in _swept:
        for folder in (split_dir, *(split_dir / name for name in SAMPLE_FOLDERS),
                       split_dir / WRITERS_FOLDER):
            files.remove_stale_temporaries(folder)
        _swept.add(key)
    return None


def _lock_message(path: Path) -> str:
    return (f"{path}: the dataset's lock file is a symbolic link or not a regular file, so it was "
            "not opened (a link could make this program write elsewhere); remove it (it is "
            "made again) and check who put it there")


def _open_lock(path: Path, writable: bool) -> int:
    """The lock file opened without following a link and without truncating it."""
    flags = (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY) | _NOFOLLOW \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise DatasetError(_lock_message(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(_lock_message(path))
    return fd


def _flock(fd: int, operation: int, path: Path) -> None:
    deadline, delay = time.monotonic() + LOCK_TIMEOUT_S, LOCK_POLL_S[0]
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DatasetError(f"{path}: another writer has held this dataset's lock for "
                                   f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done") from None
            time.sleep(delay)
            delay = min(2 * delay, LOCK_POLL_S[1])


@contextlib.contextmanager
def _split_locked(split_dir: Path, sweep: bool = False, reader: bool = False):
    """Hold the split's inter-process lock (``flock`` of :data:`LOCK_NAME`, opened without
    following links), after completing any interrupted commit; yields None, or for a
    ``reader`` that may not write the split a :class:`_Pending` journal to apply logically
    (then under a shared lock where the lock file can be read). Reentrant in a thread."""
    key = os.path.abspath(split_dir)
    held = _held.__dict__.setdefault("splits", set())
    if key in held:
        yield None
        return
    if not reader:
        split_dir.mkdir(parents=True, exist_ok=True)
    _check_real_folders(split_dir)
    path = split_dir / LOCK_NAME
    if fcntl is None:  # Windows: filelock (pinned to versions that do not follow links)
        with _filelock(path):
            held.add(key)
            try:
                yield _recover(split_dir, sweep, reader)
            finally:
                held.discard(key)
        return
    operation, fd = fcntl.LOCK_EX, None
    try:
        fd = _open_lock(path, writable=True)
    except OSError as error:
        if not reader or error.errno not in _READ_ONLY_ERRNOS:
            raise
        operation = fcntl.LOCK_SH
        with contextlib.suppress(PermissionError):
            fd = _open_lock(path, writable=False)
    try:
        if fd is not None:
            _flock(fd, operation, path)
        held.add(key)
        try:
            if operation == fcntl.LOCK_EX:
                yield _recover(split_dir, sweep, reader)
            else:
                yield _Pending(split_dir, _read_journal(split_dir)) \
                    if os.path.lexists(split_dir / JOURNAL_NAME) else None
        finally:
            held.discard(key)
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def _filelock(path: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(path, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise DatasetError(f"{path}: another writer has held this dataset's lock for "
                           f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _reading(split_dir: Path):
    """Read a split's files from one commit: under its lock when it has one (written by us;
    a foreign folder never has one), after completing an interrupted commit. Yields None, or
    on a split this process may not write (read-only media) with a pending journal, the
    :class:`_Pending` view of that journal: its last complete state, without writing."""
    if not os.path.lexists(split_dir / LOCK_NAME):
        yield None
        return
    with _split_locked(split_dir, reader=True) as pending:
        yield pending


class _Pending:
    """A journal that this process cannot apply (read-only media), applied logically: each
    destination is read from its temporary while that exists, the journal's ids are listed
    (or unlisted), its removals are gone."""

    def __init__(self, split_dir: Path, journal: dict):
        self.split_dir = split_dir
        self.sources: dict[Path, Path] = {}
        self.removed: set[Path] = set()
        self.added: set[str] = set()
        self.unlisted: set[str] = set()
        for record in journal["samples"]:
            (self.unlisted if record.get("unlist") else self.added).add(record["sample_id"])
            for tmp, destination in record["renames"]:
                with contextlib.suppress(OSError):  # a regular file, never through a link
                    if stat.S_ISREG(os.lstat(split_dir / tmp).st_mode):
                        self.sources[split_dir / destination] = split_dir / tmp
            self.removed.update(split_dir / removal for removal in record["removals"])

    def __bool__(self) -> bool:
        return True

    def listed(self, ids: list[str]) -> list[str]:
        return sorted((set(ids) - self.unlisted) | self.added)

    def resolve(self, path: Path) -> Path | None:
        """Where the file ``path`` of the last complete state is (None: it is not there)."""
        if path in self.sources:
            return self.sources[path]
        return None if path in self.removed else path

    def photos(self, sample_id: str) -> list[Path]:
        images = self.split_dir / "Images"
        new = [tmp for dest, tmp in self.sources.items()
               if dest.parent == images and dest.name.startswith(sample_id + ".")
               and "." not in dest.name[len(sample_id) + 1:]]
        return new or [p for p in _photos_of(images, sample_id) if p not in self.removed]



