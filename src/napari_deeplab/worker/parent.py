"""The napari side of the model's processes: :class:`ModelProcess`, safe for many callers.

TensorFlow must not load in napari's process (with napari's OpenGL on Mesa it segfaults, see
docs), and a model call must not freeze the viewer. Nothing here imports napari, Qt or
TensorFlow, so the same class serves tests and scripts.

Processes. :class:`ModelProcess` starts one persistent child on the first segmentation and
keeps it (with the last models it loaded) for later jobs. Each fine-tuning runs in a child of
its own, started for the job and killed by Cancel, so Cancel stops training at once, the next
training starts at once, and a cancelled run can never report into a new one. Every child is a
fresh ``python -m napari_deeplab.worker.child`` (:mod:`~napari_deeplab.worker.child`, never a
fork of napari); it inherits the parent's environment, so ``KERAS_BACKEND`` chooses its
backend as in the parent.

Transport. A :class:`multiprocessing.connection.Listener` (a socket in a private temporary
folder on Linux and macOS, a named pipe on Windows) with a random authentication key; the
child learns the address and the key on its stdin, never on its command line. A child exits
as soon as its connection ends (EOF), so it never outlives its parent. The messages are the
dataclasses of :mod:`~napari_deeplab.worker.messages`.

Routing. Any number of threads may run jobs on one :class:`ModelProcess` at the same time.
Each job has an id; in the parent one reader thread per child receives every message and puts
it into the queue of the job it names (messages of a job whose caller has gone are dropped),
and requests are sent under a lock.

A job is a generator that yields :class:`Waiting` while it waits, so a napari worker can cancel
it between any two yields by closing it; the caller is free at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..model_source import check_model_source
from .messages import (
    Answer,
    Cancel,
    Done,
    EpochDone,
    Failed,
    FinetuneJob,
    Request,
    Segmented,
    SegmentJob,
    Shutdown,
    Stage,
)

if TYPE_CHECKING:
    from ..inference import Segmentation
    from ..training import FinetuneSettings

CHILD_MODULE = "napari_deeplab.worker.child"
"""What every child runs: ``python -m`` this."""

POLL_SECONDS = 0.05
"""How often a waiting job yields :class:`Waiting`."""

CONNECT_SECONDS = 60.0
"""How long a new child may take to connect (it imports only numpy before it does)."""

LOG_DAYS_KEPT = 14
"""Log files of earlier sessions older than this are removed."""

SECONDS_PER_DAY = 86400


class ModelProcessError(Exception):
    """The model process could not do the job; the message says why and what to do.

    Not a RuntimeError: napari's workers drop those silently, taking them for a deleted Qt object.
    """


@dataclass
class Waiting:
    """Yielded while the child works: ``done`` of ``total`` photos (or epochs) finished so far;
    ``stage``: what is happening now ("loading TensorFlow", "epoch 1, step 3 of 20", ...), or ""
    when nothing new is known."""

    done: int
    total: int
    stage: str = field(default="", compare=False)


class ModelProcess:
    """The model's processes: the persistent one started on first use, reused, restarted after
    a crash; one more per fine-tuning job. Their output goes to :attr:`log_path`, in a private
    per-user log folder. Thread-safe: each caller gets exactly its own job's results.
    """

    def __init__(self):
        self.log_path = log_folder() / f"model-process-{os.getpid()}.log"
        self._lock = threading.Lock()  # guards _child and _trainers
        self._child: _Child | None = None
        self._trainers: set[_Child] = set()
        self._job_ids = itertools.count()
        self._job_ids_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The persistent child's process id, or None while none runs."""
        child = self._child
        return child.process.pid if child is not None and child.is_alive() else None

    def is_alive(self) -> bool:
        """Whether the persistent child runs."""
        child = self._child
        return child is not None and child.is_alive()

    def start(self) -> None:
        """Start the persistent child now, not on the first job (it takes a second or two)."""
        self._persistent_child()

    def segment(
        self,
        images: Sequence[np.ndarray],
        source: str | None,
        batch_size: int = 1,
        *,
        tta: str | None = None,
        runner_up: bool = False,
    ) -> Iterator[Waiting | Segmentation]:
        """Segment ``images`` with the model ``source``.

        A source that cannot be a model raises :class:`ModelProcessError` here, at once; a
        model that cannot be loaded or a child that dies raises it from the generator (the
        next job then starts a fresh child).

        Parameters
        ----------
        images : sequence of ndarray
            Photos, each H x W or H x W x 3/4 in any form
            :func:`~napari_deeplab.inference.to_rgb` takes.
        source : str or None
            Anything :func:`~napari_deeplab.model.load_model` takes (None: the seed).
        batch_size : int
            Photos per model call.
        tta : None, "none" or "flip"
            Test-time augmentation (:func:`~napari_deeplab.inference.inference_model`).
        runner_up : bool
            Also each photo's runner-up class map (``Segmentation.runner_up``, H x W uint8).

        Returns
        -------
        iterator of Waiting or Segmentation
            A generator that yields :class:`Waiting` about every :data:`POLL_SECONDS` while
            the child works and one :class:`~napari_deeplab.inference.Segmentation` (H x W
            uint8 labels, H x W float32 confidence in 0..1) per photo, in order. Closing it
            cancels the job.
        """
        source = _checked_source(source)
        tta = None if tta in (None, "none") else tta
        return self._segment_results(list(images), source, batch_size, tta, runner_up)

    def finetune(
        self,
        *,
        root: str,
        split: str,
        source: str | None,
        out: str,
        val_split: str | None = None,
        settings: FinetuneSettings | None = None,
        **changes,
    ) -> Iterator[Waiting | dict]:
        """Fine-tune in a process of its own.

        A source that cannot be a model raises :class:`ModelProcessError` here, at once (and
        TypeError a settings field that does not exist); settings that cannot train raise it
        from the generator, as the training process refuses them.

        Parameters
        ----------
        root, split, val_split : str
            The dataset, as :func:`~napari_deeplab.training.training_and_validation` takes it.
        source : str or None
            The start model: anything :func:`~napari_deeplab.model.load_model` takes.
        out : str
            The ``.keras`` file to write.
        settings : FinetuneSettings, optional
            How to train (default ``FinetuneSettings()``).
        **changes
            Fields of :class:`~napari_deeplab.training.FinetuneSettings` to change from
            ``settings`` (``epochs=1``).

        Returns
        -------
        iterator of Waiting or dict
            A generator of :class:`Waiting` while it works and one dict per epoch (the fields
            of :class:`~napari_deeplab.training.EpochReport`). Closing it kills the training
            at once; ``out`` then holds the best model saved so far (training writes it
            atomically).
        """
        from ..training import FinetuneSettings  # here: only who trains needs the package

        settings = dataclasses.replace(settings or FinetuneSettings(), **changes)
        request = FinetuneJob(
            self._new_job_id(),
            str(root),
            split,
            val_split,
            _checked_source(source),
            str(out),
            settings,
        )
        return self._finetune_reports(request)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every child: running fine-tunings at once, the persistent one politely (then by
        force). Jobs still running end with :class:`ModelProcessError`."""
        with self._lock:
            child, self._child = self._child, None
            trainers, self._trainers = list(self._trainers), set()
        for trainer in trainers:
            trainer.kill()
        if child is not None:
            child.stop(timeout)

    # jobs

    def _segment_results(
        self, images: list, source: str, batch_size: int, tta: str | None, runner_up: bool
    ):
        if not self.is_alive():
            yield Waiting(0, len(images), "starting the model process")
        child = self._persistent_child()
        request = SegmentJob(self._new_job_id(), source, images, batch_size, tta, runner_up)
        for item in _job_answers(
            child, request, len(images), cancel=lambda: child.send(Cancel(request.job))
        ):
            yield item.segmentation if isinstance(item, Segmented) else item

    def _finetune_reports(self, request: FinetuneJob):
        total = request.settings.epochs + 1
        trainer = self._start_trainer()
        finished = False
        try:
            yield Waiting(0, total, "starting the training process")  # its imports take long
            for item in _job_answers(trainer, request, total, cancel=trainer.kill):
                yield item.report if isinstance(item, EpochDone) else item
            finished = True
        finally:
            if finished:
                trainer.stop()
            else:
                trainer.kill()
            with self._lock:
                self._trainers.discard(trainer)

    # children

    def _persistent_child(self) -> _Child:
        with self._lock:
            if self._child is None or not self._child.is_alive():
                if self._child is not None:
                    self._child.kill()  # reap the dead one
                self._child = _Child.start(self.log_path, "model process")
            return self._child

    def _start_trainer(self) -> _Child:
        trainer = _Child.start(self.log_path, "training process")
        with self._lock:
            self._trainers.add(trainer)
        return trainer

    def _new_job_id(self) -> int:
        with self._job_ids_lock:
            return next(self._job_ids)


def _checked_source(source) -> str:
    try:
        return check_model_source(source)
    except ValueError as error:
        raise ModelProcessError(str(error)) from None


_GONE = object()
"""Put into a job's queue when its child's connection ends."""


def _job_answers(
    child: _Child, request: Request, total: int, cancel: Callable[[], object]
) -> Iterator[Waiting | Answer]:
    """Send one job and yield :class:`Waiting` while waiting, else each of its answers.

    Ends at the job's :class:`~.messages.Done`; raises :class:`ModelProcessError` on its
    :class:`~.messages.Failed` or when the child dies. ``cancel`` is called when the caller
    leaves before the end.
    """
    job = request.job
    answers = child.open_job(job)
    finished = False
    done = 0
    try:
        if not child.send(request):
            finished = True
            raise ModelProcessError(child.stopped_message())
        while True:
            try:
                message = answers.get(timeout=POLL_SECONDS)
            except queue.Empty:
                yield Waiting(done, total)
                continue
            if message is _GONE:
                finished = True
                raise ModelProcessError(child.stopped_message())
            if isinstance(message, Stage):  # what the child does now (loading, converting, a step)
                yield Waiting(done, total, message.text)
                continue
            if isinstance(message, Done):
                finished = True
                return
            if isinstance(message, Failed):
                finished = True
                raise ModelProcessError(message.message)
            done += 1
            yield message
    finally:
        child.close_job(job)
        if not finished:
            cancel()


class _Child:
    """One child process, its connection, and the thread that routes its messages to jobs."""

    def __init__(
        self, process: subprocess.Popen, connection: Connection, log_path: Path, name: str
    ):
        self.process = process
        self.log_path = log_path
        self.name = name
        self._connection = connection
        self._send_lock = threading.Lock()
        self._jobs_lock = threading.Lock()  # guards _jobs and _gone
        self._jobs: dict[int, queue.Queue] = {}
        self._gone = False
        self._reader = threading.Thread(
            target=self._route_messages,
            daemon=True,
            name=f"napari-deeplab {name} {process.pid} reader",
        )
        self._reader.start()

    @classmethod
    def start(cls, log_path: Path, name: str) -> _Child:
        """Start ``python -m`` :data:`CHILD_MODULE` and wait until it has connected."""
        authkey = secrets.token_bytes(32)
        listener = Listener(authkey=authkey)  # default family: AF_UNIX, or a named pipe on Windows
        try:
            try:
                process = _spawn_child(log_path)
            except OSError as error:  # e.g. a link planted at the log's name (never followed)
                raise ModelProcessError(f"cannot start the {name}: {error}") from None
            handshake = json.dumps({"address": listener.address, "authkey": authkey.hex()})
            assert process.stdin is not None  # spawned with stdin=subprocess.PIPE
            try:
                process.stdin.write(handshake.encode())
                process.stdin.close()
            except OSError:
                pass  # it died at once: _accept_child says so
            connection = _accept_child(listener, process, authkey, log_path, name)
        finally:
            listener.close()
        return cls(process, connection, log_path, name)

    def is_alive(self) -> bool:
        return not self._gone and self.process.poll() is None

    def open_job(self, job: int) -> queue.Queue:
        """The queue that receives job ``job``'s messages (``_GONE`` at once if the child is)."""
        answers: queue.Queue = queue.Queue()
        with self._jobs_lock:
            if self._gone:
                answers.put(_GONE)
            self._jobs[job] = answers
        return answers

    def close_job(self, job: int) -> None:
        """Stop routing job ``job``'s messages; any still coming are dropped."""
        with self._jobs_lock:
            self._jobs.pop(job, None)

    def send(self, message) -> bool:
        """Send ``message`` (of :mod:`~napari_deeplab.worker.messages`); False if the child
        is gone."""
        with self._send_lock:
            try:
                self._connection.send(message)
                return True
            except OSError:
                return False

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit, kill it if it has not within ``timeout``, and reap it."""
        if self.process.poll() is None and self.send(Shutdown()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()

    def kill(self) -> None:
        """End the child at once (if it still runs) and reap it; its jobs end with an error."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable: leave it
            self.process.wait(5)
        self._reader.join(5)

    def stopped_message(self) -> str:
        return _stopped_message(self.process, self.name, self.log_path)

    def _route_messages(self) -> None:
        try:
            while True:
                message = self._connection.recv()
                with self._jobs_lock:
                    answers = self._jobs.get(message.job)
                if answers is not None:  # else: the tail of a job whose caller has gone
                    answers.put(message)
        except Exception:  # EOF: the child exited; anything else: the stream is broken
            pass
        finally:
            with self._jobs_lock:
                self._gone = True
                waiting = list(self._jobs.values())
            for answers in waiting:
                answers.put(_GONE)
            with self._send_lock:
                self._connection.close()  # a child still running sees EOF and exits


