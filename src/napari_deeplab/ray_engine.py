"""Pre-label photos on a Ray cluster with Ray Data: ``napari-deeplab predict --engine ray``.

The same job as :func:`~napari_deeplab.prelabel.prelabel_files`, spread over a cluster, with the
same output byte for byte. Three stages stream into each other with Ray Data's backpressure:

1. **read** (tasks on every node): the photo's bytes from a path every node sees or a URI
   Ray Data reads (``s3://``, ``gs://``, ...), decoded with the rules of
   :func:`~napari_deeplab.photos.read_photo` (pixel limit, multi-page files, ...); a photo
   that cannot be read or decoded becomes a ``failed`` outcome here, never an exception, so a
   corrupt file is not retried and stops nothing.
2. **segment** (a pool of ``workers`` actors, ``gpus_per_worker`` GPUs each): the model is
   loaded once per actor and runs :func:`~napari_deeplab.inference.segment_stack` on each
   batch; the labels leave the actor at the photo's size as uint8 (its 512 x 512 x 20 float32
   logits would be 20 MB per photo). An actor that dies is restarted and its batches redone.
3. **write** (tasks): each sample is encoded and staged (:func:`~napari_deeplab.prelabel.stage_photo`)
   and committed, in groups, by the task that wrote it, with the dataset's commit protocol
   (:func:`~napari_deeplab.prelabel.commit_outcomes`), so a retried task cannot leave half a
   sample and a re-run skips what is committed.

Ray is imported only here, and only when this engine is used (``pip install
'napari-deeplab[ray]'``). The dataset root must be a folder every node sees (a shared
filesystem): see docs/scale.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import re
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import cihp, photos
from .photos import is_photo_name, read_photo
from .prelabel import (
    IMAGE_SUFFIXES,
    FileOutcome,
    check_unique_ids,
    commit_outcomes,
    expand_inputs,
    listed_outcomes,
    stage_photo,
)

RAY_MISSING = "the Ray engine needs Ray: pip install 'napari-deeplab[ray]'"

KILL_AT_ENV = "NAPARI_DEEPLAB_RAY_KILL_AT"
"""Test hook: ``N`` or ``N:MARKER`` makes the first model actor that reaches its N-th batch
exit abruptly (``os._exit``), as a crashed worker would, once: it first creates the file
``MARKER`` (default: a temporary file of the job), and an actor finding it there goes on.
Unset, nothing happens."""

NO_PROGRESS_TIMEOUT_S = 600.0
"""A job in which no stage takes or delivers anything for this long fails (a cluster without
the CPUs or GPUs asked for, a stuck filesystem) instead of waiting for ever."""

ACTOR_CPUS = 0.5
"""Logical CPUs reserved per model actor: fractional, so that on a small node the actors
cannot take every CPU and starve the read and write tasks that feed them (the job would hang)."""

GPU_ACTOR_CPUS = 4.0
"""Logical CPUs reserved per model actor with GPUs: its threads that resize the photos to the
model's input and upsample the labels (a GPU labels photos faster than one core prepares them)."""

COMMIT_GROUP = 16
"""Samples committed together by one write task: one lock, journal and id-list rewrite each."""

MAX_INPUT_BLOCKS = 10_000
"""The list of photos is cut into at most this many blocks (read tasks): two photos each for a
small job, so that the first reach the actors early; about 100 each for a million photos."""

FORWARDED_ENV = ("KERAS_BACKEND", photos.MAX_PIXELS_ENV)
"""Environment variables that the workers of a cluster this engine starts or joins take from
the caller: the Keras backend and the pixel limit (caches, credentials and the like are each
node's own)."""


class RayEngineError(RuntimeError):
    """The Ray job cannot run or stopped as a whole (no Ray, no progress, a model that does
    not load); the message is one line that says what to do."""


