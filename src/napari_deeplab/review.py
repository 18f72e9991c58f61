"""A review queue: a folder of photos (or a CIHP split) worked through one by one into a dataset.

Each photo is ``new``, ``pre-labelled`` (the model's draft is saved), ``corrected`` (the
annotator's draft is saved) or ``exported`` (written into the dataset's split). Drafts and the
queue's position live in the dataset folder (``<root>/.napari-deeplab/review/``), so closing
napari and opening the same folder again resumes where the work stopped. No napari here: the
widget in ``_napari.review_widget`` drives it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import cihp
from .prelabel import IMAGE_SUFFIXES

STATES = ("new", "pre-labelled", "corrected", "exported")


@dataclass
class QueueItem:
    sample_id: str
    photo: Path


def queue_items(source: str | os.PathLike) -> list[QueueItem]:
    """The photos of ``source``: a folder of photos, or a CIHP split (or root, its first split)."""
    source = Path(source)
    images = source / "Images"
    if not images.is_dir():
        split = next((s for s in cihp.SPLIT_ID_FILES if (source / s / "Images").is_dir()), None)
        images = source / split / "Images" if split else None
    folder = images if images is not None else source
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no such folder")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))
    if not photos:
        raise FileNotFoundError(f"{source}: no photos ({', '.join(IMAGE_SUFFIXES)})")
    items = [QueueItem(p.stem, p) for p in photos]
    ids = [item.sample_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: two photos share a file stem; ids must be unique")
    for sample_id in ids:
        cihp.check_sample_id(sample_id)
    return items


class ReviewQueue:
    """The state of reviewing ``source`` into ``<root>/<split>``."""

    def __init__(self, source: str | os.PathLike, root: str | os.PathLike, split: str = "Training"):
        self.source = Path(source).resolve()
        self.root = Path(root)
        self.split = cihp.check_split(split)
        self.items = queue_items(self.source)
        key = hashlib.sha1(str(self.source).encode()).hexdigest()[:12]
        self.folder = self.root / ".napari-deeplab" / "review" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._state_file = self.folder / "queue.json"
        stored = json.loads(self._state_file.read_text()) if self._state_file.exists() else {}
        self.position = min(int(stored.get("position", 0)), len(self.items) - 1)
        self._states: dict[str, str] = stored.get("states", {})
        exported = set(cihp.read_id_list(self.root, self.split))
        for item in self.items:
            if item.sample_id in exported:
                self._states[item.sample_id] = "exported"

    def state(self, sample_id: str) -> str:
        return self._states.get(sample_id, "new")

    def draft_path(self, sample_id: str) -> Path:
        return self.folder / f"{cihp.check_sample_id(sample_id)}.png"

    def load_draft(self, sample_id: str) -> np.ndarray | None:
        """The saved draft (H x W uint8 class ids), or None."""
        path = self.draft_path(sample_id)
        return np.array(Image.open(path)) if path.exists() else None

    def save_draft(self, sample_id: str, labels: np.ndarray, corrected: bool) -> None:
        """Keep a draft; ``corrected`` marks the annotator's (else the model's) work."""
        path = self.draft_path(sample_id)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(np.asarray(labels, np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
        if corrected:
            self._states[sample_id] = "corrected"
        elif self.state(sample_id) == "new":
            self._states[sample_id] = "pre-labelled"
        self._save()

    def accept(self, sample_id: str, labels: np.ndarray, human_ids: np.ndarray | None = None) -> None:
        """Export the sample into the dataset (its photo copied byte for byte)."""
        item = self.item(sample_id)
        cihp.write_sample(self.root, sample_id, labels, split=self.split, image_path=item.photo,
                          human_ids=human_ids, overwrite=True)
        self.save_draft(sample_id, labels, corrected=True)
        self._states[sample_id] = "exported"
        self._save()

    def item(self, sample_id: str) -> QueueItem:
        return next(item for item in self.items if item.sample_id == sample_id)

    def go_to(self, position: int) -> None:
        """Make ``position`` the photo in hand (remembered for the next session)."""
        self.position = max(0, min(position, len(self.items) - 1))
        self._save()

    def move(self, step: int, skip_exported: bool = False) -> int:
        """Move the position by ``step`` (skipping exported photos if asked); return it."""
        position = self.position
        while step and 0 <= position + step < len(self.items):
            position += step
            if not (skip_exported and self.state(self.items[position].sample_id) == "exported"):
                self.position = position
                break
        self._save()
        return self.position

    def _save(self) -> None:
        tmp = self._state_file.with_name(".queue.json.tmp")
        tmp.write_text(json.dumps({"source": str(self.source), "position": self.position,
                                   "states": self._states}, indent=1))
        os.replace(tmp, self._state_file)