def _spawn_child(log_path: Path) -> subprocess.Popen:
    with _open_log(log_path) as log:
        return subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            env=_child_environment(),
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )


def _child_environment() -> dict[str, str]:
    """The parent's environment (``KERAS_BACKEND`` included: the child uses the parent's
    backend); TensorFlow's C++ info lines off unless asked for."""
    environment = dict(os.environ)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


def _accept_child(
    listener: Listener, process: subprocess.Popen, authkey: bytes, log_path: Path, name: str
) -> Connection:
    """The child's connection; ModelProcessError if it dies or does not connect in time."""
    accepted: queue.Queue = queue.Queue()

    def accept():
        while True:
            try:
                accepted.put(listener.accept())
                return
            except AuthenticationError:
                continue  # someone else, without the key: wait for our child
            except Exception as error:
                accepted.put(error)
                return

    threading.Thread(target=accept, daemon=True, name="napari-deeplab accept").start()
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            result = accepted.get(timeout=POLL_SECONDS)
            break
        except queue.Empty:
            if process.poll() is None and time.monotonic() < deadline:
                continue
            if process.poll() is None:
                process.kill()
            _unblock_accept(listener.address, authkey, accepted)
            raise ModelProcessError(_stopped_message(process, name, log_path)) from None
    if isinstance(result, Exception):
        process.kill()
        raise ModelProcessError(f"the {name} could not connect ({result}); see {log_path}")
    return result


