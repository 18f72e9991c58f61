"""The model's pre-label of each photo of a review queue, kept as it was made.

The queue's draft (``<queue folder>/<id>.png``) starts as the model's pre-label and is replaced
by the annotator's corrections, so at Accept time it no longer says what the model proposed.
The pre-label is therefore kept on its own: ``<queue folder>/prelabel/<id>.png`` (the class
ids, as the drafts) and ``<id>.json`` (``{"format", "version", "model", "when"}``: the model
that made it and when), each written atomically, the PNG first. A newer pre-label of the same
photo (another model) replaces both. The effort log compares the accepted mask with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from . import cihp, files

PRELABEL_FOLDER = "prelabel"
PRELABEL_FORMAT = "napari-deeplab pre-label"
PRELABEL_VERSION = 1


@dataclass
class KeptPrelabel:
    labels: np.ndarray  # H x W uint8 class ids
    model: str | None  # the model's source (a path or hub id); None if its record is missing
    when: str | None  # ISO 8601 UTC


def prelabel_paths(queue_folder: str | os.PathLike, sample_id: str) -> tuple[Path, Path]:
    """(PNG, JSON) of the kept pre-label of ``sample_id``."""
    folder = Path(queue_folder) / PRELABEL_FOLDER
    name = cihp.check_sample_id(sample_id)
    return folder / f"{name}.png", folder / f"{name}.json"


def keep_prelabel(
    queue_folder: str | os.PathLike, sample_id: str, labels: np.ndarray, model: str
) -> None:
    """Keep the model's pre-label of ``sample_id`` (H x W class ids) and which ``model`` made
    it, now."""
    png, record = prelabel_paths(queue_folder, sample_id)
    labels = np.asarray(labels, np.uint8)
    files.write_file_atomically(png, lambda tmp: cihp.save_label_png(labels, tmp))
    text = json.dumps(
        {
            "format": PRELABEL_FORMAT,
            "version": PRELABEL_VERSION,
            "model": str(model),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    files.write_file_atomically(record, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_prelabel(queue_folder: str | os.PathLike, sample_id: str) -> KeptPrelabel | None:
    """The kept pre-label of ``sample_id``, or None (none kept, or its PNG unreadable). A
    missing or damaged record leaves ``model`` and ``when`` None."""
    png, record = prelabel_paths(queue_folder, sample_id)
    try:
        with Image.open(png) as image:
            labels = np.array(image)
    except (OSError, ValueError, SyntaxError):
        return None
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
        model, when = str(stored["model"]), stored.get("when")
    except (OSError, ValueError, KeyError, TypeError):
        model, when = None, None
    return KeptPrelabel(labels, model, when)
