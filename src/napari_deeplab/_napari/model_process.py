"""The one model process of a napari session, shared by the widgets and closed with napari."""

from __future__ import annotations

import atexit

from ..model_process import ModelProcess

_PROCESS: ModelProcess | None = None


def shared_model_process() -> ModelProcess:
    """The session's :class:`ModelProcess`; its child starts on the first job."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = ModelProcess()
        atexit.register(_PROCESS.close)
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(_PROCESS.close)
    return _PROCESS
