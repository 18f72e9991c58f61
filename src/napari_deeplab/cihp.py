"""The CIHP label set (class names, palette, left/right pairs: the one home of these facts)
and the CIHP dataset layout on disk."""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def check_split(split: str) -> str:
    """Return ``split`` if it is one of the official splits, else raise :class:`DatasetError`."""
    if split not in SPLIT_ID_FILES:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLIT_ID_FILES)}")
    return split


def check_sample_id(sample_id: str) -> str:
    """Return ``sample_id`` if it can name files in the layout (non-empty, no path parts)."""
    if not sample_id or sample_id.strip() != sample_id or sample_id in (".", "..") \
            or "/" in sample_id or "\\" in sample_id or ".." in sample_id or "\n" in sample_id:
        raise DatasetError(f"invalid sample id {sample_id!r}: use a file stem without path "
                           "separators, '..' or surrounding spaces")
    return sample_id


def id_list_path(root: str | os.PathLike, split: str) -> Path:
    """``<root>/<split>/<split's id file>``, e.g. ``root/Training/train_id.txt``."""
    return Path(root) / check_split(split) / SPLIT_ID_FILES[split]


def read_id_list(root: str | os.PathLike, split: str) -> list[str]:
    """The ids listed for ``split`` (empty when the list does not exist), in file order."""
    return _read_ids(id_list_path(root, split))


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def add_to_id_list(root: str | os.PathLike, split: str, sample_ids) -> None:
    """Add ids to the split's id list (sorted, no duplicates), atomically."""
    ids = sorted(set(read_id_list(root, split)) | {check_sample_id(i) for i in sample_ids})
    path = id_list_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda tmp: tmp.write_text("".join(f"{i}\n" for i in ids)))


def split_folder(root: str | os.PathLike, split: str | None) -> Path:
    """``<root>/<split>``, or ``root`` itself when ``split`` is None (a split folder, or a
    folder laid out like one, such as ``../shared/data/cihp_samples``)."""
    return Path(root) if split is None else Path(root) / check_split(split)


def sample_paths(root: str | os.PathLike, sample_id: str, split: str | None = "Training",
                 image_suffix: str = ".png") -> dict[str, Path]:
    """Where each file of a sample lives: keys ``Images``, ``Category_ids``, ``Categories``,
    ``Human_ids`` and ``Humans``."""
    base = split_folder(root, split)
    sample_id = check_sample_id(sample_id)
    paths = {"Images": base / "Images" / f"{sample_id}{image_suffix}"}
    for folder in ("Category_ids", "Categories", "Human_ids", "Humans"):
        paths[folder] = base / folder / f"{sample_id}.png"
    return paths


