"""Pre-label photo files into a CIHP dataset folder: the batch job behind ``napari-deeplab predict``.

:func:`prelabel_files` is a generator that yields one :class:`FileOutcome` per photo, so the
command line drives it with a progress bar and napari from a worker thread; closing it
(Cancel, Ctrl+C) stops after the photo in hand, and everything written so far is complete.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cihp
from .photos import list_photos, read_photo

IMAGE_SUFFIXES = cihp.PHOTO_SUFFIXES
"""Suffixes of the photos taken from a folder (files named on their own are always tried)."""


class InputError(ValueError):
    """The inputs cannot be processed as a whole (e.g. two photos with one id); nothing was written."""


@dataclass
class FileOutcome:
    """What happened to one input: ``status`` is ``"written"``, ``"skipped"`` or ``"failed"``."""

    path: Path | str  # a URI as it is (the Ray engine)
    sample_id: str
    status: str
    message: str = ""


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files, folders (their photos, sorted) and glob patterns -> (photo paths, problems).

    A problem is a one-line message about an input that names nothing (missing file, empty
    glob); the caller reports it and goes on.
    """
    paths, problems = [], []
    for entry in inputs:
        entry = os.fspath(entry)
        path = Path(entry).expanduser()
        if path.is_dir():
            found = list_photos(path)
            if not found:
                problems.append(f"{entry}: no photos in this folder ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif path.exists():  # a FIFO would block its reader: not a photo
            problems.append(
                f"{entry}: not a regular file (a FIFO, socket or device); give photo files"
            )
        elif glob.has_magic(entry):
            found = sorted(
                Path(p) for p in glob.glob(os.path.expanduser(entry)) if Path(p).is_file()
            )
            if not found:
                problems.append(f"{entry}: no file matches this pattern")
            paths += found
        else:
            problems.append(f"{entry}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique, problems


def check_unique_ids(
    locations: Sequence, id_of: Callable[[Any], str] = cihp.sample_id_of_file
) -> list[str]:
    """The sample id of each of ``locations`` (photo paths, or what ``id_of`` takes), in order.

    Raises :class:`InputError` if two share an id, ids differing only in case or Unicode
    normalisation included (one file on macOS and Windows), or
    :class:`~napari_deeplab.cihp.DatasetError` if an id cannot be one
    (:func:`~napari_deeplab.cihp.check_new_sample_id`). ``id_of``: a location's id, default its
    file stem with dots as ``_`` (:func:`~napari_deeplab.cihp.sample_id_of_file`; the Ray
    engine's also reads URIs: :func:`~napari_deeplab.ray_engine.sample_id_of`)."""
    seen: dict[str, Any] = {}
    ids = []
    for location in locations:
        sample_id = cihp.check_new_sample_id(id_of(location))
        key = cihp.normal_id(sample_id).casefold()
        if key in seen:
            raise InputError(
                f"two inputs have the id {sample_id!r} (ids differing only in case "
                f"are one on macOS and Windows): {seen[key]} and {location}; rename "
                "one (ids are file stems, their dots written as '_')"
            )
        seen[key] = location
        ids.append(sample_id)
    return ids


def prelabel_files(
    paths: Sequence[Path],
    model,
    out: str | os.PathLike,
    *,
    split: str = "Training",
    batch_size: int = 4,
    overwrite: bool = False,
    workers: int = 1,
    clock=None,
    max_in_flight: int | None = None,
    scores: bool = False,
    people: bool = False,
    tta: str | None = None,
    per_person: int | None = None,
) -> Iterator[FileOutcome]:
    """Segment each photo and write it as a CIHP sample under ``out``; yield one outcome per photo.

    Photos already in the split are skipped unless ``overwrite``: those listed when the batch
    starts are not even read, and the decision is taken again for each sample when it is
    committed (under the split's lock), so a sample that another writer (the review queue,
    napari, a second ``predict``) commits meanwhile is kept and reported as skipped.
    Unreadable photos and failed writes are yielded as ``"failed"`` with the reason, and the
    batch goes on. Outcomes come in input order. The stages are
    :func:`napari_deeplab.inference.segment_pipeline`'s, with reading the photo before and
    :func:`stage_photo` and :func:`commit_outcomes` after.

    Parameters
    ----------
    paths : sequence of Path
        Photo files (:func:`expand_inputs`); their stems are the sample ids, unique
        (:func:`check_unique_ids`).
    model : keras.Model
        One of ours with :data:`~napari_deeplab.cihp.NUM_CLASSES` classes.
    out : path-like
        The dataset root.
    split : str
        The split written to (:data:`~napari_deeplab.cihp.SPLIT_ID_FILES`).
    batch_size : int
        Photos per model call.
    overwrite : bool
        Replace samples already in the split.
    workers : int
        > 1 reads, resizes, upsamples, encodes and stages the files in that many threads while
        the model runs in the calling thread, and commits in input order, in groups, in one
        more thread (:mod:`napari_deeplab.pipeline`). The files and the id list are the same,
        byte for byte, as with ``workers=1``, which does everything in the calling thread.
    clock : napari_deeplab.pipeline.StageClock, optional
        Sums the CPU time of the stages ``read``, ``resize``, ``model``, ``upsample``,
        ``encode`` (and staging the files) and ``commit``.
    max_in_flight : int, optional
        At most this many photos between reading and reporting.
    scores : bool
        Also compute each photo's confidence and uncertainty score
        (:func:`napari_deeplab.scoring.score_photo`, stage ``score``) and record those of the
        written photos in the split's scores file (:func:`~napari_deeplab.cihp.record_scores`)
        after each group's commit.
    people : bool
        Also propose the people of each photo (:func:`napari_deeplab.people.propose_people`,
        stage ``people``, the same as napari's Propose people) and write them as the sample's
        ``Human_ids`` and ``Humans``.
    tta : None, "none" or "flip"
        Test-time augmentation (:func:`napari_deeplab.inference.inference_model`).
    per_person : int, optional
        Re-parse every proposed person of at least this many pixels on a crop around them
        (:func:`napari_deeplab.reparse.reparse_with_model`, stage ``per-person``); the model
        then runs in one thread (``workers`` is 1).

    Yields
    ------
    FileOutcome
        One per photo: ``"written"``, ``"skipped"`` or ``"failed"``.
    """
    from .inference import segment_pipeline
    from .model import require_classes
    from .pipeline import Failed, timed

    require_classes(model, cihp.NUM_CLASSES, f"model {model.name!r}")
    cihp.check_split(split)
    check_unique_ids(paths)
    ids = {path: cihp.sample_id_of_file(path) for path in paths}
    skipped = listed_outcomes([(path, ids[path]) for path in paths], out, split, overwrite)
    yield from skipped.values()
    todo = [path for path in paths if ids[path] not in skipped]

    if per_person is not None:
        workers = 1  # the crops' model calls run in the finish stage: one thread for the model

    def read(_, path):
        try:
            with timed(clock, "read"):
                photo = read_photo(path)
                return photo, ((path, photo) if per_person is not None else path)
        except ValueError as error:
            return Failed(FileOutcome(path, ids[path], "failed", str(error)))

    photo_scores: dict[Path, dict] = {}

    def stage(path, labels, confidence):
        if per_person is not None:
            from .reparse import reparse_with_model

            path, photo = path
            with timed(clock, "per-person"):
                labels, _ = reparse_with_model(photo, labels, model, per_person)
        if scores:
            with timed(clock, "score"):
                photo_scores[path] = score_entry(labels, confidence)
        human_ids = None
        if people:
            from .people import propose_people

            with timed(clock, "people"):
                human_ids = propose_people(labels)
        with timed(clock, "encode"):
            return stage_photo(
                out, path, labels, split=split, overwrite=overwrite, human_ids=human_ids
            )

    def commit(results):
        with timed(clock, "commit", len(results)):
            outcomes = commit_outcomes(out, split, results)
        if scores:
            with timed(clock, "score"):
                record_written_scores(out, split, outcomes, photo_scores, model.name)
        return outcomes

    yield from segment_pipeline(
        todo,
        model,
        photo_of=read,
        result_of=stage,
        confidence=scores,
        commit=commit,
        discard=_discard,
        batch_size=batch_size,
        workers=workers,
        max_in_flight=max_in_flight,
        clock=clock,
        tta=tta,
    )


def score_entry(labels: np.ndarray, confidence: np.ndarray) -> dict:
    """A photo's scores-file entry (score, low_fraction, regions) from its labels (H x W uint8)
    and confidence (H x W float32) (:func:`napari_deeplab.scoring.score_photo`)."""
    from .scoring import score_photo

    scored = score_photo(labels, confidence)
    return {
        "score": scored.score,
        "low_fraction": scored.low_fraction,
        "regions": [region.to_json() for region in scored.regions],
    }


def record_written_scores(
    out, split: str, outcomes: Sequence[FileOutcome], photo_scores: dict, model_name: str
) -> None:
    """Record in the split's scores file the entries (``photo_scores``: what each outcome
    names -> :func:`score_entry`) of the ``"written"`` ``outcomes``; the entries are removed
    from ``photo_scores``. A failure to write the file fails nothing that was committed: it
    is reported as a warning."""
    written = {}
    for outcome in outcomes:
        entry = photo_scores.pop(outcome.path, None)
        if entry is not None and outcome.status == "written":
            written[outcome.sample_id] = entry
    if not written:
        return
    try:
        cihp.record_scores(out, split, written, model=model_name)
    except (OSError, cihp.DatasetError) as error:
        import warnings

        warnings.warn(f"the scores were not recorded: {error}", stacklevel=2)


def stage_photo(
    out,
    photo: Path,
    labels: np.ndarray,
    *,
    split: str,
    overwrite: bool,
    sample_id: str | None = None,
    human_ids: np.ndarray | None = None,
) -> tuple[Path, cihp.StagedSample | FileOutcome]:
    """Encode and stage the sample of one labelled photo, to be committed by
    :func:`commit_outcomes` (``predict``'s two engines both write through these two).

    Parameters
    ----------
    out : path-like
        The dataset root.
    photo : Path
        The photo file, copied into ``Images/`` (converted to PNG unless JPEG or PNG).
    labels : ndarray
        H x W uint8 class ids, at the photo's size.
    split : str
        The split written to.
    overwrite : bool
        Replace a sample of that id.
    sample_id : str, optional
        The sample's id; default :func:`~napari_deeplab.cihp.sample_id_of_file` of the photo.
    human_ids : ndarray, optional
        H x W uint8 people (0 none, 1..N), written as ``Human_ids`` and ``Humans``.

    Returns
    -------
    (Path, StagedSample or FileOutcome)
        ``photo`` and its staged sample (:func:`~napari_deeplab.cihp.stage_sample`), or the
        ``"failed"`` outcome saying why it could not be staged.
    """
    try:
        return photo, cihp.stage_sample(
            out,
            sample_id or cihp.sample_id_of_file(photo),
            labels,
            split=split,
            image_path=photo,
            human_ids=human_ids,
            overwrite=overwrite,
        )
    except (OSError, cihp.DatasetError) as error:
        return photo, write_failure(photo, error)


def listed_outcomes(
    photos: Sequence[tuple[Path | str, str]], out, split: str, overwrite: bool
) -> dict[str, FileOutcome]:
    """The "skipped" outcome, by id, of each of ``photos`` ((what the outcome names, sample id)
    pairs, in order) whose id the split already lists: such photos are not even read. None
    with ``overwrite``. (Listing the split also completes a commit a crashed writer left.)"""
    listed = set(cihp.list_samples(out, split)) if Path(out, split).is_dir() else set()
    if overwrite:
        return {}
    return {
        sample_id: FileOutcome(
            path, sample_id, "skipped", f"already in {Path(out) / split}; --overwrite replaces it"
        )
        for path, sample_id in photos
        if cihp.normal_id(sample_id) in listed
    }


def commit_outcomes(out, split: str, results: Sequence[tuple[Path, object]]) -> list[FileOutcome]:
    """Commit ``(photo path, staged sample)`` pairs (:func:`~napari_deeplab.cihp.stage_sample`)
    of one split as one group, in order; a :class:`FileOutcome` in place of a staged sample
    (one that failed earlier) is passed through. Returns one outcome per pair."""
    staged = [sample for _, sample in results if isinstance(sample, cihp.StagedSample)]
    errors: Iterator[Exception | None]
    try:
        errors = iter(cihp.commit_samples(staged))
    except (OSError, cihp.DatasetError) as error:
        errors = iter([error] * len(staged))
    outcomes = []
    for path, sample in results:
        if isinstance(sample, FileOutcome):
            outcomes.append(sample)
        else:
            assert isinstance(sample, cihp.StagedSample)
            outcomes.append(_commit_outcome(out, path, split, next(errors), sample))
    return outcomes


def _discard(result: tuple[Path, object]) -> None:
    if isinstance(result[1], cihp.StagedSample):
        result[1].discard()


def _commit_outcome(
    out, path: Path, split: str, error: Exception | None, sample: cihp.StagedSample
) -> FileOutcome:
    """The outcome of committing ``path``'s ``sample``: written (no ``error``; its message the
    sample's note, such as a photo converted to PNG), skipped (another writer committed it
    first) or failed."""
    if error is None:
        return FileOutcome(path, sample.sample_id, "written", sample.note)
    if isinstance(error, cihp.SampleExistsError):
        return FileOutcome(
            path,
            sample.sample_id,
            "skipped",
            f"committed to {Path(out) / split} by "
            "another writer while this batch ran; kept (--overwrite replaces it)",
        )
    return write_failure(path, error)


def write_failure(path: Path, error: Exception) -> FileOutcome:
    """The outcome of a photo whose sample could not be staged or committed (``error`` says why)."""
    return FileOutcome(
        path, cihp.sample_id_of_file(path), "failed", f"cannot write the sample ({error})"
    )
