"""The model process itself: ``python -m napari_deeplab.worker.child``, started by
:class:`~napari_deeplab.worker.ModelProcess`, which owns TensorFlow (or the Keras backend that
``KERAS_BACKEND`` names) so that napari's process never loads it.

It learns its parent's address and key on stdin, connects, and serves the jobs it is sent
(:mod:`~napari_deeplab.worker.messages`) one after another in its main thread, keeping the
models it used last. A reader thread takes requests in and notes cancellations: a cancelled
job is dropped before it starts or between two photos. It exits as soon as its parent says so
or its connection ends (EOF), so it never outlives its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from pathlib import Path

from .messages import (
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

MODELS_KEPT = 2
"""Models the persistent child keeps loaded (e.g. the Human parts model and the Review queue's)."""


class Inbox:
    """The child's end of the connection: a reader thread queues requests and notes
    cancellations; the child exits as soon as the parent says so or goes away."""

    def __init__(self, connection: Connection):
        self.requests: queue.Queue[Request] = queue.Queue()
        self.cancelled: set[int] = set()  # set operations are atomic: no lock needed
        self._connection = connection
        threading.Thread(target=self._read, daemon=True, name="requests").start()

    def send(self, message) -> None:
        """Send one message of :mod:`~napari_deeplab.worker.messages` to the parent."""
        self._connection.send(message)  # only the main thread sends

    def _read(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except Exception:  # EOF: the parent closed the connection or died
                _exit_now()
            if isinstance(message, Shutdown):
                _exit_now()
            elif isinstance(message, Cancel):
                self.cancelled.add(message.job)
            else:
                self.requests.put(message)


def _exit_now() -> None:
    """Exit at once, even in the middle of a model call in the main thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class ModelCache:
    """The models used last, by source; a file re-written since (fine-tuning) is loaded again."""

    def __init__(self, size: int = MODELS_KEPT):
        self._size = size
        self._models: OrderedDict[tuple, object] = OrderedDict()

    def get(self, source: str, stage: Callable[[str], None] = lambda text: None):
        """The model of ``source``, loaded if it is not kept; ``stage(text)`` says what loading
        does now ("loading TensorFlow", "converting the seed model", "building", "loaded")."""
        key = (source, _modified_time(source))
        if key not in self._models:
            model = load_with_stages(source, stage)
            for stale in [k for k in self._models if k[0] == source]:
                del self._models[stale]
            self._models[key] = model
            while len(self._models) > self._size:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]


def load_with_stages(source: str, stage: Callable[[str], None]):
    """The model of ``source`` (:func:`~napari_deeplab.model.load_model`), telling ``stage``
    what takes the time: importing Keras, converting the seed, building."""
    if "keras" not in sys.modules:
        stage(
            "loading TensorFlow (the first run only)"
            if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
            else "loading Keras (the first run only)"
        )
        import keras  # noqa: F401  the backend's libraries: most of a cold start
    from ..model import load_model

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


def serve(inbox: Inbox) -> None:
    """Serve the requests one after another, until the parent ends the connection."""
    models = ModelCache()
    while True:
        request = inbox.requests.get()
        if request.job in inbox.cancelled:  # cancelled before it started
            inbox.cancelled.discard(request.job)
            continue
        try:
            if isinstance(request, SegmentJob):
                _segment(inbox, request, models)
            else:
                _finetune(inbox, request)
            inbox.send(Done(request.job))
        except Exception as error:
            inbox.send(Failed(request.job, failure_message(error, request)))
        finally:
            inbox.cancelled.discard(request.job)


def _segment(inbox: Inbox, request: SegmentJob, models: ModelCache) -> None:
    from ..inference import segment_stack

    job = request.job
    model = models.get(request.source, lambda text: inbox.send(Stage(job, text)))
    # resizing and upsampling in a thread per core while the model runs; closed on Cancel,
    # which stops those threads before the next job
    with contextlib.closing(
        segment_stack(
            request.images,
            model,
            batch_size=request.batch_size,
            workers=os.cpu_count() or 1,
            tta=request.tta,
            runner_up=request.runner_up,
        )
    ) as results:
        for result in results:
            if job in inbox.cancelled:
                return
            inbox.send(Segmented(job, result))


def _finetune(inbox: Inbox, request: FinetuneJob) -> None:
    from ..training import finetune, training_and_validation

    def stage(text: str) -> None:
        inbox.send(Stage(request.job, text))

    train, val = training_and_validation(request.root, request.split, request.val_split)
    model = load_with_stages(request.source, stage)
    for report in finetune(model, train, val, request.out, request.settings, progress=stage):
        inbox.send(EpochDone(request.job, report.fields()))


def failure_message(error: Exception, request: Request) -> str:
    """One line that says why ``request`` failed (and, for memory, what to try)."""
    from ..cihp import DatasetError

    expected: tuple[type, ...] = (DatasetError, ValueError)
    model_module = sys.modules.get("napari_deeplab.model")  # not imported if Keras failed to
    if model_module is not None:
        expected += (model_module.ModelError,)
    if isinstance(error, expected):
        message = str(error)
        lines = message.strip().splitlines()
        if len(lines) > 1:  # e.g. one line per bad sample, then what to do
            print(message, file=sys.stderr, flush=True)  # all of it into the log
            message = f"{lines[0]}; ...; {lines[-1]}"
    elif isinstance(error, MemoryError):
        hint = (
            "try a smaller batch or image size"
            if isinstance(request, FinetuneJob)
            else "try fewer frames at once or a smaller photo"
        )
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
    """Entry point of a child: ``python -m napari_deeplab.worker.child``, handshake on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the parent's business
    inbox = Inbox(_connect_to_parent())
    backend = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} napari-deeplab model process {os.getpid()} "
        f"started; KERAS_BACKEND={backend}",
        file=sys.stderr,
        flush=True,
    )
    serve(inbox)


if __name__ == "__main__":
    main()
