"""The model's own processes, which own TensorFlow, for the napari widgets; safe for many callers.

TensorFlow must not load in napari's process (with napari's OpenGL on Mesa it segfaults, see
docs), and a model call must not freeze the viewer. Nothing here imports napari, Qt or
TensorFlow, so the same class serves tests and scripts.

Processes. :class:`ModelProcess` starts one persistent child on the first segmentation and
keeps it (with the last models it loaded) for later jobs. Each fine-tuning runs in a child of
its own, started for the job and killed by Cancel, so Cancel stops training at once, the next
training starts at once, and a cancelled run can never report into a new one. Every child is a
fresh ``python -m napari_deeplab.model_process`` (never a fork of napari); it inherits the
parent's environment, so ``KERAS_BACKEND`` chooses its backend as in the parent.

Transport. A :class:`multiprocessing.connection.Listener` (a socket in a private temporary
folder on Linux and macOS, a named pipe on Windows) with a random authentication key; the
child learns the address and the key on its stdin, never on its command line. A child exits
as soon as its connection ends (EOF), so it never outlives its parent.

Routing. Any number of threads may run jobs on one :class:`ModelProcess` at the same time.
Each job has an id; in the parent one reader thread per child receives every message and puts
it into the queue of the job it names (messages of a job whose caller has gone are dropped),
and requests are sent under a lock. In the child a reader thread takes requests in and notes
cancellations; the main thread serves segmentation jobs in order and drops a cancelled job
between two photos.

A job is a generator that yields :class:`Waiting` while it waits, so a napari worker can cancel
it between any two yields by closing it; the caller is free at once.
"""

from __future__ import annotations

import contextlib
import functools
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
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

import numpy as np

from .model_source import check_model_source

POLL_SECONDS = 0.05
"""How often a waiting job yields :class:`Waiting`."""

CONNECT_SECONDS = 60.0
"""How long a new child may take to connect (it imports only numpy before it does)."""

MODELS_KEPT = 2
"""Models the persistent child keeps loaded (e.g. the Human parts model and the Review queue's)."""

LOG_DAYS_KEPT = 14
"""Log files of earlier sessions older than this are removed."""

_DEFAULT_EPOCHS = 10  # training.finetune's default, for the progress total

_TRAINING_OPTIONS_NOT_FOR_FINETUNE = ("root", "split", "val_split", "source", "out")


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


@dataclass
class FrameResult:
    """One photo's result: ``labels`` H x W uint8, ``confidence`` H x W float32."""

    index: int
    labels: np.ndarray
    confidence: np.ndarray


# --- the parent side ---------------------------------------------------------------------------

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

    def segment(self, images: Sequence[np.ndarray], source: str | None,
                batch_size: int = 1) -> Iterator[Waiting | FrameResult]:
        """Segment ``images`` with the model ``source`` (anything ``load_model`` takes).

        Returns a generator that yields :class:`Waiting` about every 50 ms while the child
        works and one :class:`FrameResult` per photo, in order. Closing it cancels the job.
        A source that cannot be a model raises :class:`ModelProcessError` here, at once; a
        model that cannot be loaded or a child that dies raises it from the generator (the
        next job then starts a fresh child).
        """
        source = _checked_source(source)
        return self._segment_results(list(images), source, batch_size)

    def finetune(self, **options) -> Iterator[Waiting | dict]:
        """Fine-tune in a process of its own: ``root``, ``split``, ``val_split`` (as
        :func:`napari_deeplab.training.training_and_validation` takes them), ``source`` (the
        start model), ``out``, and any keyword argument of :func:`napari_deeplab.training.finetune`
        (``epochs``, ``batch_size``, ``image_size``, ``learning_rate``, ...).

        Returns a generator of :class:`Waiting` while it works and one dict per epoch (the
        fields of ``EpochReport``). Closing it kills the training at once; ``out`` then holds
        the best model saved so far (training writes it atomically). A source that cannot be
        a model raises :class:`ModelProcessError` here, at once.
        """
        options = {**options, "source": _checked_source(options.get("source"))}
        return self._finetune_reports(options)

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

    def _segment_results(self, images: list, source: str, batch_size: int):
        if not self.is_alive():
            yield Waiting(0, len(images), "starting the model process")
        child = self._persistent_child()
        job = self._new_job_id()
        request = ("segment", job, source, images, batch_size)
        cancel = functools.partial(child.send, "cancel", job)
        for item in _job_answers(child, request, len(images), cancel):
            yield item if isinstance(item, Waiting) else FrameResult(*item)

    def _finetune_reports(self, options: dict):
        total = options.get("epochs", _DEFAULT_EPOCHS) + 1
        trainer = self._start_trainer()
        finished = False
        try:
            yield Waiting(0, total, "starting the training process")  # its imports take long
            request = ("finetune", self._new_job_id(), options)
            for item in _job_answers(trainer, request, total, cancel=trainer.kill):
                yield item if isinstance(item, Waiting) else item[0]
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


