"""The run/Cancel buttons, status line and activity-panel progress bar of a widget's one job."""

from __future__ import annotations

from napari.utils import progress
from qtpy.QtWidgets import QLabel, QPushButton


class JobControls:
    """Enables ``start`` or ``cancel`` as a job starts and ends, and keeps its progress bar."""

    def __init__(self, start: QPushButton, cancel: QPushButton, status: QLabel):
        self.start, self.cancel, self.status = start, cancel, status
        self._progress = None

    def begin(self, total: int, description: str, message: str) -> None:
        self._progress = progress(total=total, desc=description)
        self._show(True, message)

    def advance(self) -> None:
        """One step done (napari's progress bar processes pending Qt events while updating)."""
        if self._progress is not None:
            self._progress.update(1)

    def end(self, message: str | None = None) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._show(False, message)

    def _show(self, running: bool, message: str | None) -> None:
        self.start.setEnabled(not running)
        self.cancel.setEnabled(running)
        if message is not None:
            self.status.setText(message)
