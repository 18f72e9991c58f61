"""A second annotator for the team tests: a real napari viewer in its own process, with the
Review queue opened from the Plugins menu, driven through a line protocol.

stdin: one JSON list per line, e.g. ``["open", photos, dataset, model]``, ``["key", "A", "Alt"]``,
``["click", "accept_button"]``, ``["paint", y, x, label]``, ``["wait", seconds]``,
``["wait_prelabel"]``, ``["state"]``, ``["close"]`` (viewer.close(), then exit).
stdout: one JSON object per command: ``{"ok": true, "shown": ..., "status": ..., "rows": [...]}``
(``{"ok": false, "error": ...}`` if the command failed). Lines not starting with ``{`` are noise.
"""

import json
import queue
import sys
import threading
import time
import traceback

import napari
import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication

import napari_deeplab._napari.review_widget as review_widget
from tests.napari.gui import press_key

review_widget.CLAIM_HEARTBEAT_S = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5

MODIFIERS = {
    "Alt": Qt.KeyboardModifier.AltModifier,
    "Shift": Qt.KeyboardModifier.ShiftModifier,
    "Control": Qt.KeyboardModifier.ControlModifier,
    "": Qt.KeyboardModifier.NoModifier,
}


def main() -> None:
    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [commands.put(line) for line in sys.stdin], daemon=True).start()
    waiting: list = []  # (predicate, then) of a command that waits

    def state(**extra) -> dict:
        parts = widget.parts_layer()
        return {
            "ok": True,
            "shown": widget.shown_id,
            "status": widget.status.value,
            "progress": widget.progress.value,
            "rows": [widget.photo_list.item(i).text() for i in range(widget.photo_list.count())],
            "parts_sum": None if parts is None else int(np.asarray(parts.data, np.int64).sum()),
            "choice": widget.choice_row.visible,
            **extra,
        }

    def reply(answer: dict) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    def run(command: list) -> dict | None:
        name, args = command[0], command[1:]
        if name == "open":
            widget.photos.value, widget.dataset.value, widget.model.source = args
            widget.open_button.native.click()
        elif name == "key":
            key = getattr(Qt.Key, f"Key_{args[0]}")
            times = args[2] if len(args) > 2 else 1  # a double press: no wait between
            press_key(viewer, key, MODIFIERS[args[1]], times)
        elif name == "click":
            getattr(widget, args[0]).native.click()
        elif name == "paint":
            widget.parts_layer().paint(tuple(args[:2]), args[2], refresh=True)
        elif name == "wait":
            until = time.monotonic() + args[0]
            waiting.append((lambda: time.monotonic() >= until, state))
            return None
        elif name == "wait_prelabel":
            waiting.append((lambda: not widget.prelabelling, state))
            return None
        elif name == "close":
            viewer.close()
            reply({"ok": True, "closed": True})
            QApplication.instance().quit()
            return None
        return state()

    def tick() -> None:
        if waiting:
            predicate, then = waiting[0]
            if predicate():
                waiting.pop(0)
                reply(then())
            return
        try:
            line = commands.get_nowait()
        except queue.Empty:
            return
        try:
            answer = run(json.loads(line))
        except Exception as error:  # noqa: BLE001 - reported to the test
            answer = {"ok": False, "error": f"{error!r}", "trace": traceback.format_exc()}
        if answer is not None:
            reply(answer)

    timer = QTimer(interval=20)
    timer.timeout.connect(tick)
    timer.start()
    reply({"ok": True, "ready": True})
    napari.run()


if __name__ == "__main__":
    main()
