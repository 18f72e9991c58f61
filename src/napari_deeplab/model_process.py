"""A persistent child process that owns TensorFlow and the model, for the napari widgets.

TensorFlow must not load in napari's process (with napari's OpenGL on Mesa it segfaults, see
DESIGN.md), and a model call must not freeze the viewer. :class:`ModelProcess` starts one
child process on first use, keeps it (and the loaded model) for later runs, and talks to it
through a pipe. Nothing here imports napari, Qt or TensorFlow, so the same class serves tests
and scripts.

A job is a generator (:meth:`ModelProcess.segment`) that yields progress while it waits, so a
napari worker can cancel it between any two yields; cancelling tells the child to drop the
job after the photo in hand, and the caller is free at once.
"""

from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

POLL_SECONDS = 0.05


class ModelProcessError(Exception):
    """The model process could not do the job; the message says why and what to do.

    Not a RuntimeError: napari's workers drop those silently, taking them for a deleted Qt object.
    """


@dataclass
class Waiting:
    """Yielded while the child works: ``done`` of ``total`` photos finished so far."""

    done: int
    total: int


@dataclass
class FrameResult:
    """One photo's result: ``labels`` H x W uint8, ``confidence`` H x W float32."""

    index: int
    labels: np.ndarray
    confidence: np.ndarray


def _serve(connection) -> None:  # runs in the child process
    from .inference import segment_stack
    from .model import load_model

    models: dict[tuple, object] = {}
    pending: list = []
    cancelled: set[int] = set()

    def read_cancellations():
        while connection.poll():
            message = connection.recv()
            if message[0] == "cancel":
                cancelled.add(message[1])
            else:
                pending.append(message)

    while True:
        try:
            message = pending.pop(0) if pending else connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        kind, job = message[0], message[1]
        if kind == "shutdown":
            return
        if kind == "cancel":
            cancelled.add(job)
            continue
        if kind == "finetune":
            _finetune_job(connection, job, message[2], read_cancellations, cancelled)
            continue
        _, _, source, images, batch_size = message
        with _errors_reported(connection, job, "try fewer frames at once or a smaller photo"):
            # a file re-written by fine-tuning is loaded again: its time is part of the key
            key = (source, os.stat(source).st_mtime_ns if source and os.path.exists(source) else 0)
            if key not in models:
                models.clear()  # one model in memory at a time
                models[key] = load_model(source)
            for result in segment_stack(images, models[key], batch_size=batch_size):
                read_cancellations()
                if job in cancelled:
                    break
                connection.send(("result", job, result.index, result.labels, result.confidence))
            connection.send(("done", job))


@contextmanager
def _errors_reported(connection, job: int, out_of_memory_hint: str):
    """Send a failing job's reason to the parent as one line; the child stays usable."""
    from .cihp import DatasetError
    from .model import ModelError

    try:
        yield
    except (ModelError, DatasetError, ValueError) as error:
        connection.send(("error", job, str(error)))
    except MemoryError:
        connection.send(("error", job, f"the model process ran out of memory; {out_of_memory_hint}"))
    except Exception as error:
        connection.send(("error", job, f"{type(error).__name__}: {error}"))


def _finetune_job(connection, job, options: dict, read_cancellations, cancelled) -> None:
    from dataclasses import asdict

    from .model import load_model
    from .training import finetune, training_and_validation

    with _errors_reported(connection, job, "try a smaller batch or image size"):
        train, val = training_and_validation(options["root"], options["split"], options["val_split"])
        model = load_model(options["source"])
        settings = {key: options[key] for key in ("epochs", "batch_size", "image_size",
                                                  "learning_rate")}
        for report in finetune(model, train, val, options["out"], **settings):
            connection.send(("epoch", job, asdict(report)))
            read_cancellations()
            if job in cancelled:
                break
        connection.send(("done", job))