def find_image(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Path:
    """The photo of a sample, whatever its format; raises ``FileNotFoundError``."""
    folder = split_folder(root, split) / "Images"
    found = sorted(p for p in folder.glob(f"{glob.escape(check_sample_id(sample_id))}.*")
                   if not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no photo for sample {sample_id} in {folder}")
    return found[0]


def list_samples(root: str | os.PathLike, split: str | None = "Training") -> list[str]:
    """The split's sample ids: its id list, or (for a folder without one, such as a download
    of part of the dataset) the stems of its ``Category_ids`` masks, sorted."""
    base = split_folder(root, split)
    for name in [SPLIT_ID_FILES[split]] if split else SPLIT_ID_FILES.values():
        listed = _read_ids(base / name)
        if listed:
            return listed
    return sorted(p.stem for p in (base / "Category_ids").glob("*.png") if not p.name.startswith("."))


@dataclass
class Sample:
    """One sample read back: ``image`` H x W [x C], ``category_ids`` H x W uint8 (None for an
    unlabelled Testing photo), ``human_ids`` H x W uint8 or None, ``image_path``."""

    sample_id: str
    image: np.ndarray
    category_ids: np.ndarray | None
    human_ids: np.ndarray | None
    image_path: Path


def read_sample(root: str | os.PathLike, sample_id: str, split: str | None = "Training") -> Sample:
    """Read a sample of the official layout (or of ours) back into arrays."""
    paths = sample_paths(root, sample_id, split)
    image_path = find_image(root, sample_id, split)
    image = np.array(Image.open(image_path))  # np.array: writable, napari paints on these

    def optional(key):
        return np.array(Image.open(paths[key])) if paths[key].exists() else None

    return Sample(sample_id, image, optional("Category_ids"), optional("Human_ids"), image_path)


def sample_exists(root: str | os.PathLike, sample_id: str, split: str = "Training",
                  listed_ids: set[str] | None = None) -> bool:
    """Whether the split already has this sample (its mask, or its id in the id list).

    ``listed_ids``: the split's id list when the caller has read it already (many lookups).
    """
    if listed_ids is None:
        listed_ids = set(read_id_list(root, split))
    return sample_id in listed_ids or sample_paths(root, sample_id, split)["Category_ids"].exists()


def write_sample(root: str | os.PathLike, sample_id: str, category_ids: np.ndarray, *,
                 split: str = "Training", image: np.ndarray | None = None,
                 image_path: str | os.PathLike | None = None, human_ids: np.ndarray | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write one sample into the CIHP layout under ``root`` and list its id; return its paths.

    ``category_ids``: H x W integers in 0..19. ``image_path`` is copied byte for byte into
    ``Images/`` (its suffix kept); else ``image`` (H x W [x 3|4] uint8) is written as a
    lossless PNG. ``human_ids`` (H x W, 0 background, 1..255 people) adds ``Human_ids/`` and
    its picture ``Humans/``. Everything is checked before anything is written; all files are
    written under temporary names and renamed only when all are complete, and the id list is
    updated last, so a failure leaves the dataset as it was. Refuses to replace an existing
    sample unless ``overwrite``.
    """
    check_split(split)
    check_sample_id(sample_id)
    category_ids = np.asarray(category_ids)
    if category_ids.ndim != 2:
        raise DatasetError(f"category ids must be H x W, got shape {category_ids.shape}")
    if category_ids.size and (category_ids.min() < 0 or category_ids.max() >= NUM_CLASSES):
        raise DatasetError(f"category ids must lie in 0..{NUM_CLASSES - 1}, got "
                           f"{category_ids.min()}..{category_ids.max()}")
    if image_path is not None:
        try:
            with Image.open(image_path) as photo:
                photo_shape = (photo.height, photo.width)
        except OSError:  # a format Pillow cannot open (some TIFFs): the caller read it its way
            photo_shape = None
    else:
        photo_shape = None if image is None else np.shape(image)[:2]
    if photo_shape is not None and photo_shape != category_ids.shape:
        raise DatasetError(f"mask shape {category_ids.shape} differs from image shape {photo_shape}")
    if human_ids is not None:
        human_ids = np.asarray(human_ids)
        if human_ids.shape != category_ids.shape:
            raise DatasetError(f"human ids shape {human_ids.shape} differs from mask shape "
                               f"{category_ids.shape}")
        if human_ids.size and (human_ids.min() < 0 or human_ids.max() > 255):
            raise DatasetError("human ids must lie in 0..255 (0: background, 1..N: people)")
    suffix = Path(image_path).suffix if image_path is not None else ".png"
    paths = sample_paths(root, sample_id, split, suffix)
    if not overwrite and sample_exists(root, sample_id, split):
        raise DatasetError(f"sample {sample_id} exists in {Path(root) / split}; "
                           "pass overwrite=True (--overwrite) to replace it")
    labels = category_ids.astype(np.uint8)
    writers = {
        "Category_ids": lambda tmp: _save_png(labels, tmp),
        "Categories": lambda tmp: _save_png(colorize(labels), tmp),
    }
    if image_path is not None:
        writers["Images"] = lambda tmp: shutil.copyfile(image_path, tmp)
    elif image is not None:
        writers["Images"] = lambda tmp: _save_png(np.asarray(image), tmp)
    if human_ids is not None:
        people = human_ids.astype(np.uint8)
        writers["Human_ids"] = lambda tmp: _save_png(people, tmp)
        writers["Humans"] = lambda tmp: _save_png(colorize_humans(people), tmp)
    _replace_all_atomically({paths[key]: write for key, write in writers.items()})
    add_to_id_list(root, split, [sample_id])
    return {key: paths[key] for key in writers}


def colorize_humans(human_ids: np.ndarray) -> np.ndarray:
    """The picture of a person-instance map (H x W ints): background black, each person a colour."""
    colours = np.vstack([[0, 0, 0], np.roll(PALETTE[1:], -4, axis=0)]).astype(np.uint8)
    return colours[np.where(human_ids > 0, (np.asarray(human_ids) - 1) % (len(colours) - 1) + 1, 0)]


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _replace_atomically(path: Path, write) -> None:
    _replace_all_atomically({path: write})


def _replace_all_atomically(writes: dict) -> None:
    """Write every file to a temporary sibling, then rename them all; on failure remove the
    temporaries and leave the targets untouched."""
    staged = []
    try:
        for path, write in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary_name(path)
            staged.append((tmp, path))
            write(tmp)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