def _job_answers(child: _Child, request: tuple, total: int,
                 cancel: Callable[[], object]) -> Iterator[Waiting | list]:
    """Send one job and yield :class:`Waiting` while waiting, else each answer's payload.

    Ends at the job's "done"; raises :class:`ModelProcessError` on its "error" or when the
    child dies. ``cancel`` is called when the caller leaves before the end.
    """
    job = request[1]
    answers = child.open_job(job)
    finished = False
    done = 0
    try:
        if not child.send(*request):
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
            kind, _, *payload = message
            if kind == "stage":  # what the child is doing now (loading, converting, a step)
                yield Waiting(done, total, payload[0])
                continue
            if kind == "done":
                finished = True
                return
            if kind == "error":
                finished = True
                raise ModelProcessError(payload[0])
            done += 1
            yield payload
    finally:
        child.close_job(job)
        if not finished:
            cancel()


class _Child:
    """One child process, its connection, and the thread that routes its messages to jobs."""

    def __init__(self, process: subprocess.Popen, connection: Connection, log_path: Path,
                 name: str):
        self.process = process
        self.log_path = log_path
        self.name = name
        self._connection = connection
        self._send_lock = threading.Lock()
        self._jobs_lock = threading.Lock()  # guards _jobs and _gone
        self._jobs: dict[int, queue.Queue] = {}
        self._gone = False
        self._reader = threading.Thread(target=self._route_messages, daemon=True,
                                        name=f"napari-deeplab {name} {process.pid} reader")
        self._reader.start()

    @classmethod
    def start(cls, log_path: Path, name: str) -> _Child:
        """Start ``python -m napari_deeplab.model_process`` and wait until it has connected."""
        authkey = secrets.token_bytes(32)
        listener = Listener(authkey=authkey)  # default family: AF_UNIX, or a named pipe on Windows
        try:
            try:
                process = _spawn_child(log_path)
            except OSError as error:  # e.g. a link planted at the log's name (never followed)
                raise ModelProcessError(f"cannot start the {name}: {error}") from None
            handshake = json.dumps({"address": listener.address, "authkey": authkey.hex()})
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

    def send(self, *message) -> bool:
        """Send ``message``; False if the child is gone."""
        with self._send_lock:
            try:
                self._connection.send(message)
                return True
            except OSError:
                return False

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit, kill it if it has not within ``timeout``, and reap it."""
        if self.process.poll() is None and self.send("shutdown", -1):
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
                    answers = self._jobs.get(message[1])
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
            [sys.executable, "-m", "napari_deeplab.model_process"], stdin=subprocess.PIPE,
            stdout=log, stderr=log, env=_child_environment(),
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))


def _child_environment() -> dict[str, str]:
    """The parent's environment (``KERAS_BACKEND`` included: the child uses the parent's
    backend); TensorFlow's C++ info lines off unless asked for."""
    environment = dict(os.environ)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


def _accept_child(listener: Listener, process: subprocess.Popen, authkey: bytes,
                  log_path: Path, name: str) -> Connection:
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
    too_old = time.time() - LOG_DAYS_KEPT * 86400
    for log in folder.glob("model-process-*.log"):
        try:
            if log.stat().st_mtime < too_old:
                log.unlink()
        except OSError:
            pass


def _open_log(path: Path):
    """``path`` opened for appending, never through a symbolic link, private to the user."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_BINARY", 0)
    return os.fdopen(os.open(path, flags, 0o600), "ab")


# --- the child side ----------------------------------------------------------------------------

class _Inbox:
    """The child's end of the connection: a reader thread queues requests and notes
    cancellations; the child exits as soon as the parent says so or goes away."""

    def __init__(self, connection: Connection):
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set[int] = set()  # set operations are atomic: no lock needed
        self._connection = connection
        threading.Thread(target=self._read, daemon=True, name="requests").start()

    def send(self, *message) -> None:
        self._connection.send(message)  # only the main thread sends

    def _read(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except Exception:  # EOF: the parent closed the connection or died
                _exit_now()
            kind, job = message[0], message[1]
            if kind == "shutdown":
                _exit_now()
            elif kind == "cancel":
                self.cancelled.add(job)
            else:
                self.requests.put(message)


def _exit_now() -> None:
    """Exit at once, even in the middle of a model call in the main thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _ModelCache:
    """The models used last, by source; a file re-written since (fine-tuning) is loaded again."""

    def __init__(self, size: int = MODELS_KEPT):
        self._size = size
        self._models: OrderedDict[tuple, object] = OrderedDict()

    def get(self, source: str, stage: Callable[[str], None] = lambda text: None):
        """The model of ``source``, loaded if it is not kept; ``stage(text)`` says what loading
        does now ("loading TensorFlow", "converting the seed model", "building", "loaded")."""
        key = (source, _modified_time(source))
        if key not in self._models:
            model = _load_with_stages(source, stage)
            for stale in [k for k in self._models if k[0] == source]:
                del self._models[stale]
            self._models[key] = model
            while len(self._models) > self._size:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]


