"""The commit protocol every writer uses: the split's lock, the journal (checked, written,
applied, rolled forward after a crash), the id list's rewrite, reading a split from one commit
(:func:`reading`), and the group commit of staged samples with its decisions (exists, changed
version, case twins), hence what a committed sample's version is and who wrote it.

1. The caller validates everything.
2. Every file is written under a temporary name in its destination folder and fsynced
   (``.<name>.<writer>-<pid>-<nonce>.tmp[.<suffix>]``: hidden, and attributable to its writer),
   with the sample's writer record (``<split>/.napari-deeplab/writers/<id>.json``).
3. Under the split's lock (``<split>/.napari-deeplab.lock``, flock): complete any commit a
   crashed writer left (its journal), remove stale temporaries, decide whether the sample
   exists (and has the version the writer expects), write the journal (the renames, removals
   and the ids to list or unlist; atomically), apply it (rename, remove, rewrite the id list
   atomically), fsync the folders, delete the journal.
4. Release the lock.
A group commit (:func:`commit_samples`) does steps 3-4 once for several staged samples: each
is decided on its own, the journal lists all that are committed, the id list (kept in
file-name order, :func:`~napari_deeplab.cihp.layout.file_order_key`, so its bytes do not depend
on the commit order) is rewritten once.
Applying a journal is idempotent, so recovery simply applies it again (rolls forward): after
any crash a sample is wholly old or wholly new once recovered, and readers recover first.
Every rename and removal goes through folder descriptors opened without following links
(O_NOFOLLOW), and a journal that names anything but its own samples' files is refused: a
planted journal or a folder replaced by a link cannot make a commit touch files elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .. import files
from .instances import sample_instance_writers
from .layout import (
    PEOPLE_FOLDERS,
    SAMPLE_FOLDERS,
    SPLIT_ID_FILES,
    WRITERS_FOLDER,
    DatasetError,
    Listing,
    check_real_folders,
    check_sample_id,
    committed_ids,
    forget_listing,
    in_file_order,
    is_listed,
    is_sample_file,
    link_message,
    listing,
    normal_id,
    photos_of,
    remember_listing,
    sample_id_problem,
    sample_paths,
    split_folder,
)

if TYPE_CHECKING:
    from .samples import StagedSample

try:
    import fcntl
except ImportError:  # Windows: the lock is filelock's
    fcntl = None  # type: ignore[assignment]


class SampleExistsError(DatasetError):
    """The sample is already committed (its id is in the split's id list) and overwrite was
    not asked for; decided under the split's lock, at commit time."""


WRITER_KEYS = ("user", "host", "pid", "tool", "time")
"""The keys of a writer record (:func:`sample_writer`)."""


class _AnyVersion:
    def __repr__(self) -> str:
        return "cihp.ANY_VERSION"


ANY_VERSION = _AnyVersion()
"""``expected_version`` meaning "whatever is there" (``overwrite`` decides)."""


class _NoPeople:
    def __repr__(self) -> str:
        return "cihp.NO_PEOPLE"


NO_PEOPLE = _NoPeople()
"""``human_ids`` meaning "this sample has no people": an overwrite removes its people and
instance files (with ``human_ids=None`` it keeps those that fit the new mask)."""


class SampleChangedError(DatasetError):
    """The sample's committed version is not the one the writer expected (another writer
    committed or removed it since it was read); decided under the split's lock.

    ``sample_id``; ``writer``: the current version's writer record (:func:`sample_writer`) or
    None; ``current_version``: :func:`sample_version` now (None: not listed)."""

    def __init__(
        self, message: str, sample_id: str, writer: dict | None, current_version: str | None
    ):
        super().__init__(message)
        self.sample_id, self.writer, self.current_version = sample_id, writer, current_version


def committed_version(
    base: Path,
    split: str | None,
    sample_id: str,
    pending: Pending | None = None,
    listed: set[str] | None = None,
) -> str | None:
    """The version of a committed sample of the split folder ``base`` (see
    :func:`~napari_deeplab.cihp.samples.sample_version`), None when it is not listed; read
    under the split's lock by the caller. ``pending``: the journal applied logically (a
    read-only split); ``listed``: the split's ids when the caller read them already."""
    if listed is not None:
        present = sample_id in listed
    elif pending:
        present = sample_id in pending.listed(committed_ids(base, split))
    else:
        present = is_listed(base, split, sample_id)
    if not present:
        return None
    resolve = pending.resolve if pending else (lambda path: path)
    photos = pending.photos(sample_id) if pending else photos_of(base / "Images", sample_id)
    identified = [
        resolve(base / "Category_ids" / f"{sample_id}.png"),
        resolve(base / WRITERS_FOLDER / f"{sample_id}.json"),
        *photos[:1],
    ]
    parts = []
    for path in identified:
        try:
            info = os.lstat(path) if path is not None else None
        except OSError:
            info = None
        parts.append(
            "-"
            if info is None
            else f"{info.st_ino:x}.{info.st_size:x}.{info.st_mtime_ns:x}.{info.st_ctime_ns:x}"
        )
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def read_writer_record(path: Path | None) -> dict | None:
    """The writer record at ``path`` (keys :data:`WRITER_KEYS`), None when there is none or
    it is not one."""
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


def changed_error(
    split_dir: Path, sample_id: str, expected, current: str | None
) -> SampleChangedError:
    """The refusal of a writer that expected version ``expected`` of a sample that is at
    ``current`` now, naming who committed the current version."""
    writer = (
        read_writer_record(split_dir / WRITERS_FOLDER / f"{sample_id}.json") if current else None
    )
    return SampleChangedError(
        changed_message(sample_id, expected, current, writer), sample_id, writer, current
    )


def changed_message(sample_id: str, expected, current: str | None, writer: dict | None) -> str:
    if current is None:
        return (
            f"sample {sample_id} was removed by another writer since you opened it; write "
            "it again as a new sample (expected_version=None) to restore it"
        )
    who = "another writer (one that keeps no writer record, such as predict)"
    if writer:
        who = f"{writer.get('user')}@{writer.get('host')}"
        when = str(writer.get("time") or "").replace("T", " ").replace("Z", " UTC")
        tool = str(writer.get("tool") or "")
        tool = tool if tool.startswith("napari-deeplab") else f"napari-deeplab {tool}".strip()
        who += f" at {when} ({tool})" if when else f" ({tool})"
    if expected is None:
        return (
            f"sample {sample_id} was committed by {who} since you opened it; open it "
            "again to see that version, then save yours over it if it should win"
        )
    return (
        f"sample {sample_id} was changed by {who} since you opened it; open it again to see "
        "that version, then save yours over it if it should win"
    )


def add_to_id_list(root: str | os.PathLike, split: str, sample_ids) -> None:
    """Add ids to the split's id list (sorted, no duplicates), atomically, under its lock."""
    ids = [normal_id(check_sample_id(i)) for i in sample_ids]
    base = split_folder(root, split)
    with split_locked(base):
        listed = listing(base, split)
        _update_id_list(base, SPLIT_ID_FILES[split], listed, set(ids), set())


LOCK_NAME = ".napari-deeplab.lock"
JOURNAL_NAME = ".napari-deeplab-commit.json"
LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for the split's lock before giving up with a message."""
LOCK_POLL_S = (0.001, 0.05)
"""First and longest wait between two tries of a held lock (doubling in between)."""

_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_DIR_FDS = (
    all(f in os.supports_dir_fd for f in (os.open, os.replace, os.unlink, os.stat))
    and hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
)
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
        with split_locked(split_dir):
            files.checkpoint("locked")
            listed = listing(split_dir, _split_of(id_list_name))
            decider = _Decider(split_dir, listed)
            records = []
            for position, sample in enumerate(samples):
                results[position] = decider.refusal(sample)
                if results[position] is None:
                    records.append(_commit_record(split_dir, sample))
                else:
                    sample.discard()
            if records:
                journal = _checked_journal(split_dir, {"id_list": id_list_name, "samples": records})
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


def commit_removal(
    split_dir: Path, split: str, sample_id: str, removals: list[Path], listed: Listing
) -> None:
    """Unlist ``sample_id`` and remove its files ``removals`` in one journalled commit (all or
    nothing across a crash); the caller holds the split's lock (:func:`split_locked`) and
    read ``listed`` under it."""
    journal = {
        "id_list": SPLIT_ID_FILES[split],
        "samples": [
            {
                "sample_id": sample_id,
                "renames": [],
                "unlist": True,
                "removals": [_relative(p, split_dir) for p in removals],
            }
        ],
    }
    _write_journal(split_dir, journal)
    _apply(split_dir, _checked_journal(split_dir, journal), listed)
    _finish(split_dir)


class _Decider:
    """Decides, under the split's lock, whether each sample of a commit may be committed,
    against the split's ids read (at most) once per commit."""

    def __init__(self, split_dir: Path, listed: Listing):
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
            return DatasetError(
                f"samples {self.in_group[key]} and {sample_id} differ only in case "
                "(on macOS and Windows they are one file); rename one photo"
            )
        if expected is not ANY_VERSION:
            current = committed_version(self.split_dir, None, sample_id, listed=self.present)
            if current != expected:
                return changed_error(self.split_dir, sample_id, expected, current)
        elif not sample.overwrite and sample_id in self.present:
            return SampleExistsError(
                f"sample {sample_id} exists in {sample.split_dir}; pass "
                "overwrite=True (--overwrite) to replace it"
            )
        if sample_id not in self.present:
            other = self.listed.case_twin(sample_id)
            if other is not None:
                return DatasetError(
                    f"sample {sample_id} differs only in case from the listed "
                    f"sample {other} in {self.split_dir} (on macOS and Windows "
                    "they are one file); rename the photo, or write it as "
                    f"{other}"
                )
        if "Images" not in sample.paths:  # a mask-only write: its stored photo must fit it
            from .stored_photos import stored_photo_problem

            problem = stored_photo_problem(self.split_dir, sample_id, sample.shape)
            if problem:
                return DatasetError(problem)
        vanished = [str(tmp) for tmp in sample.staged.values() if not tmp.exists()]
        if vanished:
            return DatasetError(
                f"{vanished[0]} vanished before the commit (removed as stale?); "
                "write the sample again"
            )
        self.in_group[key] = sample_id
        self.group_ids.add(sample_id)
        return None


def _split_of(id_list_name: str) -> str:
    return next(split for split, name in SPLIT_ID_FILES.items() if name == id_list_name)


def _commit_record(split_dir: Path, sample: StagedSample) -> dict:
    """The journal record of a staged sample: its renames, and the removal of its photo of
    another photo suffix (``x.jpg`` replaced by ``x.png``) and of people and instance files
    that do not fit its new mask (:func:`_people_kept_or_removed`)."""
    written = set(sample.staged)
    removals = []
    if "Images" in sample.paths:
        destination = sample.paths["Images"]
        try:
            info = os.lstat(destination)  # a case-insensitive file system: x.JPG is x.jpg
            same: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            same = None
        for old in photos_of(split_dir / "Images", sample.sample_id, follow=False):
            info = os.lstat(old)
            if old != destination and (info.st_dev, info.st_ino) != same:
                removals.append(old)
    if "Human_ids" not in sample.paths:
        removals += _people_kept_or_removed(split_dir, sample)
    record = split_dir / WRITERS_FOLDER / f"{sample.sample_id}.json"
    if record not in written and os.path.lexists(record):  # it described the version replaced
        removals.append(record)
    return {
        "sample_id": sample.sample_id,
        "renames": [
            [_relative(tmp, split_dir), _relative(dest, split_dir)]
            for dest, tmp in sample.staged.items()
        ],
        "removals": [_relative(p, split_dir) for p in removals],
    }


def _people_kept_or_removed(split_dir: Path, sample: StagedSample) -> list[Path]:
    """For a sample written without people, under the lock: its committed ``Human_ids`` are
    kept when they are an 8-bit map of the new mask's size (unless written with
    :data:`NO_PEOPLE`), and their part instances are derived again from the new parts
    (staged into ``sample`` here, so they commit with it); otherwise its people and instance
    files are returned, to be removed in the same commit."""
    sample_id = sample.sample_id
    kept = None
    if not sample.drop_people:
        kept = _readable_people(split_dir / "Human_ids" / f"{sample_id}.png", sample.shape)
    if kept is None:
        stale = [split_dir / folder / f"{sample_id}.png" for folder in PEOPLE_FOLDERS]
        stale.append(split_dir / "Instance_ids" / f"{sample_id}.txt")
        return [path for path in stale if os.path.lexists(path)]
    with Image.open(sample.staged[sample.paths["Category_ids"]]) as staged_parts:
        parts = np.asarray(staged_parts)
    paths = sample_paths(split_dir, sample_id, None)
    for key, write in sample_instance_writers(sample_id, parts, kept).items():
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        sample.staged[paths[key]] = files.stage(paths[key], write)
        sample.paths[key] = paths[key]
        files.checkpoint(f"staged kept people's {key}")
    return []


def _readable_people(path: Path, shape) -> np.ndarray | None:
    """The 8-bit people map at ``path`` (a regular file) when it has ``shape``, else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with Image.open(path) as image:
            if image.mode not in ("L", "P") or (image.height, image.width) != tuple(shape):
                return None
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def _relative(path: Path, split_dir: Path) -> str:
    return path.relative_to(split_dir).as_posix()


def _write_journal(split_dir: Path, record: dict) -> None:
    text = json.dumps(record, ensure_ascii=True)
    staged = files.stage(
        split_dir / JOURNAL_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8")
    )
    files.checkpoint("journal staged")
    os.replace(staged, split_dir / JOURNAL_NAME)
    files.fsync_folder(split_dir)
    files.checkpoint("journal written")


def _apply(split_dir: Path, journal: dict, listed: Listing | None = None) -> None:
    """Apply a checked journal (:func:`_checked_journal`: one or more samples' renames and
    removals, then one listing or unlisting of their ids); idempotent, so a crashed commit is
    completed by applying it again. ``listed``: the split's ids when the caller read them
    under this lock already. Files are renamed and removed through folder descriptors opened
    without following links; a temporary that is not a regular file, or a destination or
    removal that is a folder or a link, stops it before anything is changed."""
    with _Folders(split_dir) as folders:
        steps = []
        for record in journal["samples"]:
            for tmp, destination in sorted(
                record["renames"], key=lambda pair: _RENAME_ORDER.get(_folder(pair[1]), 0)
            ):
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
            files.checkpoint(
                f"renamed {destination}" if kind == "rename" else f"removed {destination}"
            )
        folders.fsync()
    if listed is None:
        listed = listing(split_dir, _split_of(journal["id_list"]))
    _update_id_list(
        split_dir,
        journal["id_list"],
        listed,
        {r["sample_id"] for r in journal["samples"] if not r.get("unlist")},
        {r["sample_id"] for r in journal["samples"] if r.get("unlist")},
    )


def _update_id_list(
    split_dir: Path, name: str, listed: Listing, added: set[str], unlisted: set[str]
) -> None:
    """List ``added`` and unlist ``unlisted`` (rewriting the id list) unless that is done."""
    added, unlisted = added - listed.present, unlisted & listed.present
    if not (added or unlisted or not listed.exists):
        return
    forget_listing(split_dir / name)  # changed below: cached again only once it is on disk
    for sample_id in sorted(added):
        listed.add(sample_id)
    for sample_id in unlisted:
        listed.remove(sample_id)
    _write_id_list(split_dir, name, listed.ids)
    listed.exists = True
    remember_listing(split_dir / name, listed)


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
        raise DatasetError(
            f"{folder / _name(source)}: a temporary of this commit is not a regular "
            "file (a link?); the commit was not applied: remove it and the journal "
            f"{folders.split_dir / JOURNAL_NAME}, and check who planted them"
        )
    target = info if kind == "remove" else _lstat(folders, folder, fd, _name(destination))
    if (
        target is not None
        and not stat.S_ISREG(target.st_mode)
        and not (kind == "remove" and stat.S_ISLNK(target.st_mode))
    ):
        raise DatasetError(
            f"{folder / _name(destination)} is a link or a folder, not a file; "
            "the commit was not applied: replace it by the file it points to (or "
            "remove it) and run again"
        )


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
            check_real_folders(self.split_dir)
            return path, (self.NO_FD if path.is_dir() else None)
        if relative not in self._fds:
            parent_rel, _, name = relative.rpartition("/")
            _, parent = self.get(parent_rel)
            self._fds[relative] = None if parent is None else self._open(name, parent, path)
        return path, self._fds[relative]

    @staticmethod
    def _open(name: str, parent: int | None, path: Path) -> int | None:
        try:
            return os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DatasetError(link_message(path)) from None
            raise

    def fsync(self) -> None:
        if os.name == "nt":
            return
        for relative, fd in self._fds.items():
            if fd is not None and fd != self.NO_FD and relative:
                os.fsync(fd)


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
        raise DatasetError(
            f"{split_dir / JOURNAL_NAME}: this record of an interrupted commit is "
            f"damaged or names files that are not its samples' ({problem}), so it "
            "was not applied; move it away and check the samples it names by hand"
        )
    return journal


def _journal_problem(journal) -> str | None:
    if journal["id_list"] not in SPLIT_ID_FILES.values() or not isinstance(
        journal["samples"], list
    ):
        return "unknown id list"
    for record in journal["samples"]:
        sample_id = record["sample_id"]
        if sample_id_problem(sample_id) is not None:
            return f"invalid sample id {sample_id!r}"
        if not isinstance(record.get("unlist", False), bool):
            return "bad unlist flag"
        for tmp, destination in record["renames"]:
            if not is_sample_file(destination, sample_id, renamed=True):
                return f"{destination!r} is not a file of sample {sample_id}"
            match = files.TEMPORARY_NAME.match(_name(tmp)) if isinstance(tmp, str) else None
            if (
                match is None
                or _folder(tmp) != _folder(destination)
                or match["name"] != _name(destination)
                or not tmp.isprintable()
            ):
                return f"{tmp!r} is not a temporary of {destination}"
        for removal in record["removals"]:
            if not is_sample_file(removal, sample_id):
                return f"{removal!r} is not a file of sample {sample_id}"
    return None


def recover(root: str | os.PathLike, split: str | None = "Training") -> None:
    """Complete any commit a crashed writer left in the split and remove stale temporaries
    (writers and readers do this themselves; this is for tools and tests)."""
    base = split_folder(root, split)
    if base.is_dir():
        with split_locked(base, sweep=True):
            pass


def _recover(split_dir: Path, sweep: bool = False, reader: bool = False) -> Pending | None:
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
                return Pending(split_dir, journal)
            raise DatasetError(
                f"{split_dir}: cannot complete a commit that was interrupted "
                f"({error}); fix the cause (e.g. free disk space) and run again"
            ) from None
    key = os.path.abspath(split_dir)
    if sweep or journal_found or key not in _swept:
        for folder in (
            split_dir,
            *(split_dir / name for name in SAMPLE_FOLDERS),
            split_dir / WRITERS_FOLDER,
        ):
            files.remove_stale_temporaries(folder)
        _swept.add(key)
    return None


def _lock_message(path: Path) -> str:
    return (
        f"{path}: the dataset's lock file is a symbolic link or not a regular file, so it was "
        "not opened (a link could make this program write elsewhere); remove it (it is "
        "made again) and check who put it there"
    )


def _open_lock(path: Path, writable: bool) -> int:
    """The lock file opened without following a link and without truncating it."""
    flags = (
        (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY)
        | _NOFOLLOW
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_NONBLOCK", 0)
    )
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
                raise DatasetError(
                    f"{path}: another writer has held this dataset's lock for "
                    f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done"
                ) from None
            time.sleep(delay)
            delay = min(2 * delay, LOCK_POLL_S[1])


@contextlib.contextmanager
def split_locked(split_dir: Path, sweep: bool = False, reader: bool = False):
    """Hold the split's inter-process lock (``flock`` of :data:`LOCK_NAME`, opened without
    following links), after completing any interrupted commit; yields None, or for a
    ``reader`` that may not write the split a :class:`Pending` journal to apply logically
    (then under a shared lock where the lock file can be read). Reentrant in a thread."""
    key = os.path.abspath(split_dir)
    held = _held.__dict__.setdefault("splits", set())
    if key in held:
        yield None
        return
    if not reader:
        split_dir.mkdir(parents=True, exist_ok=True)
    check_real_folders(split_dir)
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
                yield (
                    Pending(split_dir, _read_journal(split_dir))
                    if os.path.lexists(split_dir / JOURNAL_NAME)
                    else None
                )
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
        raise DatasetError(
            f"{path}: another writer has held this dataset's lock for "
            f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def reading(split_dir: Path):
    """Read a split's files from one commit: under its lock when it has one (written by us;
    a foreign folder never has one), after completing an interrupted commit. Yields None, or
    on a split this process may not write (read-only media) with a pending journal, the
    :class:`Pending` view of that journal: its last complete state, without writing."""
    if not os.path.lexists(split_dir / LOCK_NAME):
        yield None
        return
    with split_locked(split_dir, reader=True) as pending:
        yield pending


class Pending:
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
        return in_file_order((set(ids) - self.unlisted) | self.added)

    def resolve(self, path: Path) -> Path | None:
        """Where the file ``path`` of the last complete state is (None: it is not there)."""
        if path in self.sources:
            return self.sources[path]
        return None if path in self.removed else path

    def photos(self, sample_id: str) -> list[Path]:
        images = self.split_dir / "Images"
        new = [
            tmp
            for dest, tmp in self.sources.items()
            if dest.parent == images
            and dest.name.startswith(sample_id + ".")
            and "." not in dest.name[len(sample_id) + 1 :]
        ]
        return new or [p for p in photos_of(images, sample_id) if p not in self.removed]
