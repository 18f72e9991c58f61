"""The scores file: each sample's uncertainty score, stored with the dataset, shared by writers.

``<root>/<split>/.napari-deeplab/scores.json`` (:data:`SCORES_FILE`), one per split, next to
the writer records; format in docs/dataset-format.md. ``napari-deeplab predict --scores`` and
the review queue's pre-labelling write it, ``napari-deeplab scores`` and the queue's
"least confident first" order read it. Every update reads, merges and replaces the file in
one step under the split's commit lock (:func:`~napari_deeplab.cihp.commit.split_locked`),
so writers on two machines sharing the dataset add to it without losing each other's
entries; readers need no lock (the file is only ever replaced whole).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path

from .. import files
from .commit import split_locked
from .layout import DatasetError, check_sample_id, normal_id, split_folder

SCORES_FILE = ".napari-deeplab/scores.json"
"""The scores file, relative to its split folder."""

SCORES_FORMAT = "napari-deeplab scores"
"""The file's ``format`` field."""

SCORES_VERSION = 1
"""The file's ``version``; a reader refuses a newer one."""

ENTRY_KEYS = ("score", "low_fraction", "regions", "model", "when")
"""The fields of one sample's entry (docs/dataset-format.md)."""


def scores_path(root: str | os.PathLike, split: str | None = "Training") -> Path:
    """Where the split's scores file lives."""
    return split_folder(root, split) / SCORES_FILE


def read_scores(root: str | os.PathLike, split: str | None = "Training") -> dict[str, dict]:
    """The split's scores: sample id -> entry (:data:`ENTRY_KEYS`); {} when there is no file.

    Raises :class:`~napari_deeplab.cihp.DatasetError` (one line naming the file) for a file
    of a newer version or one that is not a scores file."""
    return _read(scores_path(root, split))


def record_scores(
    root: str | os.PathLike,
    split: str | None,
    scores: Mapping[str, Mapping],
    *,
    model: str = "",
    when: str | None = None,
) -> Path:
    """Add or replace the entries of ``scores`` (sample id -> {"score", "low_fraction",
    "regions"}) in the split's scores file, keeping every other entry; under the split's
    commit lock, replaced atomically. ``model`` names the model that scored them, ``when``
    (ISO 8601 UTC, default now) when. Returns the file's path."""
    split_dir = split_folder(root, split)
    path = split_dir / SCORES_FILE
    when = when or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    new = {}
    for sample_id, entry in scores.items():
        key = normal_id(check_sample_id(sample_id))
        new[key] = {
            "score": round(float(entry["score"]), 6),
            "low_fraction": round(float(entry.get("low_fraction", 0.0)), 6),
            "regions": [dict(region) for region in entry.get("regions", ())],
            "model": str(entry.get("model", model)),
            "when": str(entry.get("when", when)),
        }
    with split_locked(split_dir):
        samples = _read(path)
        samples.update(new)
        document = {
            "format": SCORES_FORMAT,
            "version": SCORES_VERSION,
            "samples": dict(sorted(samples.items())),
        }
        text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
        files.write_file_atomically(path, lambda staged: Path(staged).write_text(text, "utf-8"))
    return path


def ranked(scores: Mapping[str, Mapping]) -> list[str]:
    """Sample ids of ``scores``, least confident (highest score) first; ties by id."""
    return sorted(scores, key=lambda sample_id: (-float(scores[sample_id]["score"]), sample_id))


def _read(path: Path) -> dict[str, dict]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the scores file ({error})") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != SCORES_FORMAT:
        raise DatasetError(
            f"{path}: not a napari-deeplab scores file; remove it (predict --scores "
            "writes it again)"
        )
    version = document.get("version")
    if not isinstance(version, int) or version > SCORES_VERSION:
        raise DatasetError(
            f"{path}: scores file version {version!r} is newer than this napari-deeplab "
            f"reads ({SCORES_VERSION}); upgrade napari-deeplab"
        )
    samples = document.get("samples")
    if not isinstance(samples, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("score"), (int, float))
        for entry in samples.values()
    ):
        raise DatasetError(
            f"{path}: the scores file's samples are damaged; remove it (predict --scores "
            "writes it again)"
        )
    return samples