def _load_with_stages(source: str, stage: Callable[[str], None]):
    if "keras" not in sys.modules:
        stage("loading TensorFlow (the first run only)" if os.environ.get(
            "KERAS_BACKEND", "tensorflow") == "tensorflow" else "loading Keras (the first run only)")
        import keras  # noqa: F401  the backend's libraries: most of a cold start
    from .model import load_model

    name = Path(source).name if os.path.exists(source) else source
    if source.endswith(".keras"):
        stage(f"building the model from {name}")
    else:  # the seed's SavedModel (a folder or the hub): converted once, then from the cache
        stage(f"converting the seed model {name} (the first time only; then cached), building")
    model = load_model(source)
    stage("loaded; running the model")
    return model


def _modified_time(source: str) -> int:
    try:
        return os.stat(source).st_mtime_ns
    except OSError:  # a hub id
        return 0


def _serve(inbox: _Inbox) -> None:
    """Serve the requests one after another, until the parent ends the connection."""
    models = _ModelCache()
    while True:
        kind, job, *arguments = inbox.requests.get()
        if job in inbox.cancelled:  # cancelled before it started
            inbox.cancelled.discard(job)
            continue
        try:
            if kind == "segment":
                _segment_job(inbox, job, models, *arguments)
            else:
                _finetune_job(inbox, job, *arguments)
            inbox.send("done", job)
        except Exception as error:
            inbox.send("error", job, _failure_message(error, kind))
        finally:
            inbox.cancelled.discard(job)


def _segment_job(inbox: _Inbox, job: int, models: _ModelCache, source: str, images: list,
                 batch_size: int) -> None:
    from .inference import segment_stack

    model = models.get(source, lambda text: inbox.send("stage", job, text))
    # resizing and upsampling in a thread per core while the model runs; closed on Cancel,
    # which stops those threads before the next job
    with contextlib.closing(segment_stack(images, model, batch_size=batch_size,
                                          workers=os.cpu_count() or 1)) as results:
        for result in results:
            if job in inbox.cancelled:
                return
            inbox.send("result", job, result.index, result.labels, result.confidence)


def _finetune_job(inbox: _Inbox, job: int, options: dict) -> None:
    from .training import finetune, training_and_validation

    def stage(text: str) -> None:
        inbox.send("stage", job, text)

    train, val = training_and_validation(options["root"], options["split"],
                                         options.get("val_split"))
    model = _load_with_stages(options["source"], stage)
    settings = {key: value for key, value in options.items()
                if key not in _TRAINING_OPTIONS_NOT_FOR_FINETUNE}
    for report in finetune(model, train, val, options["out"], progress=stage, **settings):
        inbox.send("epoch", job, report.fields())


def _failure_message(error: Exception, kind: str) -> str:
    """One line that says why a job failed (and, for memory, what to try)."""
    from .cihp import DatasetError

    expected: tuple[type, ...] = (DatasetError, ValueError)
    model_module = sys.modules.get(f"{__package__}.model")  # not imported if Keras failed to
    if model_module is not None:
        expected += (model_module.ModelError,)
    if isinstance(error, expected):
        message = str(error)
        lines = message.strip().splitlines()
        if len(lines) > 1:  # e.g. one line per bad sample, then what to do
            print(message, file=sys.stderr, flush=True)  # all of it into the log
            message = f"{lines[0]}; ...; {lines[-1]}"
    elif isinstance(error, MemoryError):
        hint = "try a smaller batch or image size" if kind == "finetune" else \
            "try fewer frames at once or a smaller photo"
        message = f"the model process ran out of memory; {hint}"
    else:
        traceback.print_exc()  # into the log
        message = f"{type(error).__name__}: {error}"
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def _connect_to_parent() -> Connection:
    """Connect to the address with the key that the parent wrote on stdin."""
    handshake = json.loads(sys.stdin.buffer.read())
    address = handshake["address"]
    if isinstance(address, list):  # an (host, port) pair, through JSON
        address = tuple(address)
    return Client(address, authkey=bytes.fromhex(handshake["authkey"]))


def main() -> None:
    """Entry point of a child: ``python -m napari_deeplab.model_process``, handshake on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the parent's business
    inbox = _Inbox(_connect_to_parent())
    backend = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} napari-deeplab model process {os.getpid()} "
          f"started; KERAS_BACKEND={backend}", file=sys.stderr, flush=True)
    _serve(inbox)


if __name__ == "__main__":
    main()