def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI with a scheme (``s3://bucket/key``) rather than a path."""
    scheme, separator, _ = location.partition("://")
    return bool(separator) and scheme.isidentifier() and len(scheme) > 1


def sample_id_of(location: str) -> str:
    """The sample id of a photo: :func:`~napari_deeplab.cihp.sample_id_of_file` of its name
    (``s3://b/photos/0005008.jpg`` -> ``0005008``; a URI's percent-escapes decoded)."""
    if is_uri(location):
        location = urllib.parse.unquote(posixpath.basename(location.partition("://")[2]))
    return cihp.sample_id_of_file(location)


def expand_ray_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Like :func:`~napari_deeplab.prelabel.expand_inputs`, for URIs as well as paths.

    Local entries go through ``expand_inputs`` (absolute paths: every node resolves them the
    same way on a shared filesystem); a URI of a file stays as it is, and a URI of a folder
    (prefix) lists its photos, sorted. Returns (photo locations, one-line problems).
    """
    locations, problems = [], []
    for entry in inputs:
        entry = os.fspath(entry)
        if not is_uri(entry):
            paths, local_problems = expand_inputs([entry])
            locations += [str(path) for path in paths]
            problems += local_problems
            continue
        try:
            found = _list_uri(entry)
        except (OSError, ValueError) as error:
            problems.append(f"{entry}: cannot list it ({_first_line(error)})")
            continue
        if not found:
            problems.append(
                f"{entry}: no such file, or no photos under this prefix "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        locations += found
    return list(dict.fromkeys(locations)), problems


def _list_uri(uri: str) -> list[str]:
    """The URI itself if it names a file, else the photos directly under it (sorted)."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [uri]
    if info.type != fs.FileType.Directory:
        return []
    scheme = uri.partition("://")[0]
    return sorted(
        f"{scheme}://{urllib.parse.quote(entry.path)}"
        for entry in filesystem.get_file_info(fs.FileSelector(path, recursive=False))
        if entry.type == fs.FileType.File and is_photo_name(entry.base_name)
    )


def prelabel_with_ray(
    inputs: Sequence[str],
    model_source,
    out: str | os.PathLike,
    *,
    split: str = "Training",
    batch_size: int = 4,
    overwrite: bool = False,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    precision: str = "float32",
    cpus_per_worker: float | None = None,
    commit_group: int = COMMIT_GROUP,
    no_progress_timeout_s: float = NO_PROGRESS_TIMEOUT_S,
) -> Iterator[FileOutcome]:
    """Pre-label photo files or URIs into the CIHP dataset ``out`` on a Ray cluster; yield one
    :class:`~napari_deeplab.prelabel.FileOutcome` per photo, as each is committed.

    ``inputs``: photo paths (every node must see them) or URIs; folders are expanded by
    :func:`expand_ray_inputs` beforehand. ``model_source``: anything
    :func:`~napari_deeplab.model.load_model` accepts that every node can resolve (a path on the
    shared filesystem, a hub id). ``workers`` model actors with ``gpus_per_worker`` GPUs and
    ``cpus_per_worker`` CPUs each. ``address``: None starts a local cluster for this job (shut
    down at the end), ``"auto"`` or ``"HOST:PORT"`` joins one; a Ray already initialised in
    this process is used as it is. Photos already listed in the split are skipped before
    anything is read (unless ``overwrite``); outcomes stream back in completion order.
    Raises :class:`RayEngineError` if Ray is missing or the job fails as a whole (e.g. no
    progress for ``no_progress_timeout_s`` seconds). Closing the generator stops the job;
    what is committed stays complete.
    """
    from .model_source import check_model_source

    ray = _import_ray()
    cihp.check_split(split)
    if min(workers, batch_size, commit_group) < 1:
        raise ValueError("workers, batch_size and commit_group must be at least 1")
    if cpus_per_worker is None:
        cpus_per_worker = GPU_ACTOR_CPUS if gpus_per_worker else ACTOR_CPUS
    locations = [
        location if is_uri(location) else os.path.abspath(location)
        for location in map(os.fspath, inputs)
    ]
    sample_ids = check_unique_ids(locations, id_of=sample_id_of)
    try:
        model_source = check_model_source(model_source)
    except ValueError as error:
        raise RayEngineError(str(error)) from None
    if Path(model_source).expanduser().exists():
        model_source = os.path.abspath(Path(model_source).expanduser())
    out = os.path.abspath(out)
    pairs = list(zip(locations, sample_ids, strict=True))
    skipped = listed_outcomes(
        [(_outcome_path(location), sample_id) for location, sample_id in pairs],
        out,
        split,
        overwrite,
    )
    yield from skipped.values()
    todo = [
        {"location": location, "sample_id": sample_id}
        for location, sample_id in pairs
        if sample_id not in skipped
    ]
    if not todo:
        return
    kill_at, kill_marker, own_marker = _kill_hook()
    started_here = _connect(ray, address)
    try:
        dataset = _pipeline(
            ray,
            todo,
            model_source,
            out,
            split=split,
            batch_size=batch_size,
            overwrite=overwrite,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            precision=precision,
            commit_group=commit_group,
            kill_at=kill_at,
            kill_marker=kill_marker,
        )
        dataset.context.execution_no_progress_timeout_s = no_progress_timeout_s
        dataset.context.enable_progress_bars = False
        dataset.context.print_on_execution_start = False
        blocks = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for block in blocks:
                for location, sample_id, status, message in zip(
                    block["location"],
                    block["sample_id"],
                    block["status"],
                    block["message"],
                    strict=True,
                ):
                    yield FileOutcome(
                        _outcome_path(str(location)), str(sample_id), str(status), str(message)
                    )
        except Exception as error:  # Ray wraps what happened on the cluster in its own types
            raise RayEngineError(_job_failure(error, no_progress_timeout_s)) from error
        finally:
            blocks.close()  # closed early (Ctrl+C, Cancel): Ray Data stops the job's work
    finally:
        if own_marker:
            assert kill_marker is not None  # an own marker is always named
            Path(kill_marker).unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data], not bare ray)
    except ImportError:
        raise RayEngineError(RAY_MISSING) from None
    _quiet_ray_data_logs()
    return ray


