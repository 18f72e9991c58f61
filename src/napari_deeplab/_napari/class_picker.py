"""Any of the 20 CIHP classes in two keystrokes while painting: the class picker.

``C`` on the canvas opens a small list of the classes at the cursor; each class has one letter
of its own (:data:`CLASS_KEYS`: ``h`` hair, ``f`` face, ``a`` left-arm, ``r`` right-arm, ...),
and pressing it paints with that class and closes the list: two keystrokes, no Enter, no
modifier. Up/Down and Enter choose too, Escape closes. The classes used last sit on ``F1`` ..
``F4`` (:class:`RecentSlots`: a class keeps its key until it is the least recently used of the
four and a new one needs the slot), one keystroke each, on the canvas and in the list.

Keys. Neither ``C`` nor the F keys are napari's Labels keys (digits 1-7, E P F L Z M X B, V,
Space, Enter, Escape, - = [ ]) or another key of the plugin (Shift+letters, Alt+arrows); the
digits are avoided because on AZERTY they need Shift. Letters are read as the character
typed, so they follow the layout (QWERTY, QWERTZ, AZERTY, Dvorak: the letter printed on the
key), with the key's Latin letter (``nativeVirtualKey``) where the character is not one (Windows
and macOS on non-Latin layouts); F1-F4, arrows, Enter and Escape are the same on every layout.

Both widgets with a parts legend (Human parts, Review queue) attach one
(:func:`attach_class_picker`); the legend shows each class's letter and F key.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QCursor, QIcon, QPixmap
from qtpy.QtWidgets import QFrame, QLabel, QListWidget, QListWidgetItem, QVBoxLayout

from ..cihp import CLASS_NAMES, PALETTE
from .shortcuts import bind_keys

PICKER_KEY = "C"
"""Opens the class picker (napari's Labels layer does not use C)."""

RECENT_KEYS = ("F1", "F2", "F3", "F4")
"""The recently used classes, one key each."""

CLASS_KEYS: dict[str, int] = {
    "b": 0,  # background
    "t": 1,  # hat
    "h": 2,  # hair
    "v": 3,  # glove
    "n": 4,  # sunglasses
    "u": 5,  # upper-clothes
    "d": 6,  # dress
    "c": 7,  # coat
    "k": 8,  # socks
    "p": 9,  # pants
    "o": 10,  # torso-skin
    "w": 11,  # scarf (wrap)
    "s": 12,  # skirt
    "f": 13,  # face
    "a": 14,  # left-arm
    "r": 15,  # right-arm
    "l": 16,  # left-leg
    "g": 17,  # right-leg
    "e": 18,  # left-shoe
    "i": 19,  # right-shoe
}
"""The letter that picks each class in the picker: a letter of its name where one is free
(left and right share their part's letters, so the right side takes another of its name)."""

KEY_OF_CLASS: dict[int, str] = {value: key for key, value in CLASS_KEYS.items()}
assert sorted(KEY_OF_CLASS) == list(range(len(CLASS_NAMES))), "one letter per class"


class RecentSlots:
    """The classes used last, each on a fixed slot (``F1`` .. ``F4``): a class already in a
    slot keeps it; a new one takes an empty slot, else the least recently used one's. Keys
    do not move under the annotator's fingers as they switch between the classes in the slots."""

    def __init__(self, size: int = len(RECENT_KEYS)):
        self.slots: list[int | None] = [None] * size
        self._last_used = [0] * size
        self._clock = 0

    def record(self, value: int) -> None:
        """Class ``value`` was just chosen."""
        self._clock += 1
        if value in self.slots:
            slot = self.slots.index(value)
        elif None in self.slots:
            slot = self.slots.index(None)
        else:
            slot = min(range(len(self.slots)), key=self._last_used.__getitem__)
        self.slots[slot] = value
        self._last_used[slot] = self._clock

    def slot_of(self, value: int) -> int | None:
        return self.slots.index(value) if value in self.slots else None


def keys_of_class(value: int, recent: RecentSlots) -> str:
    """How to reach class ``value``: e.g. ``"C h · F1"``."""
    keys = f"{PICKER_KEY} {KEY_OF_CLASS[value]}"
    slot = recent.slot_of(value)
    return keys if slot is None else f"{keys} · {RECENT_KEYS[slot]}"


class ClassPickerPopup(QFrame):
    """The list the picker key opens: one row per class (its letter, colour, name and F key).
    A class's letter picks it; Up/Down and Enter too; F1-F4 (or 1-4) a recent class."""

    def __init__(self, pick: Callable[[int], None], recent: RecentSlots, current: int):
        super().__init__(None, Qt.WindowType.Popup)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._pick = pick
        self._recent = recent
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(QLabel("Class: press its letter (Esc: close)"))
        self.list = QListWidget()
        self.list.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the frame takes the keys
        for value, name in enumerate(CLASS_NAMES):
            swatch = QPixmap(12, 12)
            swatch.fill(QColor(*PALETTE[value]))
            slot = recent.slot_of(value)
            recent_key = f"   {RECENT_KEYS[slot]}" if slot is not None else ""
            self.list.addItem(
                QListWidgetItem(QIcon(swatch), f"{KEY_OF_CLASS[value]}   {name}{recent_key}")
            )
        self.list.setCurrentRow(max(0, min(current, len(CLASS_NAMES) - 1)))
        self.list.itemClicked.connect(lambda item: self.choose(self.list.row(item)))
        rows = len(CLASS_NAMES) * self.list.sizeHintForRow(0) + 2 * self.list.frameWidth()
        self.list.setMinimumHeight(min(rows, 520))
        layout.addWidget(self.list)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def choose(self, value: int) -> None:
        self.close()
        self._pick(value)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key == Qt.Key.Key_Escape:
            self.close()
            return
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.choose(self.list.currentRow())
            return
        if key in (Qt.Key.Key_Up, Qt.Key.Key_Down):
            step = 1 if key == Qt.Key.Key_Down else -1
            self.list.setCurrentRow((self.list.currentRow() + step) % len(CLASS_NAMES))
            return
        slot = _recent_slot(event)
        if slot is not None:
            value = self._recent.slots[slot]
            if value is not None:
                self.choose(value)
            return
        letter = _letter(event)
        if letter in CLASS_KEYS:
            self.choose(CLASS_KEYS[letter])
            return
        super().keyPressEvent(event)


def _letter(event) -> str:
    """The Latin letter of a key press (lower case), or "" for none: the character typed, else
    the key's Latin letter where the platform gives one (Windows' and macOS' virtual keys)."""
    text = event.text().lower()
    if len(text) == 1 and "a" <= text <= "z":
        return text
    native = event.nativeVirtualKey()
    if ord("A") <= native <= ord("Z") or ord("a") <= native <= ord("z"):
        return chr(native).lower()
    return ""


def _recent_slot(event) -> int | None:
    """0..3 for F1..F4 (or the digits 1..4), else None."""
    key = event.key()
    if Qt.Key.Key_F1 <= key <= Qt.Key.Key_F4:
        return int(key - Qt.Key.Key_F1)
    text = event.text()
    if text in ("1", "2", "3", "4"):
        return int(text) - 1
    return None


class ClassPicker:
    """The class picker of one legend (:class:`~.class_legend.ClassLegend`): opens the popup,
    keeps the recent classes, shows the keys in the legend."""

    def __init__(self, legend):
        self.legend = legend
        self.recent = RecentSlots()
        self.popup: ClassPickerPopup | None = None
        me = weakref.ref(self)
        legend.list.currentRowChanged.connect(
            lambda row: (picker := me()) is not None and picker._chosen(row)
        )
        self.show_keys()

    def open(self) -> None:
        """Open the picker at the mouse cursor (it closes itself on a choice or Escape)."""
        if self.legend._parts_layer() is None:
            from napari.utils.notifications import show_info

            show_info("No parts layer to paint: run the model first (Shift+R) or open a sample")
            return
        current = max(self.legend.list.currentRow(), 0)
        self.popup = ClassPickerPopup(self.select, self.recent, current)
        self.popup.move(QCursor.pos())
        self.popup.show()
        self.popup.activateWindow()
        self.popup.setFocus(Qt.FocusReason.PopupFocusReason)

    def select(self, value: int) -> None:
        """Paint with class ``value`` (through the legend) and count it as used."""
        self.legend.select(value)
        self._chosen(value)

    def pick_recent(self, slot: int) -> None:
        value = self.recent.slots[slot]
        if value is not None and self.legend._parts_layer() is not None:
            self.select(value)

    def recent_actions(self) -> dict[str, Callable[[], None]]:
        return {key: getattr(self, f"recent_{slot + 1}") for slot, key in enumerate(RECENT_KEYS)}

    # bound methods, for shortcuts' weak references
    def recent_1(self) -> None:
        self.pick_recent(0)

    def recent_2(self) -> None:
        self.pick_recent(1)

    def recent_3(self) -> None:
        self.pick_recent(2)

    def recent_4(self) -> None:
        self.pick_recent(3)

    def _chosen(self, row: int) -> None:
        if 0 <= row < len(CLASS_NAMES):
            self.recent.record(row)
            self.show_keys()

    def show_keys(self) -> None:
        """Each legend row: its value, name and keys (``" 2  hair   (C h · F1)"``)."""
        for value, name in enumerate(CLASS_NAMES):
            item = self.legend.list.item(value)
            if item is not None:
                item.setText(f"{value:2d}  {name}   ({keys_of_class(value, self.recent)})")


PICKER_KEY_HELP = {PICKER_KEY: "class picker", "F1-F4": "recent classes"}
"""For the widgets' key help lines."""


def attach_class_picker(viewer, widget, legend) -> ClassPicker:
    """Give ``widget``'s ``legend`` a class picker on :data:`PICKER_KEY` and the recent classes
    on :data:`RECENT_KEYS` (bound as ``widget``'s keys, see :func:`~.shortcuts.bind_keys`)."""
    picker = ClassPicker(legend)
    widget._class_picker = picker  # the bindings hold only weak references
    bind_keys(viewer, widget, {PICKER_KEY: picker.open, **picker.recent_actions()})
    return picker
