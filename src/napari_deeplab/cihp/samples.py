"""A split's samples through the commit protocol: which are committed (listing, lookup), each
one's version and writer, reading one back, staging, writing and removing one."""

from __future__ import annotations

import datetime
import getpass
import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import files, photos
from . import commit
from .commit import ANY_VERSION, NO_PEOPLE, _NoPeople, reading
from .instances import sample_instance_writers
from .labels import HUMAN_COLOURS, NUM_CLASSES, PALETTE
from .layout import (
    SAMPLE_FOLDERS,
    SPLIT_ID_FILES,
    WRITERS_FOLDER,
    DatasetError,
    check_new_sample_id,
    check_real_folders,
    check_sample_id,
    check_split,
    committed_ids,
    id_list_path,
    listing,
    normal_id,
    photos_of,
    sample_paths,
    scan_photos,
    split_folder,
)
from .png import save_image_png, save_label_png, save_rgb_png
from .stored_photos import (
    StoredPhoto,
    plan_stored_photo,
    save_converted_png,
    stored_photo_problem,
)


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
    with reading(base) as pending:
        ids = committed_ids(base, split)
        return pending.listed(ids) if pending else ids


def sample_exists(
    root: str | os.PathLike,
    sample_id: str,
    split: str = "Training",
    listed_ids: set[str] | None = None,
) -> bool:
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
    if os.path.lexists(base / commit.JOURNAL_NAME):  # a commit in progress, or read-only media
        with reading(base) as pending:
            return _find_photo(base, sample_id, pending)
    return _find_photo(base, sample_id, None)


def _find_photo(base: Path, sample_id: str, pending: commit.Pending | None) -> Path:
    found = (
        pending.photos(sample_id) if pending else photos_of(base / "Images", sample_id, first=True)
    )
    if not found:
        found = scan_photos(base / "Images", sample_id)
    if not found:
        raise FileNotFoundError(f"no photo for sample {sample_id} in {base / 'Images'}")
    return found[0]