class ModelProcess:
    """The model's own process: started on first use, reused, restarted after a crash.

    The child is a fresh ``python -m napari_deeplab.model_process`` (not a fork of napari, nor
    a re-import of the caller's main module) connected by a socket pair; its stderr goes to
    :attr:`log_path`.
    """

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._connection = None
        self._job_ids = itertools.count()
        self.log_path = Path(tempfile.gettempdir()) / f"napari-deeplab-model-{os.getpid()}.log"

    @property
    def pid(self) -> int | None:
        """The child's process id, or None while none runs."""
        return self._process.pid if self.is_alive() else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _ensure_started(self) -> None:
        if self.is_alive():
            return
        self._discard_process()
        parent_socket, child_socket = socket.socketpair()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "napari_deeplab.model_process", str(child_socket.fileno())],
                pass_fds=[child_socket.fileno()], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=env)
        child_socket.close()
        self._connection = Connection(parent_socket.detach())

    def segment(self, images: Sequence[np.ndarray], source: str | None,
                batch_size: int = 1) -> Iterator[Waiting | FrameResult]:
        """Segment ``images`` with the model ``source`` (anything ``load_model`` takes).

        Yields :class:`Waiting` about every 50 ms while the child works and one
        :class:`FrameResult` per photo, in order. Closing the generator cancels the job.
        Raises :class:`ModelProcessError` if the model cannot be loaded or the child dies
        (the next job then starts a fresh child).
        """
        for kind, payload in self._job(("segment", source, list(images), batch_size), len(images)):
            yield Waiting(*payload) if kind == "waiting" else FrameResult(*payload)

    def finetune(self, **options) -> Iterator[Waiting | dict]:
        """Fine-tune in the child (``root``, ``split``, ``val_split``, ``source``, ``out``,
        ``epochs``, ``batch_size``, ``image_size``, ``learning_rate``, as
        :func:`napari_deeplab.training.finetune`). Yields :class:`Waiting` while it works and
        one dict per epoch (the fields of ``EpochReport``). Closing the generator stops the
        training after the epoch in hand; the output file holds the best model so far."""
        for kind, payload in self._job(("finetune", options), options["epochs"] + 1):
            yield Waiting(*payload) if kind == "waiting" else payload[0]

    def _job(self, request: tuple, total: int):
        """Send one job and yield ("waiting", (done, total)) or (kind, payload) as it answers."""
        self._ensure_started()
        job = next(self._job_ids)
        done = 0
        finished = False
        try:
            try:
                self._connection.send((request[0], job, *request[1:]))
            except OSError:
                raise ModelProcessError(self._death_message()) from None
            while True:
                if not self._connection.poll(POLL_SECONDS):
                    if not self.is_alive():
                        raise ModelProcessError(self._death_message())
                    yield "waiting", (done, total)
                    continue
                try:
                    kind, message_job, *payload = self._connection.recv()
                except (EOFError, OSError):
                    raise ModelProcessError(self._death_message()) from None
                if message_job != job:
                    continue  # the tail of a cancelled job
                if kind == "done":
                    finished = True
                    return
                if kind == "error":
                    finished = True
                    raise ModelProcessError(payload[0])
                done += 1
                yield kind, payload
        except ModelProcessError:
            finished = True
            if not self.is_alive():
                self._discard_process()
            raise
        finally:
            if not finished and self.is_alive():
                try:
                    self._connection.send(("cancel", job))
                except OSError:
                    pass

    def _death_message(self) -> str:
        try:
            code = self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0 and -code == signal.SIGKILL:
            why = "it was killed (out of memory?)"
        elif code is not None and code < 0:
            why = f"it crashed ({signal.Signals(-code).name})"
        else:
            why = f"it exited with code {code}"
        return f"the model process stopped: {why}; see {self.log_path}; run again to start a new one"

    def _discard_process(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (politely, then by force) and wait for it."""
        if self._process is None:
            return
        if self.is_alive():
            try:
                self._connection.send(("shutdown", -1))
                self._process.wait(timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(timeout)
        self._discard_process()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the child: ``python -m napari_deeplab.model_process FD``."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the parent's business
    _serve(Connection(int(argv[0])))


if __name__ == "__main__":
    main()
