"""The one model process of a napari session, shared by the widgets and closed with napari."""

from __future__ import annotations

import atexit
import threading

from ..worker import ModelProcess

_PROCESS: ModelProcess | None = None
_PROCESS_LOCK = threading.Lock()


def shared_model_process() -> ModelProcess:
    """The session's :class:`ModelProcess`; its child starts on the first job.

    Every widget may run jobs on it at the same time, from any thread: each gets its own
    results, and fine-tuning runs in a process of its own.
    """
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None:
            _PROCESS = ModelProcess()
            atexit.register(_PROCESS.close)
            from qtpy.QtWidgets import QApplication

            app = QApplication.instance()
            if app is not None:
                app.aboutToQuit.connect(_PROCESS.close)
        return _PROCESS