def sample_version(
    root: str | os.PathLike, sample_id: str, split: str | None = "Training"
) -> str | None:
    """An opaque version (str) of the committed sample, None when it is not listed. Every
    commit of the sample changes it (it comes from the identity, size and modification time of
    its mask, photo and writer record, all replaced by a commit). O(1) in the split's size:
    a few ``lstat`` calls and one search of the id list."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    with reading(base) as pending:
        return commit.committed_version(base, split, sample_id, pending)


def sample_writer(
    root: str | os.PathLike, sample_id: str, split: str | None = "Training"
) -> dict | None:
    """Who committed the sample's current version: ``{"user", "host", "pid", "tool", "time"}``
    (``time`` ISO 8601 UTC, e.g. ``2026-12-02T10:03:04Z``), read from its writer record; None
    when it is not listed or has no record (a sample of a foreign dataset, one written by
    ``predict`` or another writer without ``writer_tool``, or before writer records existed)."""
    base = split_folder(root, split)
    sample_id = normal_id(check_sample_id(sample_id))
    with reading(base) as pending:
        if commit.committed_version(base, split, sample_id, pending) is None:
            return None
        path = base / WRITERS_FOLDER / f"{sample_id}.json"
        return commit.read_writer_record(pending.resolve(path) if pending else path)


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
    return {
        "user": annotator_name(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "tool": tool or "napari-deeplab",
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "writer": files.HOST_TAG,
        "photo": photo_name,
        "commit": uuid.uuid4().hex,
    }


@dataclass
class Sample:
    """One sample read back: ``image`` H x W x 3 uint8 RGB (as
    :func:`napari_deeplab.photos.read_photo` decodes it), ``category_ids`` H x W uint8 (None
    for an unlabelled Testing photo), ``human_ids`` H x W uint8 or None, ``image_path``;
    ``instance_ids`` H x W uint8 or None: the ``Instance_ids`` map as stored, for information
    (a writer derives it again from parts x people, so one that disagrees is not kept)."""

    sample_id: str
    image: np.ndarray
    category_ids: np.ndarray | None
    human_ids: np.ndarray | None
    image_path: Path
    instance_ids: np.ndarray | None = None


def read_sample(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Sample:
    """Read a sample of the official layout (or of ours) back into arrays, all files from one
    commit: under the split's lock when the split has one (ours), after completing any
    interrupted commit. Photos over :func:`~napari_deeplab.photos.max_pixels` raise
    :class:`~napari_deeplab.photos.PhotoTooLargeError`."""
    paths = sample_paths(root, sample_id, split)
    base = split_folder(root, split)
    with reading(base) as pending:
        image_path = _find_photo(base, paths["Images"].stem, pending)
        image = _read_photo(image_path)

        def optional(key):
            path = pending.resolve(paths[key]) if pending else paths[key]
            return _read_array(path) if path is not None and path.exists() else None

        return Sample(
            sample_id,
            image,
            optional("Category_ids"),
            optional("Human_ids"),
            image_path,
            optional("Instance_ids"),
        )


def _read_photo(path: Path) -> np.ndarray:
    """The photo as :func:`napari_deeplab.photos.read_photo` decodes it (H x W x 3 uint8 RGB),
    writable; its errors name the file."""
    try:
        return photos.read_photo(path)
    except photos.PhotoError as error:
        raise photos.PhotoError(f"{path}: {error}") from None


def _read_array(path: Path) -> np.ndarray:
    """A mask as stored (:func:`napari_deeplab.photos.read_array`)."""
    return photos.read_array(path)


def write_sample(
    root: str | os.PathLike,
    sample_id: str,
    category_ids: np.ndarray,
    *,
    split: str = "Training",
    image: np.ndarray | None = None,
    image_path: str | os.PathLike | None = None,
    human_ids: np.ndarray | _NoPeople | None = None,
    overwrite: bool = False,
    expected_version=ANY_VERSION,
    writer_tool: str | None = None,
) -> dict[str, Path]:
    """Write one sample into the CIHP layout under ``root`` and list its id; return its paths.

    ``category_ids``: H x W integers in 0..19. ``image_path``: a JPEG or PNG is copied byte
    for byte into ``Images/`` (as ``<id>.jpg`` or ``<id>.png``), any other format converted
    losslessly to ``<id>.png`` (:mod:`~napari_deeplab.cihp.stored_photos`); else ``image``
    (H x W [x 3|4] uint8) is written as a lossless PNG. Neither: the sample's stored photo is
    kept, and must exist at the mask's size. ``sample_id`` has no dot
    (:func:`~napari_deeplab.cihp.check_new_sample_id`; a file's id:
    :func:`~napari_deeplab.cihp.sample_id_of_file`). ``human_ids`` (H x W integers, 0
    background, 1..255 people) adds ``Human_ids/`` and its picture ``Humans/``, and the part
    instances derived from parts x people (:mod:`~napari_deeplab.cihp.instances`):
    ``Instance_ids/<id>.png`` with its table ``Instance_ids/<id>.txt`` and the picture
    ``Instances/``. Without ``human_ids`` an overwrite keeps the sample's people when they fit
    the new mask (its instances derived again from the new parts in the same commit) and
    removes them otherwise; ``human_ids=NO_PEOPLE`` removes them in any case.

    Everything is checked before anything is written, then the sample is committed with the
    dataset's commit protocol (:func:`stage_sample`, :func:`commit_samples`): all or nothing,
    even across a crash, and safe against concurrent writers. Whether the sample exists is
    decided at commit time under the split's lock: :class:`SampleExistsError` unless
    ``overwrite``. An overwrite replaces the sample's files and removes its photo of another
    photo suffix (and people and instance files that no longer fit the mask).

    ``expected_version``: :data:`ANY_VERSION` (``overwrite`` decides); None: the sample must
    not be listed; a :func:`sample_version` string: replace the sample only if that is still
    its version (implies overwrite). Otherwise :class:`SampleChangedError` (decided under the
    lock). ``writer_tool`` ("review", "napari writer"...): an interactive writer's name; the
    commit then records who wrote the sample (:func:`sample_writer`). Without it no writer
    record is written (``predict``'s output stays the same bytes whoever runs it, serial,
    pipelined or on Ray) and an earlier record of the sample is removed.
    """
    staged = stage_sample(
        root,
        sample_id,
        category_ids,
        split=split,
        image=image,
        image_path=image_path,
        human_ids=human_ids,
        overwrite=overwrite,
        expected_version=expected_version,
        writer_tool=writer_tool,
    )
    error = commit.commit_samples([staged])[0]
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
    drop_people: bool = False
    note: str = ""  # one line for the user (a photo converted to PNG), else empty

    def discard(self) -> None:
        """Remove the temporaries (a sample that will not be committed)."""
        for tmp in self.staged.values():
            files.unlink_quietly(tmp)


def stage_sample(
    root: str | os.PathLike,
    sample_id: str,
    category_ids: np.ndarray,
    *,
    split: str = "Training",
    image: np.ndarray | None = None,
    image_path: str | os.PathLike | None = None,
    human_ids: np.ndarray | _NoPeople | None = None,
    overwrite: bool = False,
    expected_version=ANY_VERSION,
    writer_tool: str | None = None,
) -> StagedSample:
    """Check a sample (arguments as :func:`write_sample`) and write its files under temporary
    names in their folders, fsynced: the part of a write that needs no lock, so that many
    samples can be staged in parallel and committed together (:func:`commit_samples`).
    Raises :class:`DatasetError` (nothing written) for a sample that cannot be written."""
    check_split(split)
    sample_id = normal_id(check_new_sample_id(sample_id))
    if not (
        expected_version is ANY_VERSION
        or expected_version is None
        or isinstance(expected_version, str)
    ):
        raise TypeError("expected_version is cihp.ANY_VERSION, None or a sample_version string")
    labels = _checked_ids(category_ids, "category ids", NUM_CLASSES - 1)
    photo_shape, stored = _photo_shape_and_suffix(image, image_path)
    suffix = stored.suffix if stored is not None else ".png"
    if photo_shape is not None and photo_shape != labels.shape:
        raise DatasetError(
            f"sample {sample_id}: mask shape {labels.shape} differs from image shape {photo_shape}"
        )
    people, drop_people = None, human_ids is NO_PEOPLE
    if human_ids is not None and not drop_people:
        people = _checked_ids(human_ids, f"sample {sample_id}: human ids", 255)
        if people.shape != labels.shape:
            raise DatasetError(
                f"sample {sample_id}: human ids shape {people.shape} differs from "
                f"mask shape {labels.shape}"
            )
    split_dir = split_folder(root, split)
    check_real_folders(split_dir)
    if image is None and image_path is None:  # decided again under the lock when committed
        problem = stored_photo_problem(split_dir, sample_id, labels.shape)
        if problem:
            raise DatasetError(problem)
    paths = sample_paths(root, sample_id, split, suffix)
    writers = {
        "Category_ids": lambda tmp: save_label_png(labels, tmp),
        "Categories": lambda tmp: save_rgb_png(labels, PALETTE, tmp),
    }
    converted = None if stored is None else stored.pixels
    if converted is not None:
        writers["Images"] = lambda tmp: save_converted_png(converted, tmp)
    elif image_path is not None:
        writers["Images"] = lambda tmp: _copy_file(image_path, tmp)
    elif image is not None:
        writers["Images"] = lambda tmp: save_image_png(np.asarray(image), tmp)
    if people is not None:
        writers["Human_ids"] = lambda tmp: save_label_png(people, tmp)
        writers["Humans"] = lambda tmp: save_rgb_png(people, HUMAN_COLOURS, tmp)
        writers.update(sample_instance_writers(sample_id, labels, people))
    record_path = split_dir / WRITERS_FOLDER / f"{sample_id}.json"
    sample = StagedSample(
        split_dir,
        SPLIT_ID_FILES[split],
        sample_id,
        {},
        {key: paths[key] for key in writers},
        labels.shape,
        overwrite,
        expected_version,
        drop_people,
        stored.note if stored is not None else "",
    )
    try:
        for key, write in writers.items():
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            sample.staged[paths[key]] = files.stage(paths[key], write)
            files.checkpoint(f"staged {key}")
        if writer_tool is not None:
            record = json.dumps(
                _writer_record(writer_tool, paths["Images"].name if "Images" in writers else None),
                ensure_ascii=True,
            )
            record_path.parent.mkdir(parents=True, exist_ok=True)
            sample.staged[record_path] = files.stage(
                record_path, lambda tmp: tmp.write_text(record, encoding="utf-8")
            )
            files.checkpoint("staged writer record")
    except BaseException:
        sample.discard()
        raise
    return sample


def remove_sample(
    root: str | os.PathLike, sample_id: str, split: str = "Training", expected_version=ANY_VERSION
) -> list[Path]:
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
    with commit.split_locked(split_dir):
        files.checkpoint("locked")
        listed = listing(split_dir, split)
        current = commit.committed_version(split_dir, split, sample_id, listed=listed.present)
        if expected_version is not ANY_VERSION and expected_version != current:
            raise commit.changed_error(split_dir, sample_id, expected_version, current)
        if current is None:
            if expected_version is None:
                return []
            raise DatasetError(
                f"sample {sample_id} is not listed in {split_dir}; nothing to remove"
            )
        removals = [
            *photos_of(split_dir / "Images", sample_id, follow=False),
            *(split_dir / folder / f"{sample_id}.png" for folder in SAMPLE_FOLDERS[1:]),
            split_dir / "Instance_ids" / f"{sample_id}.txt",
            split_dir / WRITERS_FOLDER / f"{sample_id}.json",
        ]
        removals = [path for path in removals if os.path.lexists(path)]
        commit.commit_removal(split_dir, split, sample_id, removals, listed)
    return removals


def _checked_ids(array, what: str, largest: int) -> np.ndarray:
    """``array`` as H x W uint8 if it is an integer array of values in 0..``largest``."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise DatasetError(f"{what} must be H x W, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise DatasetError(
            f"{what} must be an integer array, got {array.dtype} (round or cast "
            "it to integers first; NaN is no class)"
        )
    if array.size and (array.min() < 0 or array.max() > largest):
        limit = " (an 8-bit map holds at most 255 people)" if largest == 255 else ""
        raise DatasetError(
            f"{what} must lie in 0..{largest}{limit}, got {array.min()}..{array.max()}"
        )
    return np.ascontiguousarray(array, dtype=np.uint8)  # no copy when it is uint8 already


def _photo_shape_and_suffix(image, image_path) -> tuple[tuple[int, int] | None, StoredPhoto | None]:
    """The (H, W) of the photo given (None: none) and how a photo file is stored (None: no
    file; ``image`` pixels are written as ``<id>.png``)."""
    if image_path is None:
        return (None if image is None else tuple(np.shape(image)[:2])), None
    stored = plan_stored_photo(image_path)
    return stored.shape, stored


def _copy_file(source, path: Path) -> None:
    with open(source, "rb") as reader, open(path, "xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
