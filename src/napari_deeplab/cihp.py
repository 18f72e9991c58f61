"""The CIHP label set (class names, palette, left/right pairs: the one home of these facts)
and the CIHP dataset layout on disk."""

from __future__ import annotations

import os
import shutil
import uuid
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
    path = id_list_path(root, split)
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def add_to_id_list(root: str | os.PathLike, split: str, sample_ids) -> None:
    """Add ids to the split's id list (sorted, no duplicates), atomically."""
    ids = sorted(set(read_id_list(root, split)) | {check_sample_id(i) for i in sample_ids})
    path = id_list_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda tmp: tmp.write_text("".join(f"{i}\n" for i in ids)))


def sample_paths(root: str | os.PathLike, sample_id: str, split: str = "Training",
                 image_suffix: str = ".png") -> dict[str, Path]:
    """Where each file of a sample lives: keys ``Images``, ``Category_ids``, ``Categories``."""
    base = Path(root) / check_split(split)
    sample_id = check_sample_id(sample_id)
    return {"Images": base / "Images" / f"{sample_id}{image_suffix}",
            "Category_ids": base / "Category_ids" / f"{sample_id}.png",
            "Categories": base / "Categories" / f"{sample_id}.png"}


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
                 image_path: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write one sample into the CIHP layout under ``root`` and list its id; return its paths.

    ``category_ids``: H x W integers in 0..19. ``image_path`` is copied byte for byte into
    ``Images/`` (its suffix kept); else ``image`` (H x W [x 3|4] uint8) is written as a
    lossless PNG. All files are written under temporary names and renamed only when all of
    them are complete; the id list is updated last, so a failure leaves the dataset as it was.
    Refuses to replace an existing sample unless ``overwrite``.
    """
    category_ids = np.asarray(category_ids)
    if category_ids.ndim != 2:
        raise DatasetError(f"category ids must be H x W, got shape {category_ids.shape}")
    if category_ids.size and (category_ids.min() < 0 or category_ids.max() >= NUM_CLASSES):
        raise DatasetError(f"category ids must lie in 0..{NUM_CLASSES - 1}, got "
                           f"{category_ids.min()}..{category_ids.max()}")
    if image is not None and np.shape(image)[:2] != category_ids.shape:
        raise DatasetError(f"mask shape {category_ids.shape} differs from image shape "
                           f"{np.shape(image)[:2]}")
    suffix = Path(image_path).suffix if image_path is not None else ".png"
    paths = sample_paths(root, sample_id, split, suffix)
    if not overwrite and sample_exists(root, sample_id, split):
        raise DatasetError(f"sample {sample_id} exists in {Path(root) / split}; "
                           "pass overwrite=True (--overwrite) to replace it")
    labels = category_ids.astype(np.uint8)
    writers = {
        "Category_ids": lambda tmp: Image.fromarray(labels, mode="L").save(tmp, format="PNG"),
        "Categories": lambda tmp: Image.fromarray(colorize(labels), mode="RGB").save(tmp, format="PNG"),
    }
    if image_path is not None:
        writers["Images"] = lambda tmp: shutil.copyfile(image_path, tmp)
    elif image is not None:
        writers["Images"] = lambda tmp: Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
    _replace_all_atomically({paths[key]: write for key, write in writers.items()})
    add_to_id_list(root, split, [sample_id])
    return {key: paths[key] for key in writers}


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