def _unblock_accept(address, authkey: bytes, accepted: queue.Queue) -> None:
    """Connect to the listener ourselves so that the thread waiting in ``accept`` returns."""
    try:
        Client(address, authkey=authkey).close()
        connection = accepted.get(timeout=5)
        if isinstance(connection, Connection):
            connection.close()
    except Exception:
        pass


def _stopped_message(process: subprocess.Popen, name: str, log_path: Path) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        why = "it stopped answering"
    elif code < 0 and -code == getattr(signal, "SIGKILL", None):
        why = "it was killed (out of memory?)"
    elif code < 0:
        why = f"it crashed ({signal.Signals(-code).name})"
    else:
        why = f"it exited with code {code}"
    return f"the {name} stopped: {why}; see {log_path}; run again to start a new one"


def log_folder() -> Path:
    """The private per-user folder of the model processes' logs (created 0o700), where nobody
    else can plant a file or a link; logs older than :data:`LOG_DAYS_KEPT` days are removed."""
    import platformdirs

    folder = Path(platformdirs.user_log_dir("napari-deeplab"))
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask, skipped if it existed
    except OSError:  # e.g. a read-only home: a new private folder, at an unpredictable name
        return Path(tempfile.mkdtemp(prefix="napari-deeplab-log-"))
    _remove_old_logs(folder)
    return folder


def _remove_old_logs(folder: Path) -> None:
    too_old = time.time() - LOG_DAYS_KEPT * SECONDS_PER_DAY
    for log in folder.glob("model-process-*.log"):
        try:
            if log.stat().st_mtime < too_old:
                log.unlink()
        except OSError:
            pass


def _open_log(path: Path):
    """``path`` opened for appending, never through a symbolic link, private to the user."""
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_APPEND
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    return os.fdopen(os.open(path, flags, 0o600), "ab")
