"""The Review queue, opened and driven as a user does: Plugins menu (napari's proxy viewer), its
fields and buttons, real key presses and clicks; real CIHP photos, a real (random) model."""

import gc
import shutil
import weakref

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import NotificationSeverity, notification_manager
from PIL import Image as PILImage
from qtpy.QtCore import Qt

from napari_deeplab import cihp
from napari_deeplab._napari.class_legend import NEXT_CLASS_KEY
from napari_deeplab._napari.parts_layer import edit_tracker
from napari_deeplab._napari.recent_datasets import recent_datasets
from napari_deeplab._napari.review_widget import ACCEPT_KEY, MIN_SEEN_S, NEXT_KEY, PREVIOUS_KEY

from .gui import dock_plugin, main_window, press_key

TIMEOUT_MS = 240_000  # model work on 2 shared cores, with a cold model process
ALT, SHIFT, CONTROL = (
    Qt.KeyboardModifier.AltModifier,
    Qt.KeyboardModifier.ShiftModifier,
    Qt.KeyboardModifier.ControlModifier,
)
UNREADABLE = "0000001"  # sorts before the CIHP photos: the first photo of the queue
IDS = [UNREADABLE, "0002190", "0005008", "0026375"]
SEEN_MS = int(MIN_SEEN_S * 1000) + 100  # Accept applies to a photo on screen this long


def _click_row(qtbot, list_widget, row: int, double: bool = False) -> None:
    list_widget.scrollToItem(list_widget.item(row))
    point = list_widget.visualItemRect(list_widget.item(row)).center()
    qtbot.mouseClick(list_widget.viewport(), Qt.MouseButton.LeftButton, pos=point)
    if double:
        qtbot.mouseDClick(list_widget.viewport(), Qt.MouseButton.LeftButton, pos=point)


def _errors() -> list[str]:
    return [
        n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR
    ]


def _open(widget, photos, root, model) -> None:
    widget.photos.value = photos
    widget.dataset.value = root
    widget.model.source = str(model)
    widget.open_button.native.click()


