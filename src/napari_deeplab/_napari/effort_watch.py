"""What the review queue measures of the annotator's work on each photo, for the effort log:
the active time (the photo shown and the viewer in use) and the editing actions.

The viewer is "in use" at each mouse move, press or wheel over the canvas (napari's public
mouse callbacks of the viewer), each camera change (pan, zoom, also from keys) and each edit;
:class:`~napari_deeplab.effort.ActiveClock` turns those moments into active seconds, leaving
out idle gaps. An editing action is one undoable step of the parts layer (a stroke, a fill, a
polygon: napari's ``paint`` event), the model's own writes not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from napari.utils.notifications import show_warning

from .. import review_effort
from ..cihp import effort_log
from ..effort import IDLE_GAP_S, ActiveClock
from ..review_effort import figures_line
from .parts_layer import TRACKER_KEY


class EffortWatch:
    """Per photo (by sample id): an :class:`ActiveClock` and a count of editing actions.

    :meth:`show` when a photo is shown (the previous one's clock pauses), :meth:`take` at its
    Accept. ``now``: the clock read (seconds, monotonic)."""

    def __init__(
        self, viewer, idle_gap_s: float = IDLE_GAP_S, now: Callable[[], float] = time.monotonic
    ):
        self.now = now
        self.idle_gap_s = idle_gap_s
        self.shown: str | None = None
        self._clocks: dict[str, ActiveClock] = {}
        self._actions: dict[str, int] = {}
        self._log_read: dict = {}  # effort log path -> (bytes read, entries read)
        self._viewer = viewer
        self._callbacks = [
            (viewer.mouse_move_callbacks, self._mouse),
            (viewer.mouse_drag_callbacks, self._mouse),
            (viewer.mouse_wheel_callbacks, self._mouse),
        ]
        for callbacks, callback in self._callbacks:
            callbacks.append(callback)
        viewer.scene.camera.events.connect(self._in_use)

    def _mouse(self, _viewer, _event) -> None:
        self._in_use()

    def _in_use(self, _event=None) -> None:
        clock = self._clocks.get(self.shown)
        if clock is not None:
            clock.event(self.now())

    def watch_layer(self, layer) -> None:
        """Count the edits of ``layer`` (the queue's parts layer) as actions on the photo shown."""
        layer.events.paint.connect(self._painted)

    def _painted(self, event) -> None:
        tracker = event.source.metadata.get(TRACKER_KEY) if event.source is not None else None
        if self.shown is None or getattr(tracker, "model_writing", False):
            return
        self._actions[self.shown] = self._actions.get(self.shown, 0) + 1
        self._in_use()

    def show(self, sample_id: str | None) -> None:
        """``sample_id`` is shown now (None: no photo): its clock runs, the previous pauses."""
        if sample_id == self.shown:
            return
        now = self.now()
        if self.shown in self._clocks:
            self._clocks[self.shown].pause(now)
        self.shown = sample_id
        if sample_id is not None:
            self._clocks.setdefault(sample_id, ActiveClock(self.idle_gap_s)).resume(now)

    def take(self, sample_id: str) -> tuple[int, float]:
        """(editing actions, active seconds) on ``sample_id`` since it was first shown or last
        taken; its counts start again from 0 (running on if it is shown)."""
        clock = self._clocks.pop(sample_id, None)
        active_s = 0.0 if clock is None else clock.pause(self.now())
        if sample_id == self.shown:
            self._clocks[sample_id] = ActiveClock(self.idle_gap_s)
            self._clocks[sample_id].resume(self.now())
        return self._actions.pop(sample_id, 0), active_s

    def figures(self, queue, model: str | None) -> str:
        """The running figures of the queue's dataset (:func:`review_effort.figures_line`),
        reading only the lines appended since the last call (by anyone); a log that cannot be
        read shows nothing (the Accepts go on)."""
        path = effort_log.effort_log_path(queue.root)
        end, entries = self._log_read.get(path, (0, []))
        try:
            log = effort_log.read_log(queue.root, start=end)
        except OSError:
            return ""
        entries = entries + log.entries
        self._log_read[path] = (log.end, entries)
        return figures_line(entries, model)

    def close(self) -> None:
        for callbacks, callback in self._callbacks:
            if callback in callbacks:
                callbacks.remove(callback)
        self._viewer.scene.camera.events.disconnect(self._in_use)


def log_accept(watch: EffortWatch, queue, sample_id: str, labels, state: str | None) -> str:
    """After ``sample_id`` was exported from ``queue``: append its effort (the actions and
    active time ``watch`` measured) to the dataset's log; return the running figures. A log
    that cannot be written is said in one warning; the export stands."""
    actions, active_s = watch.take(sample_id)
    try:
        entry = review_effort.log_accept(
            queue, sample_id, labels, state=state, actions=actions, active_s=active_s
        )
    except (OSError, ValueError) as error:  # DatasetError (the lock) is a ValueError
        show_warning(f"{sample_id} was exported, but its effort was not logged: {error}")
        return watch.figures(queue, None)
    return watch.figures(queue, entry["model"])
