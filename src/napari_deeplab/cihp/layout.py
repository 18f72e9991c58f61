"""Where a CIHP dataset keeps what: the splits and their id lists, the one sample id rule,
every file's path, the id lists as files (parsed and cached), where a sample's photo is, and
the one resolver of "a CIHP root, a split folder or a mask file". Nothing here takes the
split's lock: the readers that do (recovering an interrupted commit first) are in
:mod:`~napari_deeplab.cihp.samples`."""

from __future__ import annotations

import bisect
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """A sample or dataset request that cannot be honoured; nothing was written."""


SPLIT_ID_FILES = {"Training": "train_id.txt", "Validation": "val_id.txt", "Testing": "test_id.txt"}
"""The id list of each split of the official layout."""

SAMPLE_FOLDERS = (
    "Images",
    "Category_ids",
    "Categories",
    "Human_ids",
    "Humans",
    "Instance_ids",
    "Instances",
)
"""The folders of a split that hold a sample's files: one ``<id>.png`` each (the photo any
photo suffix), and ``Instance_ids`` also the instance table ``<id>.txt``."""

PEOPLE_FOLDERS = ("Human_ids", "Humans", "Instance_ids", "Instances")
"""The folders of a sample's people and part instances (written only where people exist)."""

INSTANCE_TABLE = "Instance_table"
"""The key of ``Instance_ids/<id>.txt`` (``<value> <class_id> <person_id>`` lines) among a
sample's paths (:func:`sample_paths`)."""

MAX_ID_BYTES = 120
"""Longest sample id (UTF-8 bytes): its temporary file names must stay under NAME_MAX (255)."""

MAX_SUFFIX_LENGTH = 12
"""Longest photo suffix (``.jpeg``, ``.tiff``...) accepted in ``Images/``."""

_WINDOWS_FORBIDDEN = frozenset('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(
    [
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{i}" for i in range(1, 10)),
        *(f"LPT{i}" for i in range(1, 10)),
    ]
)


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
    problem = sample_id_problem(sample_id)
    if problem:
        raise DatasetError(
            f"invalid sample id {sample_id!r}: {problem}; rename the photo "
            "(a sample's id is its file stem)"
        )
    return sample_id


def check_new_sample_id(sample_id: str) -> str:
    """Return ``sample_id`` if a writer may give a sample this id, else raise
    :class:`DatasetError` (one line, naming the id to use instead): :func:`check_sample_id`'s
    rule, and no dot (:func:`new_sample_id_problem`). Ids of samples written before the rule
    (``frame.left``) are still read, listed and removed; they are not written again."""
    problem = new_sample_id_problem(sample_id)
    if problem:
        raise DatasetError(f"invalid sample id {sample_id!r}: {problem}")
    return sample_id


def new_sample_id_problem(sample_id) -> str | None:
    """Why a writer may not give a sample the id ``sample_id``, or None: it breaks the id rule
    (:func:`sample_id_problem`) or contains a dot.

    Why no dot: a loader that knows nothing of the id list (the seed's Keras loader) pairs
    ``sorted(glob("Images/*"))`` with ``sorted(glob("Category_ids/*"))``, i.e. it sorts the
    names ``<id>.jpg`` and ``<id>.png``. Two such names first differ inside the shorter id,
    or where the shorter id ends: there one name has the ``.`` of its suffix and the other
    the next character of the longer id, never a dot. So the suffix is never compared and
    every folder sorts its names in the same order, whatever the photos' formats: the order
    of :func:`file_order_key`, which is also the id list's order. With dots the suffix can
    decide: ``frame.jpg`` < ``frame.left.jpg`` < ``frame.orig.jpg`` but
    ``frame.left.png`` < ``frame.orig.png`` < ``frame.png``, and every pair is wrong."""
    problem = sample_id_problem(sample_id)
    if problem is None and "." in sample_id:
        problem = (
            "ids may not contain '.' (a loader pairing sorted file names of Images/ and "
            "Category_ids/ would pair the wrong files); use "
            f"{sample_id_from_stem(sample_id)!r} (cihp.sample_id_from_stem)"
        )
    return problem


