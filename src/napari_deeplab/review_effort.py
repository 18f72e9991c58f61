"""The review queue's side of the effort log: the model's pre-label of each photo, kept as it
was made, and the line each Accept appends (:func:`log_accept`).

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
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import cihp, files
from .cihp import effort_log
from .effort import effort

if TYPE_CHECKING:
    from .review import ReviewQueue

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


UNKNOWN_MODEL = "?"
"""The model of a kept pre-label whose record is missing or damaged."""


def log_accept(
    queue: ReviewQueue,
    sample_id: str,
    accepted: np.ndarray,
    *,
    state: str | None,
    actions: int,
    active_s: float,
) -> dict:
    """Append the effort of the Accept of ``sample_id`` (``accepted``: the H x W class ids
    exported) to the dataset's effort log; return the entry.

    The accepted mask is compared with the kept pre-label; without one (a photo painted from
    an empty mask, or pre-labelled before pre-labels were kept) with an all-background mask,
    and the entry's ``model`` is None. ``state``: the photo's queue state before the Accept;
    ``actions`` and ``active_s``: what the widget measured while the photo was shown."""
    accepted = np.asarray(accepted)
    kept = load_prelabel(queue.folder, sample_id)
    if kept is not None and kept.labels.shape != accepted.shape:
        kept = None  # the photo was replaced since: its pre-label says nothing of this mask
    prelabel = np.zeros(accepted.shape, np.uint8) if kept is None else kept.labels
    entry = effort_log.accept_entry(
        sample_id,
        queue.split,
        effort(prelabel, accepted),
        model=None if kept is None else (kept.model or UNKNOWN_MODEL),
        prelabelled_at=None if kept is None else kept.when,
        actions=actions,
        active_s=active_s,
        state=state,
        annotator=queue.me,
        note=queue.note(sample_id),
    )
    effort_log.append(queue.root, entry)
    return entry


def figures_line(entries: list[dict], model: str | None) -> str:
    """The running figures the queue shows: ``Corrections: mean changed 12.3% over 8 photos,
    this model; 15.0% over 20 photos in all``; "" before the first Accept with a pre-label."""
    everything = effort_log.running_figures(entries)
    if not everything:
        return ""
    this = effort_log.running_figures(entries, model) if model else ""
    if not this:
        return f"Corrections: {everything}"
    if len({e.get("model") for e in entries if e.get("model") is not None}) == 1:
        return f"Corrections: {this}"
    return f"Corrections: {this}; {everything.removeprefix('mean changed ')} in all"
