"""Viewer key bindings that live exactly as long as the widget that made them is docked, with
one owner per key however many widgets bind it, and keys that keep working after a click.

The bindings hold only a weak reference to the widget, and are removed when the widget leaves
the viewer (its dock closed, or the viewer), so a removed widget is neither kept alive nor
called. Keys are letters or named keys with modifiers, never Shift+digit (which arrives as
"!" or "&" depending on the keyboard layout).

One owner per key. Several widgets may bind the same key (Human parts and the Review queue both
step through the classes with Shift+Up/Down). The viewer then holds one binding per key, a
:class:`KeyOwners`, which calls the widget whose parts layer is the active layer (the widget's
``owns_layer(layer)``, or else its ``parts_layer()``, decides); when none is, the last widget
docked that has a parts layer, else the last one docked.

Keys after a click. The buttons of a widget that binds keys take no keyboard focus, a choice
in a drop-down list or Enter in a text field gives the focus back to the canvas, and Escape
anywhere in the widget does too. Typing in a text field never triggers a key: the field has the
focus and takes the letters.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from magicgui.widgets import Widget
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QMainWindow, QShortcut

try:
    from qtpy.QtGui import QKeySequence
except ImportError:  # pragma: no cover
    from qtpy.QtWidgets import QKeySequence


class KeyOwners:
    """The viewer's one binding of a key: the widgets that bound it, and which one a press
    calls (see the module docstring)."""

    def __init__(self, key: str = ""):
        self.entries: list[tuple[weakref.ref, weakref.WeakMethod]] = []
        self.__name__ = f"napari_deeplab_{key}"  # napari's key handling reads it

    def add(self, widget: Widget, action: Callable[[], object]) -> None:
        self.entries.append((weakref.ref(widget), weakref.WeakMethod(action)))

    def remove(self, widget: Widget) -> None:
        self.entries = [(w, a) for w, a in self.entries if w() is not None and w() is not widget]

    def alive(self) -> list[tuple[Widget, Callable[[], object]]]:
        pairs = [(w(), a()) for w, a in self.entries]
        return [
            (widget, action)
            for widget, action in pairs
            if widget is not None and action is not None
        ]

    def owner(self, viewer) -> Callable[[], object] | None:
        """The action a press of the key calls now."""
        alive = self.alive()
        if len(alive) <= 1:
            return alive[0][1] if alive else None
        active = viewer.layers.selection.active
        if active is not None:
            for widget, action in reversed(alive):
                if _owns(widget, active):
                    return action
        for widget, action in reversed(alive):
            if _parts_of(widget) is not None:
                return action
        return alive[-1][1]

    def __call__(self, viewer) -> None:
        action = self.owner(viewer)
        if action is not None:
            action()


def _unwrapped(value):
    """``value`` without napari's PublicOnlyProxy (it wraps what modules named napari* make)."""
    return getattr(value, "__wrapped__", value)


def _parts_of(widget):
    parts_layer = getattr(widget, "parts_layer", None)
    if not callable(parts_layer):
        return None
    try:
        return parts_layer()
    except Exception:  # e.g. "No parts layer: ..." refusals
        return None


def _owns(widget, layer) -> bool:
    owns = getattr(widget, "owns_layer", None)
    if callable(owns):
        return bool(owns(layer))
    parts = _parts_of(widget)
    return parts is not None and parts.name == layer.name


def bind_keys(viewer, widget: Widget, actions: dict[str, Callable[[], object]]) -> None:
    """Bind each key of ``actions`` (e.g. ``"Shift-R"``) on ``viewer`` to its action, a bound
    method of ``widget``, while ``widget`` lives; make the widget's buttons, lists and fields
    give the keys back to the canvas (:func:`keep_keys_on_canvas`)."""
    keys = []
    for key, action in actions.items():
        owners = _unwrapped(viewer.keymap.get(_normalized(key)))
        if not isinstance(owners, KeyOwners) or not owners.alive():
            owners = KeyOwners(key)
            viewer.bind_key(key, owners, overwrite=True)
        owners.add(widget, action)
        keys.append((key, owners))

    def unbind(*_):
        for key, owners in keys:
            owners.remove(widget)
            if not owners.alive() and _unwrapped(viewer.keymap.get(_normalized(key))) is owners:
                viewer.bind_key(key, None)  # not rebound by another widget

    on_removed(widget, unbind)
    keep_keys_on_canvas(widget)


def canvas_of(native) -> QObject | None:
    """The viewer's canvas widget (napari's QtViewer, which hands keys to the canvas) of the
    window that ``native`` is docked in, found through Qt alone (no private napari attribute)."""
    window = native.window()
    if not isinstance(window, QMainWindow) or window.centralWidget() is None:
        return None
    layout = window.centralWidget().layout()
    item = layout.itemAt(0) if layout is not None and layout.count() else None
    return item.widget() if item is not None else None


def focus_canvas(native) -> None:
    """Give the keyboard focus back to the canvas, where the viewer's keys work."""
    canvas = canvas_of(native)
    if canvas is not None:
        canvas.setFocus(Qt.FocusReason.ShortcutFocusReason)


def keep_keys_on_canvas(widget: Widget) -> None:
    """Buttons take no focus; a choice in a drop-down, Enter in a text field and Escape
    anywhere in ``widget`` give the focus back to the canvas."""
    native = widget.native
    if getattr(native, "_napari_deeplab_keys_kept", False):
        return
    native._napari_deeplab_keys_kept = True
    for button in native.findChildren(QAbstractButton):
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    back = weakref.ref(native)

    def refocus(*_):
        if (alive := back()) is not None:
            focus_canvas(alive)

    for combo in native.findChildren(QComboBox):
        combo.activated.connect(refocus)
    for line in native.findChildren(QLineEdit):
        line.returnPressed.connect(refocus)
    escape = QShortcut(QKeySequence(Qt.Key.Key_Escape), native)
    escape.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
    escape.activated.connect(refocus)


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


def help_label(actions: dict[str, str], **kwargs):
    """A magicgui Label of :func:`shortcut_help` on one line that never widens the dock (a long
    line would, until napari's canvas has no room left): cut at the dock's edge, the whole
    line in its tooltip (and in docs/workflow.md)."""
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    text = shortcut_help(actions)
    label = Label(value=text, tooltip=text, **kwargs)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label