def sample_id_from_stem(stem: str) -> str:
    """The sample id of a file whose stem is ``stem`` (a photo ``frame.left.jpg`` has the stem
    ``frame.left``): every ``.`` becomes ``_`` (ids have no dot, see
    :func:`new_sample_id_problem`), so ``frame.left`` -> ``frame_left``. The one mapping of
    file names to ids (``predict``, the review queue, napari's writer); two files that map to
    one id (``frame.left.jpg`` and ``frame_left.jpg``) are refused as two inputs with one id."""
    return stem.replace(".", "_")


def sample_id_of_file(path: str | os.PathLike) -> str:
    """The sample id of the photo ``path``: :func:`sample_id_from_stem` of its file stem."""
    return sample_id_from_stem(Path(path).stem)


def file_order_key(sample_id: str) -> str:
    """The sort key of ids in file-name order: ``<id>.png`` and ``<id>.jpg`` sort as
    ``<id>.`` does (ids have no dot). The id list is kept in this order, so its n-th id is
    the n-th name of ``sorted(glob("Images/*"))`` and of every mask folder; it differs from
    plain string order only where an id continues another with a character below ``.``
    (``a-1`` comes before ``a``, as ``a-1.png`` comes before ``a.png``)."""
    return sample_id + "."


def in_file_order(ids) -> list[str]:
    """``ids`` sorted by :func:`file_order_key`."""
    return sorted(ids, key=file_order_key)


def sample_id_problem(sample_id) -> str | None:
    """Why ``sample_id`` breaks the id rule (:func:`check_sample_id`), or None."""
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


