"""Re-parse a person from the Human parts widget: the person under the cursor (Shift+P) or a
drawn rectangle, the crop run in the model process, merged with the edits and other people
kept, one undo step."""

import numpy as np
import PIL.Image
import pytest
from qtpy.QtCore import Qt

from napari_deeplab._napari.parts_layer import edit_tracker
from napari_deeplab.inference import Segmentation
from napari_deeplab.people import propose_people
from napari_deeplab.reparse import crop_box, merge_crop, others_mask
from napari_deeplab.worker import ModelProcess

from .conftest import JOB_TIMEOUT_MS

SHIFT, CONTROL = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.ControlModifier


@pytest.fixture(scope="module")
def direct_process():
    process = ModelProcess()
    yield process
    process.close()


def _segment_directly(process, crop, model):
    return next(r for r in process.segment([crop], model) if isinstance(r, Segmentation)).labels


def _session(viewer, dock_plugin, cihp_samples, model_file):
    photo = np.asarray(PIL.Image.open(cihp_samples / "Images" / "0005008.jpg"))
    mask = np.array(PIL.Image.open(cihp_samples / "Category_ids" / "0005008.png"))
    viewer.add_image(photo, name="0005008")
    parts = viewer.add_labels(mask.copy(), name="0005008 parts")
    edit_tracker(parts)  # as Run makes it: the model's pixels, no edit yet
    _, widget = dock_plugin(viewer, "Human parts")
    widget.image.value = viewer.layers["0005008"]
    widget.model.source = model_file
    viewer.layers.selection.active = parts
    return photo, mask, parts, widget


def test_shift_p_reparses_the_person_under_the_cursor_keeping_edits_and_others(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples, model_file, direct_process
):
    viewer = make_napari_viewer()
    photo, mask, parts, widget = _session(viewer, dock_plugin, cihp_samples, model_file)
    people = propose_people(mask)
    viewer.add_labels(people, name="0005008 people", visible=False)
    viewer.layers.selection.active = parts
    person = int(people[120, 510])
    assert person > 0
    box = crop_box(people == person, mask.shape)
    edited = (slice(100, 110), slice(500, 510))  # a hand edit inside the person's crop
    parts.data_setitem(np.nonzero(np.ones((10, 10), bool)), 0)  # elsewhere: (0..9, 0..9)
    parts.data_setitem(tuple(np.mgrid[edited].reshape(2, -1)), 11)
    before = np.array(parts.data)
    edits = edit_tracker(parts).mask.copy()
    assert edits[edited].any() and (before[:10, :10][edits[:10, :10]] == 0).all()

    viewer.cursor.position = (120, 510)
    press_key(viewer, Qt.Key.Key_P, SHIFT)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    assert widget.runner.status.value.startswith("Re-parsed 1 crop"), widget.runner.status.value

    crop_labels = _segment_directly(direct_process, photo[box], model_file)
    keep = edits | others_mask(people, person)
    expected = merge_crop(before, crop_labels, box, keep)
    np.testing.assert_array_equal(parts.data, expected)
    assert (parts.data[edits] == before[edits]).all()  # the edits kept
    others = others_mask(people, person)
    assert others[box].any() and (parts.data[others] == before[others]).all()  # others kept
    assert not np.array_equal(parts.data, before)  # the crop was written
    press_key(viewer, Qt.Key.Key_Z, CONTROL)  # one undo step
    np.testing.assert_array_equal(parts.data, before)


def test_a_drawn_rectangle_is_reparsed_inside_it_only(
    make_napari_viewer, dock_plugin, press_key, qtbot, cihp_samples, model_file, direct_process
):
    viewer = make_napari_viewer()
    photo, mask, parts, widget = _session(viewer, dock_plugin, cihp_samples, model_file)
    drawn = (40, 150, 200, 260)  # top, left, bottom, right
    boxes = viewer.add_shapes(
        [np.array([[40, 150], [40, 260], [200, 260], [200, 150]])], shape_type="rectangle"
    )
    viewer.layers.selection.active = boxes
    widget.reparse.button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    assert widget.runner.status.value.startswith("Re-parsed 1 crop"), widget.runner.status.value
    box = crop_box(drawn, mask.shape)
    crop_labels = _segment_directly(direct_process, photo[box], model_file)
    keep = np.ones(mask.shape, bool)
    keep[40:200, 150:260] = False
    np.testing.assert_array_equal(parts.data, merge_crop(mask, crop_labels, box, keep))


def test_no_person_under_the_cursor_is_refused(
    make_napari_viewer, dock_plugin, press_key, cihp_samples, model_file
):
    viewer = make_napari_viewer()
    photo, mask, parts, widget = _session(viewer, dock_plugin, cihp_samples, model_file)
    background = np.argwhere(propose_people(mask) == 0)[0]
    viewer.cursor.position = tuple(float(v) for v in background)
    press_key(viewer, Qt.Key.Key_P, SHIFT)
    assert widget.runner.status.value.startswith("Failed: No person there")
    assert not widget.runner.running
    np.testing.assert_array_equal(parts.data, mask)
