"""Viewer key bindings that live exactly as long as the widget that made them is docked.

The bindings hold only a weak reference to the widget, and are removed when the widget leaves
the viewer (its dock closed, or the viewer), so a removed widget is neither kept alive nor
called. Keys are letters or named keys with modifiers, never Shift+digit (which arrives as
"!" or "&" depending on the keyboard layout).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from magicgui.widgets import Widget
from qtpy.QtCore import QEvent, QObject


def bind_keys(viewer, widget: Widget, actions: dict[str, Callable[[], object]]) -> None:
    """Bind each key of ``actions`` (e.g. ``"Shift-R"``) on ``viewer`` to its action, a bound
    method of ``widget``, while ``widget`` lives."""
    bound = {}
    for key, action in actions.items():
        method = weakref.WeakMethod(action)

        def call(_viewer, method=method):
            action = method()
            if action is not None:
                action()

        viewer.bind_key(key, call, overwrite=True)
        bound[key] = call

    def unbind(*_):
        for key, call in bound.items():
            if viewer.keymap.get(_normalized(key)) is call:  # not rebound by another widget
                viewer.bind_key(key, None)

    on_removed(widget, unbind)


class _RemovalWatch(QObject):
    """Calls ``callback`` once when the watched widget is destroyed or taken out of its dock
    (napari's ``remove_dock_widget`` un-parents the widget rather than deleting it)."""

    def __init__(self, watched, callback: Callable[[], None]):
        super().__init__(watched)
        self._callback = callback
        self._docked = watched.parent() is not None
        watched.installEventFilter(self)
        watched.destroyed.connect(self._fire)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if watched.parent() is not None:
                self._docked = True
            elif self._docked:
                self._fire()
        return False

    def _fire(self, *_) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def on_removed(widget: Widget, callback: Callable[[], None]) -> None:
    """Call ``callback`` once when ``widget`` leaves the viewer (dock closed, viewer closed)."""
    _RemovalWatch(widget.native, callback)


def _normalized(key: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)


def shortcut_help(actions: dict[str, str]) -> str:
    """One help line, e.g. ``"Shift-R: run · Shift-Up/Down: class"`` from {key: what}."""
    return " · ".join(f"{key}: {what}" for key, what in actions.items())
