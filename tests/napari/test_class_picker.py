"""The class picker: every class in two real keystrokes (C, then the class's letter), the
recent classes on F1-F4, the keys shown in the legend, in both widgets with a legend."""

import numpy as np
import PIL.Image
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_deeplab._napari.class_picker import (
    CLASS_KEYS,
    KEY_OF_CLASS,
    PICKER_KEY,
    RecentSlots,
)
from napari_deeplab.cihp import CLASS_NAMES

NAPARI_LABELS_KEYS = set("1234567EPFLZMXBV")
"""Keys napari's Labels layer and viewer take without a modifier (napari/utils/shortcuts.py)."""


def _session(viewer, dock_plugin, cihp_samples, widget_name="Human parts"):
    photo = viewer.add_image(
        np.asarray(PIL.Image.open(cihp_samples / "Images" / "0005008.jpg")), name="0005008"
    )
    parts = viewer.add_labels(
        np.array(PIL.Image.open(cihp_samples / "Category_ids" / "0005008.png")),
        name="0005008 parts",
    )
    _, widget = dock_plugin(viewer, widget_name)
    if widget_name == "Human parts":
        widget.image.value = photo
    viewer.layers.selection.active = parts
    parts.mode = "paint"
    return parts, widget


def _popup():
    popup = QApplication.activePopupWidget()
    assert popup is not None, "the picker did not open"
    return popup


def _type_in_popup(qtbot, key) -> None:
    qtbot.keyClick(_popup(), key)


def _letter_key(letter: str):
    return getattr(Qt.Key, f"Key_{letter.upper()}")


def test_the_picker_keys_are_not_napari_s():
    assert PICKER_KEY not in NAPARI_LABELS_KEYS
    assert sorted(CLASS_KEYS.values()) == list(range(len(CLASS_NAMES)))
    assert len(set(CLASS_KEYS)) == len(CLASS_NAMES)
    assert all(len(k) == 1 and "a" <= k <= "z" for k in CLASS_KEYS)


def test_every_class_in_two_keystrokes(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples
):
    viewer = make_napari_viewer()
    parts, widget = _session(viewer, dock_plugin, cihp_samples)
    start = 2 if parts.selected_label != 2 else 3
    parts.selected_label = start
    for value in [*range(len(CLASS_NAMES)), start]:  # and back: each pick really changes it
        press_key(viewer, getattr(Qt.Key, f"Key_{PICKER_KEY}"))  # keystroke 1, on the canvas
        _type_in_popup(qtbot, _letter_key(KEY_OF_CLASS[value]))  # keystroke 2, in the picker
        assert parts.selected_label == value, CLASS_NAMES[value]
        assert QApplication.activePopupWidget() is None  # closed by the choice
        assert widget.legend.list.currentRow() == value
    row = widget.legend.list.item(13).text()
    assert "face" in row and f"{PICKER_KEY} {KEY_OF_CLASS[13]}" in row


def test_arrows_enter_and_escape_in_the_picker(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples
):
    viewer = make_napari_viewer()
    parts, widget = _session(viewer, dock_plugin, cihp_samples)
    widget.legend.select(5)
    press_key(viewer, Qt.Key.Key_C)
    _type_in_popup(qtbot, Qt.Key.Key_Down)
    _type_in_popup(qtbot, Qt.Key.Key_Down)
    _type_in_popup(qtbot, Qt.Key.Key_Return)
    assert parts.selected_label == 7
    press_key(viewer, Qt.Key.Key_C)
    _type_in_popup(qtbot, Qt.Key.Key_Q)  # no class's letter: nothing, still open
    _type_in_popup(qtbot, Qt.Key.Key_Escape)
    assert QApplication.activePopupWidget() is None and parts.selected_label == 7


def test_recent_classes_keep_their_f_key(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples
):
    viewer = make_napari_viewer()
    parts, widget = _session(viewer, dock_plugin, cihp_samples)
    picker = widget._class_picker
    picker.recent = RecentSlots()  # forget what opening the session chose
    for letter in "hfar":  # hair, face, left-arm, right-arm
        press_key(viewer, Qt.Key.Key_C)
        _type_in_popup(qtbot, _letter_key(letter))
    assert picker.recent.slots == [2, 13, 14, 15]
    press_key(viewer, Qt.Key.Key_F2)  # one keystroke: face
    assert parts.selected_label == 13
    press_key(viewer, Qt.Key.Key_F1)
    assert parts.selected_label == 2
    assert picker.recent.slots == [2, 13, 14, 15]  # using a slot does not move the keys
    press_key(viewer, Qt.Key.Key_C)
    _type_in_popup(qtbot, Qt.Key.Key_P)  # pants: takes the least recently used slot (left-arm)
    assert picker.recent.slots == [2, 13, 9, 15]
    press_key(viewer, Qt.Key.Key_C)
    _type_in_popup(qtbot, Qt.Key.Key_F4)  # F4 in the picker too
    assert parts.selected_label == 15
    assert "F3" in widget.legend.list.item(9).text()


def test_the_review_queue_s_legend_has_the_picker(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples
):
    viewer = make_napari_viewer()
    parts, human_parts = _session(viewer, dock_plugin, cihp_samples)
    _, review = dock_plugin(viewer, "Review queue")
    assert "C h" in review.legend.list.item(2).text()
    assert "C: class picker" in review.help_line.value
    press_key(viewer, Qt.Key.Key_C)  # the parts layer is Human parts': its picker answers
    _type_in_popup(qtbot, Qt.Key.Key_S)
    assert parts.selected_label == 12


@pytest.mark.parametrize(
    "slots,used,expected",
    [
        ([], [1, 2, 3, 4, 5], [5, 2, 3, 4]),
        ([], [1, 2, 1, 3, 4, 5], [1, 5, 3, 4]),
        ([], [7, 7, 7], [7, None, None, None]),
    ],
)
def test_recent_slots(slots, used, expected):
    recent = RecentSlots()
    for value in used:
        recent.record(value)
    assert recent.slots == expected
