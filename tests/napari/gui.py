"""Where a user's keys and clicks land in napari: the one set of GUI helpers of the napari tests
(the fixtures of ``conftest.py`` and ``review_driver.py`` use them too).

napari has no public handle on its Qt main window or its canvas widget: ``Window.qt_viewer`` is
deprecated as "an implementation detail of the napari application". :func:`main_window` is
therefore the one place the tests reach a private attribute (``Window._qt_window``); the canvas
is found from it with Qt's public ``findChild`` (the canvas is the window's only OpenGL widget).
"""

import time

import numpy as np
from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from qtpy.QtGui import QDropEvent
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QMainWindow, QOpenGLWidget, QWidget

PLUGIN = "napari-deeplab"
NO_MODIFIER = Qt.KeyboardModifier.NoModifier


def dock_plugin(viewer, display_name: str):
    """``dock_plugin(viewer, "Human parts")`` -> (dock, widget), as Plugins > napari-deeplab >
    Human parts opens it (the widget gets napari's proxy viewer)."""
    return viewer.window.add_plugin_dock_widget(PLUGIN, display_name)


def main_window(viewer) -> QMainWindow:
    """napari's main window (its menu bar, its size, the focus between the canvas and docks)."""
    return viewer.window._qt_window


def canvas_widget(viewer) -> QWidget:
    """The Qt widget of the canvas: where the keyboard's and the mouse's events arrive."""
    return main_window(viewer).findChild(QOpenGLWidget)


def canvas_point(viewer, row: float, col: float) -> QPoint:
    """Where the data pixel (row, col) of an unscaled 2D layer is on the canvas."""
    canvas = canvas_widget(viewer)
    center, zoom = viewer.camera.center, viewer.camera.zoom
    return QPoint(
        round((col - center[-1]) * zoom + canvas.width() / 2),
        round((row - center[-2]) * zoom + canvas.height() / 2),
    )


def drag(qtbot, viewer, start: tuple, end: tuple, steps: int = 12) -> None:
    """A mouse drag with the left button from data pixel ``start`` to ``end`` (row, col), as a
    hand on the mouse makes it."""
    canvas = canvas_widget(viewer)
    points = [
        canvas_point(viewer, *(np.array(start) + (np.array(end) - start) * i / steps))
        for i in range(steps + 1)
    ]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=points[0])
    for point in points[1:]:
        qtbot.mouseMove(canvas, point)
        qtbot.wait(5)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=points[-1])


def press_key(viewer, key, modifiers=NO_MODIFIER, times: int = 1) -> float:
    """Real key presses on the canvas, as the keyboard sends them (``times`` without a wait in
    between); returns how long the last one took in seconds (the GUI's stall)."""
    canvas = canvas_widget(viewer)
    canvas.setFocus()
    for _ in range(times):
        start = time.perf_counter()
        QTest.keyClick(canvas, key, modifiers)
    return time.perf_counter() - start


def drop_files(viewer, paths) -> None:
    """Files dropped on the canvas, as from a file manager: napari opens them as File > Open
    does (asking which reader where several could read a file). The drop goes to the canvas's
    nearest ancestor that accepts drops, as Qt delivers it; its handler is called directly,
    since Qt delivers a drop event only during a drag of its own."""
    target = canvas_widget(viewer)
    while not target.acceptDrops():
        target = target.parentWidget()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    drop = QDropEvent(
        QPointF(target.rect().center()),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        NO_MODIFIER,
    )
    target.dropEvent(drop)
