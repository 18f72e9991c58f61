"""One job at a time per widget: its Run and Cancel buttons, status line and progress bar.

A widget describes its work as a :class:`Job` (a generator that runs in a napari worker
thread, plus what to do with each result in the GUI thread); :class:`JobRunner` starts it,
shows its progress, ends it as "done", "cancelled" or "failed", and drops results that arrive
after Cancel. The same generator runs synchronously in tests and scripts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import Container, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QSizePolicy

from ..worker import ModelProcessError, Waiting
from .shortcuts import on_removed


class JobRefused(ValueError):
    """The job cannot start (no photo, a model that does not exist, ...); the message says why
    and what to do. Raised by a widget's ``prepare`` before anything runs."""


@dataclass
class Job:
    """What a widget runs.

    ``work`` runs in a worker thread and yields results (and :class:`Waiting` heartbeats, which
    let Cancel take effect between them); ``on_result`` gets each result in the GUI thread;
    ``on_done`` runs after the last one and returns the status line of a job that succeeded.
    """

    work: Iterator
    total: int
    description: str
    on_result: Callable[[Any], None]
    on_done: Callable[[], str] = lambda: "Done"
    message: str = "Running…"


class JobRunner(Container):
    """Run / Cancel buttons and a status line; ``prepare`` makes the :class:`Job` on Run.

    ``prepare`` returns a Job, or raises :class:`JobRefused` (shown at once, nothing starts).
    """

    def __init__(
        self,
        prepare: Callable[[], Job],
        *,
        run_text: str = "Run",
        run_tooltip: str = "",
        cancel_tooltip: str = "Stop at once",
    ):
        self.run_button = PushButton(text=run_text, tooltip=run_tooltip)
        self.cancel_button = PushButton(text="Cancel", tooltip=cancel_tooltip, enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        # magicgui makes labels Fixed: a wrapped status would be clipped to its first words
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[buttons, self.status], labels=False)
        self.margins = (0, 0, 0, 0)
        self._prepare = prepare
        self._job: Job | None = None
        self._cancelled: threading.Event | None = None
        self._progress = None
        self._stage = ""
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self._job is not None

    def run(self) -> None:
        """Start the widget's job (nothing happens while one runs)."""
        if self.running:
            return
        try:
            job = self._prepare()
        except JobRefused as refusal:
            self._fail(str(refusal))
            return
        self.run_job(job)

    def run_job(self, job: Job) -> None:
        """Start ``job`` (made by the widget rather than by ``prepare``), if none runs."""
        if self.running:
            return
        cancelled = threading.Event()

        def work():
            try:
                for item in job.work:
                    if cancelled.is_set():
                        return
                    yield item
            finally:
                job.work.close()  # e.g. tells the model process to drop the job

        worker = create_worker(work, _ignore_errors=True)
        worker.yielded.connect(lambda item: self._on_yielded(job, item))
        worker.errored.connect(lambda error: self._on_error(job, error))
        worker.finished.connect(lambda: self._on_finished(job))
        self._job, self._cancelled, self._stage = job, cancelled, ""
        self._progress = progress(total=job.total, desc=job.description)
        self._show(True, job.message)
        worker.start()

    def cancel(self) -> None:
        """Stop the job: results still in flight are dropped, finished ones stay."""
        if not self.running:
            return
        self._cancelled.set()
        self._end("Cancelled")

    def _on_yielded(self, job: Job, item) -> None:
        if job is not self._job:
            return
        if isinstance(item, Waiting):
            self._show_stage(job, item)
            return
        try:
            job.on_result(item)
        except Exception as error:  # a result the widget cannot take ends the job as failed
            self._cancelled.set()
            self._on_error(job, error)
            return
        if self._progress is not None:
            self._progress.update(1)

    def _show_stage(self, job: Job, waiting: Waiting) -> None:
        """What a long wait is doing now ("loading TensorFlow", "epoch 1 of 5: step 3 of 20"),
        in the status line and the activity panel, as soon as it changes."""
        if not waiting.stage or waiting.stage == self._stage:
            return
        self._stage = waiting.stage
        self.status.value = f"{waiting.stage[0].upper()}{waiting.stage[1:]}…"
        if self._progress is not None:
            self._progress.set_description(f"{job.description}: {waiting.stage}")

    def _on_error(self, job: Job, error: BaseException) -> None:
        if job is not self._job:
            return
        message = (
            str(error)
            if isinstance(error, (ModelProcessError, ValueError, OSError))
            else f"{type(error).__name__}: {error}"
        )
        self._fail(message)
        self._end(None)

    def _on_finished(self, job: Job) -> None:
        if job is not self._job:
            return  # cancelled or failed: already ended
        try:
            message = job.on_done()
        except Exception as error:
            self._on_error(job, error)
            return
        self._end(message)

    def _fail(self, message: str) -> None:
        show_error(message)
        self.status.value = f"Failed: {message}"

    def _end(self, message: str | None) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._job = None
        self._show(False, message)

    def _show(self, running: bool, message: str | None) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if message is not None:
            self.status.value = message


def in_thread(
    compute: Callable[[Callable[[int, int], None]], Any], stage: str, poll: float = 0.05
) -> Iterator:
    """A Job's ``work`` for a function that runs a while in this process: ``compute(progress)``
    runs in a thread of its own while this generator yields :class:`Waiting` (``stage`` and
    the ``progress(done, total)`` it last reported) every ``poll`` seconds, then its result.
    Closing the generator (Cancel) makes the next ``progress`` call raise, which stops it."""
    state = {"done": 0, "total": 0}
    stop = threading.Event()

    class Stopped(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if stop.is_set():
            raise Stopped
        state["done"], state["total"] = done, total

    def run() -> None:
        try:
            state["result"] = compute(progress)
        except Stopped:
            pass
        except BaseException as error:  # noqa: BLE001  raised again in the worker
            state["error"] = error

    thread = threading.Thread(target=run, daemon=True, name=f"napari-deeplab {stage}")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(poll)
            total = state["total"]
            yield Waiting(
                state["done"], total, f"{stage} ({state['done']} of {total})" if total else stage
            )
        if "error" in state:
            raise state["error"]
        yield state["result"]
    finally:
        stop.set()


_MODEL_USERS: set[int] = set()


def model_process_for(widget: Container):
    """The session's shared model process, for ``widget``: the process is stopped when the last
    widget that uses it is destroyed (the viewer closed), not while another still runs jobs."""
    from .shared_worker import shared_model_process

    process = shared_model_process()
    user = id(widget.native)
    _MODEL_USERS.add(user)

    def release():
        _MODEL_USERS.discard(user)
        if not _MODEL_USERS:
            process.close()

    on_removed(widget, release)
    return process