def _quiet_ray_data_logs() -> None:
    """Keep Ray Data's chatter about each job off the terminal (our progress bar reports it,
    and a failed job is one line, its traceback chained to :class:`RayEngineError`), unless
    the user configured those loggers. The executor's level also works around Ray 2.60
    logging the DataContext at DEBUG with a malformed format string, which prints a "Logging
    error" traceback at every job (and fails it under pytest's log capture)."""
    for name, level in (
        ("ray.data._internal.execution.streaming_executor", logging.WARNING),
        ("ray.data._internal.progress", logging.ERROR),  # "bars disabled"
        ("ray.data.exceptions", logging.CRITICAL),
    ):  # the failure's traceback
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


def _connect(ray, address: str | None) -> bool:
    """Start (``address`` None) or join the cluster unless Ray is initialised already; whether
    this call started Ray (and so shuts it down at the end)."""
    if ray.is_initialized():
        return False
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    options = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    try:
        if address is None:
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayEngineError(
            f"cannot {'start' if address is None else 'join'} a Ray cluster"
            f"{'' if address is None else f' at {address}'} "
            f"({_first_line(error)}); see docs/scale.md"
        ) from None
    return True


def _pipeline(
    ray,
    todo: list[dict],
    model_source: str,
    out: str,
    *,
    split,
    batch_size,
    overwrite,
    workers,
    gpus_per_worker,
    cpus_per_worker,
    precision,
    commit_group,
    kill_at,
    kill_marker,
):
    """The Ray Data plan: read -> segment (actor pool) -> write; rows of outcomes."""
    read_batch = 2  # photos per read call: small blocks stream to the actors early
    blocks = min(-(-len(todo) // read_batch), MAX_INPUT_BLOCKS)
    photos = ray.data.from_items(todo, override_num_blocks=blocks)
    decoded = photos.map_batches(read_photos, batch_size=read_batch, batch_format="numpy")
    # Ray Data's defaults: a dead actor is restarted and its batches are redone, a task whose
    # worker died is run again elsewhere, Python exceptions are not retried (the stages turn
    # them into outcomes); a photo that kills every process reading it stops the job after
    # the no-progress timeout
    labelled = decoded.map_batches(
        Segmenter,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "model_source": model_source,
            "precision": precision,
            "batch_size": batch_size,
            "threads": max(1, int(cpus_per_worker)),
            "kill_at": kill_at,
            "kill_marker": kill_marker,
        },
        num_gpus=gpus_per_worker or None,
    )
    return labelled.map_batches(
        write_samples,
        batch_size=commit_group,
        batch_format="numpy",
        fn_kwargs={"out": out, "split": split, "overwrite": overwrite},
    )


# --- the stages (run on the cluster's workers) ---------------------------------------------------
#
# Rows carry pixels as raw bytes plus their shape and dtype: photos of one batch differ in size,
# channels and dtype, which Arrow's tensor columns cannot hold together.


def read_photos(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read and decode each photo of ``batch`` (columns ``location``, ``sample_id``).

    Adds ``pixels`` (bytes of the decoded H x W [x C] array, C-ordered), ``shape`` (its shape
    as text, e.g. ``"600x400x3"``), ``dtype`` and ``message`` (why the photo cannot be read,
    else empty). A read or decode error is the photo's outcome, not an exception.
    """
    pixels, shapes, dtypes, messages = [], [], [], []
    for location in batch["location"]:
        try:
            photo = read_photo(_NamedBytes(_read_bytes(str(location)), str(location)))
            message = ""
        except (OSError, ValueError) as error:  # photos.PhotoTooLargeError is a ValueError
            photo, message = np.zeros(0, np.uint8), _photo_problem(error)
        pixels.append(np.ascontiguousarray(photo).tobytes())
        shapes.append("x".join(map(str, photo.shape)))
        dtypes.append(photo.dtype.str)
        messages.append(message)
    return {
        **batch,
        "pixels": _objects(pixels),
        "shape": np.array(shapes),
        "dtype": np.array(dtypes),
        "message": np.array(messages),
    }


def _read_bytes(location: str) -> bytes:
    if not is_uri(location):
        with open(location, "rb") as file:
            return file.read()
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class _NamedBytes(io.BytesIO):
    """A photo's bytes that read like its file: messages that name the photo (the pixel
    limit's) name its location, not a buffer."""

    def __init__(self, data: bytes, location: str):
        super().__init__(data)
        self.location = location

    def __str__(self) -> str:
        return self.location

    __repr__ = __str__


def _photo_problem(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"cannot read the file ({error.strerror or _first_line(error)})"
    return str(error)


def _pixels(row_pixels, shape: str, dtype: str) -> np.ndarray:
    """The array a row carries (inverse of what :func:`read_photos` stores)."""
    return np.frombuffer(row_pixels, np.dtype(dtype)).reshape(
        tuple(int(n) for n in shape.split("x"))
    )


def _objects(items: list) -> np.ndarray:
    """A 1-D object array of ``items`` (np.array would try to stack equal-length bytes)."""
    array = np.empty(len(items), object)
    array[:] = items
    return array


class Segmenter:
    """The model actor: loads the model once, then labels batches of decoded photos.

    Rows with a ``message`` (unreadable photos) pass through untouched. ``pixels`` is replaced
    by the labels (H x W uint8 bytes; ``shape`` becomes ``"HxW"``). If a batch fails as a whole
    (e.g. out of memory), each photo is tried alone and those that still fail are reported
    with the reason, so one photo cannot fail the job.
    """

    def __init__(
        self,
        model_source: str,
        precision: str,
        batch_size: int,
        threads: int,
        kill_at: int | None = None,
        kill_marker: str | None = None,
    ):
        from .model import load_model

        self.model = load_model(model_source, precision=precision)
        self.batch_size, self.threads = batch_size, threads
        self.kill_at, self.kill_marker = kill_at, kill_marker
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        self._die_if_asked()
        messages = [str(message) for message in batch["message"]]
        readable = [row for row, message in enumerate(messages) if not message]
        photos = [
            _pixels(batch["pixels"][row], str(batch["shape"][row]), str(batch["dtype"][row]))
            for row in readable
        ]
        labels: list[np.ndarray | None]
        try:
            labels = list(self._segment(photos))
        except Exception:  # noqa: BLE001  (retried photo by photo just below)
            labels = []
            for row, photo in zip(readable, photos, strict=True):
                try:
                    labels += self._segment([photo])
                except Exception as error:  # noqa: BLE001
                    labels.append(None)
                    messages[row] = f"the model failed on this photo ({_first_line(error)})"
        pixels, shapes = list(batch["pixels"]), [str(shape) for shape in batch["shape"]]
        for row, label in zip(readable, labels, strict=True):
            pixels[row] = b"" if label is None else label.tobytes()
            shapes[row] = "0" if label is None else "x".join(map(str, label.shape))
        return {
            "location": batch["location"],
            "sample_id": batch["sample_id"],
            "pixels": _objects(pixels),
            "shape": np.array(shapes),
            "message": np.array(messages),
        }

    def _segment(self, photos: list[np.ndarray]) -> list[np.ndarray]:
        from .inference import segment_stack

        return [
            result.labels
            for result in segment_stack(
                photos,
                self.model,
                batch_size=self.batch_size,
                confidence=False,
                workers=self.threads,
            )
        ]

    def _die_if_asked(self) -> None:
        """The test hook of :data:`KILL_AT_ENV`: exit like a crashed worker, once per job."""
        if self.kill_at is None or self.batches != self.kill_at or not self.kill_marker:
            return
        try:
            with open(self.kill_marker, "x"):
                pass
        except FileExistsError:  # a replacement actor: the job died once already
            return
        os._exit(1)


def write_samples(
    batch: dict[str, np.ndarray], out: str, split: str, overwrite: bool
) -> dict[str, np.ndarray]:
    """Encode and stage each labelled photo of ``batch`` as a sample of ``out``, then commit
    them as one group (:func:`~napari_deeplab.prelabel.commit_outcomes`: one lock, journal and
    id-list rewrite for the batch); one outcome row each (columns ``location``,
    ``sample_id``, ``status``, ``message``)."""
    results: list[tuple[Path, cihp.StagedSample | FileOutcome]] = []
    for location, sample_id, labels, shape, message in zip(
        batch["location"],
        batch["sample_id"],
        batch["pixels"],
        batch["shape"],
        batch["message"],
        strict=True,
    ):
        location, sample_id = str(location), str(sample_id)
        if message:
            results.append(
                (Path(location), FileOutcome(location, sample_id, "failed", str(message)))
            )
            continue
        with _local_copy(location, sample_id) as photo:  # staging copies it: the copy may go
            results.append(
                stage_photo(
                    out,
                    photo,
                    _pixels(labels, str(shape), "|u1"),
                    split=split,
                    overwrite=overwrite,
                    sample_id=sample_id,
                )
            )
    outcomes = commit_outcomes(out, split, results)
    return {
        "location": batch["location"],
        "sample_id": batch["sample_id"],
        "status": np.array([outcome.status for outcome in outcomes]),
        "message": np.array([outcome.message for outcome in outcomes]),
    }


@contextlib.contextmanager
def _local_copy(location: str, sample_id: str):
    """The photo as a local file named like it: the path itself, or a URI downloaded into a
    temporary folder (the dataset keeps the photo's bytes as they are)."""
    if not is_uri(location):
        yield Path(location)
        return
    folder = tempfile.mkdtemp(prefix="napari-deeplab-ray-")
    try:
        suffix = posixpath.splitext(location)[1]
        path = Path(folder) / f"{sample_id}{suffix}"
        path.write_bytes(_read_bytes(location))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- helpers of the driver -----------------------------------------------------------------------


def _outcome_path(location: str) -> Path | str:
    """What an outcome names: a Path for a file, the URI as it is for a URI."""
    return location if is_uri(location) else Path(location)


def _kill_hook() -> tuple[int | None, str | None, bool]:
    """:data:`KILL_AT_ENV` read: (the batch to die at, the marker file, whether the marker is
    this job's own temporary file); (None, None, False) when it is unset."""
    value = os.environ.get(KILL_AT_ENV, "").strip()
    if not value:
        return None, None, False
    count, _, marker = value.partition(":")
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_AT_ENV}={value!r}: expected N or N:MARKER_FILE (N >= 1)")
    if marker:
        return int(count), os.path.abspath(marker), False
    return (
        int(count),
        os.path.join(tempfile.gettempdir(), f"napari-deeplab-ray-killed-{uuid.uuid4().hex}"),
        True,
    )


def _job_failure(error: BaseException, timeout_s: float) -> str:
    """One line for a failed Ray job: what happened and what to do."""
    from ray.data.exceptions import ExecutionTimeoutError

    if isinstance(error, ExecutionTimeoutError):
        return (
            f"the Ray job made no progress for {timeout_s:.0f} s and was stopped: check that "
            "the cluster has the CPUs and GPUs asked for (--workers x --gpus-per-worker; "
            "`ray status`) and that every node can read the photos and the model"
        )
    cause = error
    # a RayTaskError's .cause: what the task raised
    while (inner := getattr(cause, "cause", None)) is not None and inner is not cause:
        cause = inner
    # an actor that died in __init__ (a model that does not load) carries its error only as
    # text: a traceback whose last line is "module.SomeError: message"
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    raised = re.fullmatch(r"[\w.]+(?:Error|Exception): (.+)", lines[-1]) if lines else None
    return f"the Ray job failed: {raised.group(1) if raised else _first_line(cause)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
