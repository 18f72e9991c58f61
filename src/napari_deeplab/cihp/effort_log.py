"""The effort log: one line per Accept saying what the correction cost, kept with the dataset.

``<root>/.napari-deeplab/effort.jsonl`` (:data:`EFFORT_LOG`), one JSON object per line
(format in docs/dataset-format.md). It is append-only and shared by every annotator (and
every host) working into the dataset: each append holds ``effort.jsonl.lock`` (``filelock``),
writes the whole line with one ``os.write`` to a file opened ``O_APPEND``, then fsyncs it. A
writer killed mid-append leaves a torn last line; the next append first ends it with a
newline, so it stays one damaged line, which :func:`read_log` skips and counts. Nothing is ever
rewritten, so no line of another annotator is lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from .. import files
from .layout import DatasetError

EFFORT_LOG = ".napari-deeplab/effort.jsonl"
"""The log, relative to the dataset root."""
EFFORT_FORMAT = "napari-deeplab effort"
"""Every line's ``format`` field."""
EFFORT_VERSION = 1
"""Every line's ``version``; a reader skips (and counts) lines of a newer version."""
LOCK_TIMEOUT_S = 30.0
HALF_LINE_STEP = "effort log half-written"
"""Test-only: :data:`~napari_deeplab.files.CRASH_ENV` set to this makes an append write half
its line, fsync and exit, as a writer killed mid-append would."""


def effort_log_path(root: str | os.PathLike) -> Path:
    """Where the dataset's effort log lives."""
    return Path(root) / EFFORT_LOG


def accept_entry(
    sample_id: str,
    split: str,
    figures: dict,
    *,
    model: str | None,
    prelabelled_at: str | None,
    actions: int,
    active_s: float,
    state: str | None,
    annotator: dict,
    when: str | None = None,
    note: str | None = None,
) -> dict:
    """One line of the log (without ``format`` and ``version``, which :func:`append` adds).

    ``figures``: :func:`napari_deeplab.effort.effort` of the pre-label and the accepted mask;
    ``model``: what made the pre-label (None: there was none, the figures compare with an
    all-background mask); ``state``: the queue's state of the photo before the Accept
    (``corrected``, ``flagged``...); ``annotator``: {user, host, pid}; ``note``: the note of
    the photo's last flag (kept only when there is one)."""
    from ..effort import sparse_pairs

    entry = {
        "id": sample_id,
        "split": split,
        "when": when or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "annotator": dict(annotator),
        "model": model,
        "prelabelled_at": prelabelled_at,
        "pixels": int(figures["pixels"]),
        "changed": int(figures["changed"]),
        "changed_fraction": round(float(figures["changed_fraction"]), 6),
        "confusion": sparse_pairs(figures["confusion"]),
        "actions": int(actions),
        "active_s": round(float(active_s), 3),
        "state": state,
    }
    if note is not None:
        entry["note"] = note
    return entry


def append(root: str | os.PathLike, entry: dict) -> Path:
    """Append ``entry`` as one line of the dataset's effort log (made with its folder if
    missing), under its lock, fsynced. Returns the log's path. ``DatasetError`` (one line) if
    another writer holds the lock for :data:`LOCK_TIMEOUT_S`."""
    path = effort_log_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(
        {"format": EFFORT_FORMAT, "version": EFFORT_VERSION, **entry}, separators=(",", ":")
    )
    data = (line + "\n").encode("utf-8")
    lock = FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise DatasetError(
            f"{lock.lock_file}: another annotator has held the effort log's lock for "
            f"{LOCK_TIMEOUT_S:.0f} s; remove the file if no napari-deeplab is running"
        ) from None
    try:
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a torn line left by a killed writer
            if os.environ.get(files.CRASH_ENV) == HALF_LINE_STEP:
                os.write(fd, data[: len(data) // 2])
                os.fsync(fd)
                files.checkpoint(HALF_LINE_STEP)
            written = os.write(fd, data)
            while written < len(data):  # a short write (a signal, a full network disk)
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            files.fsync_folder(path.parent)
    finally:
        lock.release()
    return path


@dataclass
class EffortLog:
    """The lines of an effort log that could be read, and a line for each one skipped."""

    path: Path
    entries: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    end: int = 0
    """The byte offset after the last complete line read: where to read on from."""


def read_log(root: str | os.PathLike, start: int = 0) -> EffortLog:
    """The dataset's effort log, in the order appended, from byte ``start`` (the
    :attr:`EffortLog.end` of an earlier read: only the lines appended since); an empty one
    when there is no file.

    A line that is not a complete JSON object of this format (a torn append, damage) or is of
    a newer version is skipped, with one line in :attr:`EffortLog.skipped` naming it (lines
    counted from ``start``). An unfinished last line is skipped and not read past."""
    path = effort_log_path(root)
    log = EffortLog(path, end=start)
    try:
        with path.open("rb") as file:
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return log
    log.end = start + data.rfind(b"\n") + 1
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = number == len(lines)  # no newline after it: an append still under way or killed
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict) or entry.get("format") != EFFORT_FORMAT:
            why = "an unfinished append" if torn else "not a line of the effort log (torn?)"
            log.skipped.append(f"{path}: line {number} skipped: {why}")
            continue
        version = entry.get("version")
        if not isinstance(version, int) or version > EFFORT_VERSION:
            log.skipped.append(
                f"{path}: line {number} skipped: version {version!r} is newer than this "
                f"napari-deeplab's {EFFORT_VERSION}; upgrade to read it"
            )
            continue
        log.entries.append(entry)
    return log


def running_figures(entries: list[dict], model: str | None = None) -> str:
    """``mean changed 12.3% over 8 photos`` of ``entries`` (of ``model`` only, if given, with
    ", this model"); "" when there are none."""
    chosen = [e for e in entries if model is None or e.get("model") == model]
    fractions = [e["changed_fraction"] for e in chosen if e.get("model") is not None]
    if not fractions:
        return ""
    mean = sum(fractions) / len(fractions)
    photos = "photo" if len(fractions) == 1 else "photos"
    scope = ", this model" if model is not None else ""
    return f"mean changed {mean:.1%} over {len(fractions)} {photos}{scope}"