def sample_paths(
    root: str | os.PathLike,
    sample_id: str,
    split: str | None = "Training",
    image_suffix: str = ".png",
) -> dict[str, Path]:
    """Where each file of a sample lives: keys ``Images``, ``Category_ids``, ``Categories``,
    ``Human_ids``, ``Humans``, ``Instance_ids``, ``Instances`` and :data:`INSTANCE_TABLE`
    (``Instance_ids/<id>.txt``)."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    paths = {"Images": base / "Images" / f"{sample_id}{image_suffix}"}
    for folder in SAMPLE_FOLDERS[1:]:
        paths[folder] = base / folder / f"{sample_id}.png"
    paths[INSTANCE_TABLE] = base / "Instance_ids" / f"{sample_id}.txt"
    return paths


# --- what "a sample exists" means ----------------------------------------------------------------
#
# A sample exists when its id is in its split's id list: the id list is the commit record, and
# it is only changed under the split's lock (see :mod:`~napari_deeplab.cihp.commit`). Files of an
# unlisted id are leftovers of an unfinished write; the next write of that id replaces them.
# A folder without any id list (an official download, a folder laid out like one split) lists
# the stems of its Category_ids masks instead; the first commit into such a split writes the
# id list with those stems, so nothing that was visible disappears.
# Ids are compared in one normal form everywhere (Unicode NFC, see normal_id): an id typed on
# macOS (NFD) and the same id in an id list written on Linux (NFC) are one sample.


def normal_id(sample_id: str) -> str:
    """``sample_id`` in the one normal form ids are compared in (Unicode NFC)."""
    return sample_id if sample_id.isascii() else unicodedata.normalize("NFC", sample_id)


def committed_ids(base: Path, split: str | None) -> list[str]:
    """The ids of the split folder ``base``, NFC, read without its lock: its id list in file
    order (with ``split`` None: the first of the three official ones found), else the stems
    of its ``Category_ids`` masks, in file order."""
    names = [SPLIT_ID_FILES[split]] if split else list(SPLIT_ID_FILES.values())
    for name in names:
        if (base / name).exists():
            return read_ids(base / name)
    return mask_stems(base)


def mask_stems(base: Path) -> list[str]:
    """The valid sample ids among the stems of ``base/Category_ids/*.png``, NFC, in file
    order (:func:`file_order_key`)."""
    folder = base / "Category_ids"
    if not folder.is_dir():
        return []
    stems = (
        normal_id(entry.name[:-4]) for entry in os.scandir(folder) if entry.name.endswith(".png")
    )
    return in_file_order(stem for stem in stems if sample_id_problem(stem) is None)


_BOM = "\ufeff"
_LINE_BREAKS = re.compile(r"\r\n?")


def read_ids(path: Path) -> list[str]:
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


def is_listed(base: Path, split: str | None, sample_id: str) -> bool:
    """Whether ``sample_id`` (NFC) is committed in the split: one search of the id list's bytes
    where it is plain (ASCII, ``\\n`` line ends), else a full read."""
    for name in [SPLIT_ID_FILES[split]] if split else list(SPLIT_ID_FILES.values()):
        try:
            data = (base / name).read_bytes()
        except FileNotFoundError:
            continue
        if data.isascii() and b"\r" not in data and b" " not in data and b"\t" not in data:
            return f"\n{sample_id}\n".encode() in b"\n" + data + b"\n"
        return sample_id in set(read_ids(base / name))
    return sample_id in set(mask_stems(base))


@dataclass
class Listing:
    """A split's committed ids as a writer needs them under the lock: ``ids`` in file order
    (:func:`file_order_key`) and unique (what the id list is rewritten to), ``present`` the
    same as a set, ``exists`` whether the id list file exists (else the ids are the mask
    stems)."""

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
            bisect.insort(self.ids, sample_id, key=file_order_key)
            self.present.add(sample_id)
            if self._folded is not None:
                self._folded.setdefault(sample_id.casefold(), sample_id)

    def remove(self, sample_id: str) -> None:
        if sample_id in self.present:
            del self.ids[
                bisect.bisect_left(self.ids, file_order_key(sample_id), key=file_order_key)
            ]
            self.present.discard(sample_id)
            self._folded = None


_LISTINGS: dict[str, tuple[tuple | None, Listing]] = {}
"""Per process: each id list read or written, by path, with the identity of the file then
(device, inode, size, modification and change times): a commit of 100,000 listed samples
neither reads nor parses the list again while no other process changed it."""


def _file_identity(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def listing(base: Path, split: str) -> Listing:
    """The split's committed ids for a writer (under the split's lock), from the cache while
    the id list file is unchanged."""
    path = base / SPLIT_ID_FILES[split]
    identity = _file_identity(path)
    if identity is None:
        stems = mask_stems(base)
        return Listing(stems, set(stems), False)
    cached = _LISTINGS.get(os.path.abspath(path))
    if cached is not None and cached[0] == identity:
        return cached[1]
    ids = in_file_order(dict.fromkeys(read_ids(path)))
    listed = Listing(ids, set(ids), True)
    _LISTINGS[os.path.abspath(path)] = (identity, listed)
    return listed


def forget_listing(path: Path) -> None:
    """Drop the cached listing of the id list ``path`` (it is about to change)."""
    _LISTINGS.pop(os.path.abspath(path), None)


def remember_listing(path: Path, listed: Listing) -> None:
    """Cache ``listed`` as the content of the id list ``path`` as it is on disk now."""
    _LISTINGS[os.path.abspath(path)] = (_file_identity(path), listed)


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Suffixes of the photos this project reads from folders and writes into ``Images/`` (any case):
the only files of ``Images/`` a commit ever removes."""


_SUFFIX_VARIANTS = tuple(dict.fromkeys([*PHOTO_SUFFIXES, *(s.upper() for s in PHOTO_SUFFIXES)]))
"""The photo suffixes tried, in this order: lower case, then upper case."""


def photos_of(folder: Path, sample_id: str, follow: bool = True, first: bool = False) -> list[Path]:
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
        if (stat.S_ISREG(info.st_mode) or (not follow and stat.S_ISLNK(info.st_mode))) and (
            info.st_dev,
            info.st_ino,
        ) not in seen:
            seen.add((info.st_dev, info.st_ino))
            found.append(folder / (sample_id + suffix))
            if first:
                break
    return found


def scan_photos(folder: Path, sample_id: str) -> list[Path]:
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
"""Folders whose scan (:func:`scan_photos`) is kept."""


WRITERS_FOLDER = ".napari-deeplab/writers"
"""Where (in a split) the writer record ``<id>.json`` of a sample committed by an interactive
writer (``writer_tool``) lives: hidden, so a foreign loader's ``glob(Images/*)`` never sees it;
renamed into place (or removed) by the sample's commit, so it always describes the committed
version."""


def link_message(path: Path) -> str:
    """The one-line refusal of a dataset folder that is a symbolic link."""
    return (
        f"{path} is a symbolic link (or not a folder): the dataset's commits rename and "
        "remove files in its folders and never follow a link out of it; replace the link by "
        "a real folder (move the files in) and run again"
    )


def check_real_folders(split_dir: Path) -> None:
    """Refuse (:class:`DatasetError`, one line) a split folder or sample folder that is a link."""
    for path in (
        split_dir,
        *(split_dir / name for name in SAMPLE_FOLDERS),
        (split_dir / WRITERS_FOLDER).parent,
        split_dir / WRITERS_FOLDER,
    ):
        if path.is_symlink():
            raise DatasetError(link_message(path))


def is_sample_file(relative, sample_id: str, renamed: bool = False) -> bool:
    """Whether ``relative`` (to the split) names a file of ``sample_id``: its photo (any photo
    suffix; a renamed-in photo any suffix at all, as ``write_sample`` keeps it), a mask or
    picture, its instance table (``Instance_ids/<id>.txt``), or its writer record."""
    if not isinstance(relative, str) or not relative.isprintable():
        return False
    folder, _, name = relative.rpartition("/")
    if folder == "Images":
        suffix = name[len(sample_id) :]
        return name.startswith(sample_id) and (
            suffix.lower() in PHOTO_SUFFIXES
            or (
                renamed
                and suffix.startswith(".")
                and 1 < len(suffix) <= MAX_SUFFIX_LENGTH
                and not set(suffix[1:]) & {".", "/", "\\"}
            )
        )
    if folder == "Instance_ids" and name == f"{sample_id}.txt":
        return True
    if folder in SAMPLE_FOLDERS:
        return name == f"{sample_id}.png"
    return folder == WRITERS_FOLDER and name == f"{sample_id}.json"


# --- the one resolver of what a path names -------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a path points in a CIHP dataset: ``root`` and ``split`` (None: ``root`` is itself
    laid out like one split), and the ``sample_id`` of a mask file (else None)."""

    root: Path
    split: str | None
    sample_id: str | None = None

    @property
    def folder(self) -> Path:
        """The split folder (:func:`split_folder`)."""
        return split_folder(self.root, self.split)


def locate(path: str | os.PathLike, split: str | None = None) -> Location:
    """What ``path`` names: a CIHP root, a split folder, or a ``Category_ids`` mask file.

    Without ``split``: a mask ``<folder>/Category_ids/<id>.png`` whose ``<folder>/Images`` is a
    folder names that sample; a folder with ``Images/`` is a split (named by its folder name
    when that is a split's, so ``root`` is its parent); a folder with ``<split>/Images/`` is a
    root, and its first such split of :data:`SPLIT_ID_FILES` is taken. Anything else raises
    ``ValueError``.

    With ``split`` (the caller names the split, as fine-tuning does): ``path/<split>`` when
    that is a folder, else ``path`` itself when it has ``Images/`` (split None), else
    ``path/<split>`` (a split that does not exist yet: check ``folder.is_dir()``). Never
    raises."""
    path = Path(path)
    if split is not None:
        if (path / "Images").is_dir() and not (path / split).is_dir():
            return Location(path, None)
        return Location(path, split)
    if (
        path.is_file()
        and path.suffix.lower() == ".png"
        and path.parent.name == "Category_ids"
        and (path.parent.parent / "Images").is_dir()
    ):
        folder = path.parent.parent
        named = folder.name if folder.name in SPLIT_ID_FILES else None
        return Location(folder.parent if named else folder, named, path.stem)
    if path.is_dir():
        if (path / "Images").is_dir():
            named = path.name if path.name in SPLIT_ID_FILES else None
            return Location(path.parent if named else path, named)
        for name in SPLIT_ID_FILES:
            if (path / name / "Images").is_dir():
                return Location(path, name)
    raise ValueError(f"{path} is not a CIHP dataset, split folder or Category_ids mask")
