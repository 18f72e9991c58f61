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
import time
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
    """The state of reviewing ``source`` into ``<root>/<split>``.

    The state file (``queue.json``: position and each photo's state) is checked when loaded. A
    damaged one (not JSON, truncated, wrong types, a position out of range, an unknown state)
    is moved aside as ``queue.json.corrupt-<time>`` and the state rebuilt from the disk: the
    exported samples from the split's id list, and every draft found counted as ``corrected``
    (edit-protected: better to protect a model draft than to expose an annotator's). What
    happened is in :attr:`warnings`, one line each, naming the files.
    """

    def __init__(self, source: str | os.PathLike, root: str | os.PathLike, split: str = "Training"):
        self.source = Path(source).resolve()
        self.root = Path(root)
        self.split = cihp.check_split(split)
        self.items = queue_items(self.source)
        key = hashlib.sha1(str(self.source).encode()).hexdigest()[:12]
        self.folder = self.root / ".napari-deeplab" / "review" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        cihp.remove_stale_temporaries(self.folder)
        self._state_file = self.folder / "queue.json"
        self.warnings: list[str] = []
        self.position, self._states = self._load_state()
        exported = set(cihp.list_samples(self.root, self.split)) \
            if (self.root / self.split).is_dir() else set()
        for item in self.items:
            if item.sample_id in exported:
                self._states[item.sample_id] = "exported"
            elif self.state(item.sample_id) == "new" and self.draft_path(item.sample_id).exists():
                self._states[item.sample_id] = "corrected"  # a draft whose state was never saved

    def _load_state(self) -> tuple[int, dict[str, str]]:
        """(position, states) from the state file; rebuilt when it is missing or damaged."""
        if not self._state_file.exists():
            return 0, {}
        try:
            return _parse_state(self._state_file.read_bytes(), len(self.items))
        except ValueError as error:
            aside = self._state_file.with_name(
                f"{self._state_file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self._state_file, aside)
            self.warnings.append(
                f"{self._state_file}: the review queue's state was damaged ({error}); moved to "
                f"{aside.name} and rebuilt from the dataset and the drafts (drafts marked corrected)")
            return self._rebuilt_state()

    def _rebuilt_state(self) -> tuple[int, dict[str, str]]:
        states = {item.sample_id: "corrected" for item in self.items
                  if self.draft_path(item.sample_id).exists()}
        return 0, states

    def state(self, sample_id: str) -> str:
        return self._states.get(sample_id, "new")

    def draft_path(self, sample_id: str) -> Path:
        return self.folder / f"{cihp.check_sample_id(sample_id)}.png"

    def load_draft(self, sample_id: str) -> np.ndarray | None:
        """The saved draft (H x W uint8 class ids), or None. A damaged draft is moved aside
        (``<id>.png.corrupt-<time>``, named in :attr:`warnings`) and None returned."""
        path = self.draft_path(sample_id)
        if not path.exists():
            return None
        try:
            with Image.open(path) as draft:
                return np.array(draft)
        except (OSError, ValueError, SyntaxError) as error:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            self.warnings.append(f"{path}: the draft cannot be read ({error}); moved to {aside.name}")
            return None

    def save_draft(self, sample_id: str, labels: np.ndarray, corrected: bool) -> None:
        """Keep a draft; ``corrected`` marks the annotator's (else the model's) work.

        The draft and the state file are each replaced atomically; an annotator's draft is
        marked ``corrected`` before it is written, so a crash in between protects it."""
        labels = np.asarray(labels, np.uint8)
        if corrected:
            self._states[sample_id] = "corrected"
            self._save()
        cihp.write_file_atomically(self.draft_path(sample_id),
                                   lambda tmp: Image.fromarray(labels).save(tmp, format="PNG"))
        if not corrected and self.state(sample_id) == "new":
            self._states[sample_id] = "pre-labelled"
            self._save()

    def accept(self, sample_id: str, labels: np.ndarray, human_ids: np.ndarray | None = None) -> None:
        """Export the sample into the dataset (its photo copied byte for byte; the dataset's
        commit protocol, replacing an earlier export of it)."""
        item = self.item(sample_id)
        cihp.write_sample(self.root, sample_id, labels, split=self.split, image_path=item.photo,
                          human_ids=human_ids, overwrite=True, writer_tool="review")
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
        text = json.dumps({"source": str(self.source), "position": self.position,
                           "states": self._states}, indent=1)
        cihp.write_file_atomically(self._state_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _parse_state(data: bytes, item_count: int) -> tuple[int, dict[str, str]]:
    """Validate a state file's content; ``ValueError`` says what is wrong."""
    try:
        stored = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(stored, dict):
        raise ValueError("not a JSON object")
    position = stored.get("position", 0)
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValueError(f"position {position!r} is not a photo's place in the queue")
    position = min(position, item_count - 1)  # photos may have been removed since
    states = stored.get("states", {})
    if not isinstance(states, dict):
        raise ValueError("states is not a mapping of ids to states")
    for sample_id, state in states.items():
        if state not in STATES:
            raise ValueError(f"unknown state {state!r} of {sample_id!r}")
    return position, dict(states)