def test_review_queue_from_the_plugins_menu(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    photos = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", photos)
    (photos / f"{UNREADABLE}.jpg").write_bytes(b"not a jpeg")
    broken_model = tmp_path / "broken.keras"
    broken_model.write_bytes(b"not a model")
    root = tmp_path / "dataset"
    viewer = make_napari_viewer(show=True)
    dock, widget = dock_plugin(viewer, "Review queue")
    errors_before = len(_errors())

    # the unreadable photo is shown as an error; pre-labelling starts at once, and says so
    _open(widget, photos, root, broken_model)
    queue = widget.queue
    assert [item.sample_id for item in queue.items] == IDS
    assert f"{UNREADABLE}.jpg: cannot read" in widget.status.value
    assert widget.photo_list.item(0).text() == f"{UNREADABLE} — cannot be read"
    assert widget.runner.status.value == f"Pre-labelling {IDS[1]} (loading the model…)"
    assert recent_datasets()[0] == str(root.absolute())  # Fine-tune offers it

    # a model that fails is reported once, and not tried again until asked
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    qtbot.wait(1500)
    assert widget.runner.status.value.startswith("Failed")
    assert not widget.runner.running
    assert len(_errors()) == errors_before + 2  # the unreadable photo, the model

    # moving on asks again (one more error); an empty parts layer cannot be accepted
    press_key(viewer, Qt.Key.Key_Right, ALT)
    assert widget.shown_id == IDS[1]
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    assert len(_errors()) == errors_before + 3
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert len(_errors()) == errors_before + 4 and "No parts to export" in widget.status.value
    assert queue.state(IDS[1]) == "new"
    assert not (root / "Training" / "Images" / f"{IDS[1]}.jpg").exists()

    # Pre-label tries again, with a model that works: each result goes to its own photo (not
    # to the unreadable one before it), the shown one at once, keeping what was painted meanwhile
    widget.model.source = model_file
    widget.runner.run_button.native.click()
    viewer.layers[f"{IDS[1]} parts"].paint((10, 10), 13)
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    assert widget.runner.status.value == f"Pre-labelled {IDS[1]}, {IDS[2]}"
    assert queue.load_draft(UNREADABLE) is None
    assert queue.load_draft(IDS[1]).shape == (200, 300)  # its photo's size
    assert [queue.state(i) for i in IDS] == ["new", "pre-labelled", "pre-labelled", "new"]
    photo, parts = viewer.layers[IDS[1]], viewer.layers[f"{IDS[1]} parts"]
    assert isinstance(photo, Image) and isinstance(parts, Labels)
    painted = parts.data != queue.load_draft(IDS[1])
    assert parts.data[10, 10] == 13 and (parts.data[painted] == 13).all()

    # a painted stroke makes the photo "corrected" on Next
    parts.paint((40, 50), 13)
    layer_ids = [photo.unique_id, parts.unique_id]
    press_key(viewer, Qt.Key.Key_Right, ALT)
    assert queue.state(IDS[1]) == "corrected"
    assert queue.load_draft(IDS[1])[40, 50] == queue.load_draft(IDS[1])[10, 10] == 13
    # the same two layers show the next photo (no removing and re-adding), and its parts
    # cannot be undone back into the previous photo's mask
    # (and the people proposed ahead with the parts)
    assert [layer.name for layer in viewer.layers] == [
        IDS[2],
        f"{IDS[2]} parts",
        f"{IDS[2]} people",
    ]
    assert [layer.unique_id for layer in viewer.layers][:2] == layer_ids
    parts = viewer.layers[f"{IDS[2]} parts"]
    parts.paint((30, 30), 7)
    press_key(viewer, Qt.Key.Key_Z, CONTROL)  # undoes the stroke
    np.testing.assert_array_equal(parts.data, queue.load_draft(IDS[2]))
    press_key(viewer, Qt.Key.Key_Z, CONTROL)  # nothing left to undo
    np.testing.assert_array_equal(parts.data, queue.load_draft(IDS[2]))

    # back (Alt+Left): the corrected draft keeps its protection and its state
    press_key(viewer, Qt.Key.Key_Left, ALT)
    parts = viewer.layers[f"{IDS[1]} parts"]
    assert parts.data[40, 50] == 13
    assert edit_tracker(parts).mask.all()

    # the class legend acts on the parts layer shown
    _click_row(qtbot, widget.legend.list, 5)
    assert parts.selected_label == 5
    press_key(viewer, Qt.Key.Key_Down, SHIFT)
    assert NEXT_CLASS_KEY == "Shift-Down" and parts.selected_label == 6

    # double-click a photo in the list to go to it
    _click_row(qtbot, widget.photo_list, 2, double=True)
    assert widget.shown_id == IDS[2]
    assert queue.state(IDS[1]) == "corrected"

    # Propose people, then Accept (Alt+A) exports the photo, its parts and people
    widget.people_button.native.click()
    people = viewer.layers[f"{IDS[2]} people"]
    assert people.data.max() >= 1
    expected_parts, expected_people = (
        viewer.layers[f"{IDS[2]} parts"].data.copy(),
        people.data.copy(),
    )
    qtbot.wait(SEEN_MS)  # looked at
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert queue.state(IDS[2]) == "exported"
    sample = cihp.read_sample(root, IDS[2])
    np.testing.assert_array_equal(sample.category_ids, expected_parts)
    np.testing.assert_array_equal(sample.human_ids, expected_people)
    instance_map, instances = cihp.part_instances(expected_parts, expected_people)
    np.testing.assert_array_equal(sample.instance_ids, instance_map)  # the whole record
    table = root / "Training" / "Instance_ids" / f"{IDS[2]}.txt"
    assert table.read_text() == cihp.format_instance_table(instances)
    assert (root / "Training" / "Instances" / f"{IDS[2]}.png").is_file()
    assert (root / "Training" / "Images" / f"{IDS[2]}.jpg").read_bytes() == (
        photos / f"{IDS[2]}.jpg"
    ).read_bytes()
    assert widget.shown_id == IDS[3] and f"{IDS[2]} people" not in viewer.layers
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    # the row shows the score the pre-label recorded
    assert widget.photo_list.item(2).text().startswith(f"{IDS[2]} — exported · score 0.")

    # close the widget and open the queue again: it resumes from the dataset folder
    viewer.window.remove_dock_widget(dock)
    viewer.layers.clear()
    _, again = dock_plugin(viewer, "Review queue")
    _open(again, photos, root, model_file)
    assert again.queue.position == 3 and again.shown_id == IDS[3]
    assert [again.queue.state(i) for i in IDS] == ["new", "corrected", "exported", "pre-labelled"]
    press_key(viewer, Qt.Key.Key_Left, ALT)  # the exported photo is skipped
    assert again.shown_id == IDS[1]
    assert viewer.layers[f"{IDS[1]} parts"].data[40, 50] == 13
    again.skip_exported.value = False  # an exported photo only looked at stays exported
    press_key(viewer, Qt.Key.Key_Right, ALT)
    assert again.shown_id == IDS[2]
    press_key(viewer, Qt.Key.Key_Right, ALT)
    assert [again.queue.state(i) for i in IDS] == ["new", "corrected", "exported", "pre-labelled"]
    qtbot.waitUntil(lambda: not again.prelabelling, timeout=TIMEOUT_MS)


def test_an_empty_dataset_field_is_refused_and_nothing_written(
    make_napari_viewer, cihp_samples, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where the state would have been written
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Review queue")
    widget.photos.value = cihp_samples / "Images"
    widget.open_button.native.click()
    assert widget.queue is None and not widget.prelabelling
    assert "dataset folder" in widget.status.value and "\n" not in widget.status.value
    assert list(tmp_path.iterdir()) == []


def test_shortcuts_are_free_shown_and_leave_with_the_widget(make_napari_viewer, qtbot):
    from napari._app_model import get_app_model
    from napari.utils.action_manager import action_manager
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer(show=True)
    keys = [NEXT_KEY, PREVIOUS_KEY, ACCEPT_KEY]
    napari_keys = {str(coerce_keybinding(k)) for k in viewer.keymap}
    napari_keys |= {
        str(binding) for bindings in action_manager._shortcuts.values() for binding in bindings
    }
    napari_keys |= {str(k) for layer in (Image, Labels) for k in layer.class_keymap}
    napari_keys |= {str(binding.keybinding) for binding in get_app_model().keybindings}
    mnemonics = {
        text[text.index("&") + 1].upper()
        for text in (action.text() for action in main_window(viewer).menuBar().actions())
        if "&" in text
    }
    for key in keys:
        assert str(coerce_keybinding(key)) not in napari_keys
        modifiers, _, name = key.rpartition("-")
        assert not (name.isdigit() and "Shift" in modifiers)
        assert not ("Alt" in modifiers and name.upper() in mnemonics)

    dock, widget = dock_plugin(viewer, "Review queue")
    for button, key in (
        (widget.next_button, NEXT_KEY),
        (widget.previous_button, PREVIOUS_KEY),
        (widget.accept_button, ACCEPT_KEY),
    ):
        assert key in button.tooltip
    assert "Alt-Left/Right" in widget.help_line.value and ACCEPT_KEY in widget.help_line.value
    assert all(coerce_keybinding(key) in viewer.keymap for key in keys)

    # a removed widget leaves no bindings behind, and nothing keeps it alive
    gone = weakref.ref(widget)
    viewer.window.remove_dock_widget(dock)
    del widget, dock, button
    assert not any(coerce_keybinding(key) in viewer.keymap for key in keys)
    press_key(viewer, Qt.Key.Key_Right, ALT)  # nothing happens, nothing fails
    qtbot.wait(50)
    gc.collect()
    assert gone() is None


def test_a_damaged_queue_state_is_shown_as_a_warning(make_napari_viewer, cihp_samples, tmp_path):
    from napari_deeplab.review import ReviewQueue

    photos, root = tmp_path / "photos", tmp_path / "dataset"
    photos.mkdir()
    shutil.copy(cihp_samples / "Images" / f"{IDS[1]}.jpg", photos)
    engine_queue = ReviewQueue(photos, root)
    engine_queue.save_draft(IDS[1], np.full((200, 300), 5, np.uint8), corrected=True)
    (engine_queue.folder / "queue.json").write_text("{ truncated")
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Review queue")
    widget.photos.value, widget.dataset.value = photos, root
    widget.open_button.native.click()
    warnings = [
        n.message
        for n in notification_manager.records
        if n.severity == NotificationSeverity.WARNING
    ]
    assert any("queue.json" in message and "damaged" in message for message in warnings)
    # the draft found is shown, protected as the annotator's, and nothing is pre-labelled
    assert widget.queue.state(IDS[1]) == "corrected" and not widget.prelabelling
    assert edit_tracker(viewer.layers[f"{IDS[1]} parts"]).mask.all()


def test_buttons_say_what_to_do_without_a_queue_and_after_the_parts_layer_is_removed(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    from napari_deeplab._napari.review_widget import OPEN_FIRST

    photos = tmp_path / "photos"
    photos.mkdir()
    PILImage.open(cihp_samples / "Images" / "0005008.jpg").reduce(4).save(photos / "small.jpg")
    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Review queue")
    for press in (
        lambda: press_key(viewer, Qt.Key.Key_A, ALT),
        lambda: press_key(viewer, Qt.Key.Key_Right, ALT),
        widget.accept_button.native.click,
        widget.people_button.native.click,
    ):
        widget.status.value = ""
        press()
        assert widget.status.value == OPEN_FIRST
    assert len(viewer.layers) == 0

    _open(widget, photos, tmp_path / "dataset", model_file)
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    viewer.layers.remove("small parts")
    widget.accept_button.native.click()
    assert widget.status.value == (
        "The parts layer of small was removed: double-click the photo in the list to show it again"
    )
    _click_row(qtbot, widget.photo_list, 0, double=True)
    assert isinstance(viewer.layers["small parts"], Labels)
    assert viewer.layers["small parts"].data.any()  # its pre-label, back
    qtbot.wait(SEEN_MS)  # looked at
    widget.accept_button.native.click()
    assert widget.queue.state("small") == "exported"


def _two_photo_queue(make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path):
    """A shown viewer with a Review queue open on photos 'a' and 'b', both pre-labelled."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        PILImage.open(cihp_samples / "Images" / "0005008.jpg").reduce(4).save(
            photos / f"{name}.jpg"
        )
    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Review queue")
    _open(widget, photos, tmp_path / "dataset", model_file)
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    qtbot.wait(SEEN_MS)  # the first photo's pre-label looked at
    return viewer, widget


def test_accept_pressed_twice_exports_only_the_photo_reviewed(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    """A double press of Alt+A must not export the next photo, which nobody has looked at."""
    viewer, widget = _two_photo_queue(make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path)
    press_key(viewer, Qt.Key.Key_A, ALT)
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert widget.shown_id == "b"
    assert [widget.queue.state(i) for i in "ab"] == ["exported", "pre-labelled"]
    assert (
        widget.status.value == "Accept pressed twice: b was not exported; look at it, then Accept"
    )
    qtbot.wait(SEEN_MS)
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert widget.queue.state("b") == "exported"


def test_a_dataset_that_cannot_be_written_keeps_the_photo_and_its_edits(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    """Next with the drafts folder unwritable (a file in its place: root ignores permissions)
    says so on one line and stays on the photo, edits and all; no traceback."""
    viewer, widget = _two_photo_queue(make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path)
    drafts = widget.queue.folder
    shutil.rmtree(drafts)
    drafts.write_text("in the way")
    parts = viewer.layers["a parts"]
    parts.data_setitem((np.array([1, 2]), np.array([1, 2])), np.array([3, 3]))
    edited = np.array(parts.data)
    for _ in range(2):  # a second Next must not take the edits as saved
        press_key(viewer, Qt.Key.Key_Right, ALT)
        assert widget.shown_id == "a"
        assert widget.status.value.startswith("a: your edits are not saved (")
        assert widget.status.value.endswith("make the dataset folder writable, then try again")
        np.testing.assert_array_equal(viewer.layers["a parts"].data, edited)
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert widget.shown_id == "a" and widget.status.value.startswith("a: Accept did not complete (")
    drafts.unlink()
    press_key(viewer, Qt.Key.Key_Right, ALT)
    assert widget.shown_id == "b"
    np.testing.assert_array_equal(widget.queue.load_draft("a"), edited)
