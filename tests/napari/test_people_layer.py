"""The people layer of the Review queue, driven as a user does: Plugins menu, Propose people,
real keys with the mouse over a person, Shapes selections, a real brush stroke, Ctrl+Z; the
true parts of the real CIHP samples (tests/data/cihp_samples) as the dataset's masks."""

import shutil

import numpy as np
import pytest
from napari.layers import Labels
from PIL import Image as PILImage
from qtpy.QtCore import Qt

from napari_deeplab import people
from napari_deeplab._napari.people_layer import (
    MERGE_KEY,
    NEW_PERSON_KEY,
    REMOVE_KEY,
    SEED_RADIUS,
    SPLIT_KEY,
    sizes_of,
)

from .gui import canvas_point, canvas_widget, dock_plugin, drag, main_window, press_key

SHIFT, CONTROL = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.ControlModifier
TRUE_COUNTS = {"0002190": 2, "0005008": 7, "0026375": 3}
LEGEND_MS = 400


def _true_parts(cihp_samples, sample_id: str) -> np.ndarray:
    return np.asarray(PILImage.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))


def _queue_of_true_parts(tmp_path, cihp_samples, samples=None):
    """A folder of photos (the three samples' by default, else {id: photo file}) whose queue
    drafts are their true parts: what the queue shows, with nothing left to pre-label."""
    from napari_deeplab.review import ReviewQueue

    photos, root = tmp_path / "photos", tmp_path / "dataset"
    if samples is None:
        shutil.copytree(cihp_samples / "Images", photos)
        samples = {i: _true_parts(cihp_samples, i) for i in TRUE_COUNTS}
    queue = ReviewQueue(photos, root)
    for sample_id, labels in samples.items():
        queue.save_draft(sample_id, labels, corrected=False)
    return photos, root


def _open_queue(viewer, photos, root):
    _, widget = dock_plugin(viewer, "Review queue")
    widget.photos.value, widget.dataset.value = photos, root
    widget.open_button.native.click()
    return widget


def _hover(qtbot, viewer, row: int, col: int) -> tuple[int, int]:
    """The mouse moved over the data pixel (row, col); returns the pixel under the cursor
    (one off at most, at a zoom under 1)."""
    canvas = canvas_widget(viewer)
    point = canvas_point(viewer, row, col)
    assert canvas.rect().contains(point), (point, canvas.size())
    qtbot.mouseMove(canvas, point)
    qtbot.wait(20)
    under = tuple(int(v) for v in np.round(viewer.cursor.position[-2:]))
    assert np.abs(np.subtract(under, (row, col))).max() <= 1
    return under


def _inside(data: np.ndarray, person: int) -> tuple[int, int]:
    """The pixel of ``person`` farthest from its border."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(data == person)
    return tuple(int(v) for v in np.unravel_index(np.argmax(depth), data.shape))


def _press(viewer, key: str, times: int = 1) -> None:
    modifier, _, name = key.partition("-")
    assert modifier == "Shift"
    press_key(viewer, getattr(Qt.Key, f"Key_{name}"), SHIFT, times)


def _legend(widget) -> list[str]:
    return [
        widget.people.legend.list.item(i).text() for i in range(widget.people.legend.list.count())
    ]


@pytest.fixture
def shown_queue(make_napari_viewer, qtbot, cihp_samples, tmp_path):
    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1800, 1100)  # the whole photo on the canvas, beside the dock
    widget = _open_queue(viewer, *_queue_of_true_parts(tmp_path, cihp_samples))
    assert not widget.prelabelling  # every photo has its draft
    qtbot.wait(50)
    return viewer, widget


def test_propose_people_counts_the_true_parts_people(shown_queue, cihp_samples, qtbot):
    viewer, widget = shown_queue
    for position, (sample_id, count) in enumerate(TRUE_COUNTS.items()):
        widget.go_to(position)
        viewer.reset_view()
        assert widget.shown_id == sample_id
        np.testing.assert_array_equal(
            viewer.layers[f"{sample_id} parts"].data, _true_parts(cihp_samples, sample_id)
        )
        widget.people_button.native.click()
        layer = viewer.layers[f"{sample_id} people"]
        assert isinstance(layer, Labels)
        np.testing.assert_array_equal(
            layer.data, people.propose_people(_true_parts(cihp_samples, sample_id))
        )
        assert layer.data.max() == count
        assert f"{count} people proposed" in widget.status.value
        assert f"{count} people proposed" in widget.people.status.value
        qtbot.wait(LEGEND_MS)
        assert _legend(widget) == [f"person {p:2d}  {n} px" for p, n in sizes_of(layer.data)]


def test_people_keys_each_one_undo_step(shown_queue, cihp_samples, qtbot):
    viewer, widget = shown_queue
    sample_id = "0005008"
    widget.go_to(1)
    viewer.reset_view()
    labels = _true_parts(cihp_samples, sample_id)
    widget.people_button.native.click()
    layer = viewer.layers[f"{sample_id} people"]
    viewer.layers.selection.active = layer
    proposed = layer.data.copy()

    def undone_to(before):
        viewer.layers.selection.active = layer
        press_key(viewer, Qt.Key.Key_Z, CONTROL)
        assert layer.data.tobytes() == before.tobytes()

    # merge: over person 2, then over person 5
    _hover(qtbot, viewer, *_inside(proposed, 2))
    _press(viewer, MERGE_KEY)
    assert "Person 2 chosen" in widget.people.status.value
    np.testing.assert_array_equal(layer.data, proposed)
    _hover(qtbot, viewer, *_inside(proposed, 5))
    _press(viewer, MERGE_KEY)
    np.testing.assert_array_equal(layer.data, people.merge_people(proposed, 2, 5))
    assert layer.data.max() == 6
    qtbot.wait(LEGEND_MS)
    assert _legend(widget) == [f"person {p:2d}  {n} px" for p, n in sizes_of(layer.data)]
    assert len(_legend(widget)) == 6
    undone_to(proposed)
    qtbot.wait(LEGEND_MS)
    assert len(_legend(widget)) == 7  # the legend follows the undo

    # split by two seeds: two presses over person 1, at its top and its bottom
    rows, cols = np.nonzero(proposed == 1)
    top = (int(rows.min()) + 6, int(cols[rows == rows.min() + 6].mean()))
    bottom = (int(rows.max()) - 6, int(cols[rows == rows.max() - 6].mean()))
    assert proposed[top] == proposed[bottom] == 1
    top = _hover(qtbot, viewer, *top)
    _press(viewer, SPLIT_KEY)
    bottom = _hover(qtbot, viewer, *bottom)
    _press(viewer, SPLIT_KEY)
    seeds = np.zeros(proposed.shape, np.uint8)
    grid = np.indices(proposed.shape)
    for value, (row, col) in ((1, top), (2, bottom)):
        seeds[(grid[0] - row) ** 2 + (grid[1] - col) ** 2 <= SEED_RADIUS**2] = value
    expected = people.split_person(proposed, labels, 1, seeds)
    assert expected.max() == 8
    np.testing.assert_array_equal(layer.data, expected)
    undone_to(proposed)

    # split by a stroke: a path across person 1, selected in a Shapes layer
    middle = (int(rows.min()) + int(rows.max())) // 2
    across = cols[rows == middle]
    shapes = viewer.add_shapes(
        [np.array([[middle, across.min() - 3], [middle + 1, across.max() + 3]])],
        shape_type="path",
        name="stroke",
    )
    shapes.selected_data = {0}
    viewer.layers.selection.active = shapes
    _press(viewer, SPLIT_KEY)
    stroke = np.asarray(shapes.to_masks(mask_shape=proposed.shape))[0]
    from scipy import ndimage

    expected = people.split_person(proposed, labels, 1, ndimage.binary_dilation(stroke))
    assert expected.max() == 8
    np.testing.assert_array_equal(layer.data, expected)
    undone_to(proposed)

    # a new person from a rectangle over the top half of person 3
    rows3, cols3 = np.nonzero(proposed == 3)
    box = np.array(
        [
            [rows3.min() - 2, cols3.min() - 2],
            [(rows3.min() + rows3.max()) // 2, cols3.max() + 2],
        ]
    )
    viewer.layers.remove(shapes)
    shapes = viewer.add_shapes([box], shape_type="rectangle", name="region")
    shapes.selected_data = {0}
    viewer.layers.selection.active = shapes
    _press(viewer, NEW_PERSON_KEY)
    region = np.asarray(shapes.to_masks(mask_shape=proposed.shape))[0]
    expected = people.new_person(proposed, labels, region)
    assert expected.max() == 8
    np.testing.assert_array_equal(layer.data, expected)
    assert "New person 8" in widget.people.status.value
    undone_to(proposed)

    # remove person 7 under the mouse: it and its parts are erased
    viewer.layers.selection.active = layer
    parts = viewer.layers[f"{sample_id} parts"]
    _hover(qtbot, viewer, *_inside(proposed, 7))
    _press(viewer, REMOVE_KEY)
    np.testing.assert_array_equal(layer.data, people.remove_person(proposed, 7))
    np.testing.assert_array_equal(parts.data, np.where(proposed == 7, 0, labels))
    assert people.consistent(layer.data, parts.data)
    undone_to(proposed)
    viewer.layers.selection.active = parts
    press_key(viewer, Qt.Key.Key_Z, CONTROL)
    assert parts.data.tobytes() == labels.tobytes()

    # a key over the background says what to do, and changes nothing
    _hover(qtbot, viewer, 2, 2)
    _press(viewer, REMOVE_KEY)
    assert "over a person" in widget.people.status.value
    np.testing.assert_array_equal(layer.data, proposed)


def test_a_hand_stroke_breaking_the_parts_is_repaired_in_its_undo_step(
    shown_queue, cihp_samples, qtbot
):
    viewer, widget = shown_queue
    widget.go_to(0)
    viewer.reset_view()
    labels = _true_parts(cihp_samples, "0002190")
    widget.people_button.native.click()
    layer = viewer.layers["0002190 people"]
    proposed = layer.data.copy()
    viewer.layers.selection.active = layer

    # person 1 painted with a real brush drag from the background into person 2
    row, col = _inside(proposed, 2)
    background_col = next(c for c in range(col, labels.shape[1]) if labels[row, c] == 0) + 8
    assert (labels[row - 5 : row + 6, background_col - 5 :] == 0).all()
    layer.brush_size = 9
    layer.selected_label = 1
    layer.mode = "paint"
    drag(qtbot, viewer, (row, background_col), (row, col))
    qtbot.wait(50)

    # the part pixels painted became person 1; the background painted has no person
    assert people.consistent(layer.data, labels)
    assert layer.data[row, col] == 1 and layer.data[row, background_col] == 0
    painted = layer.data != proposed
    assert painted.any() and (labels[painted] > 0).all()
    assert "repaired" in widget.people.status.value
    # one Ctrl+Z undoes the stroke and its repair together
    press_key(viewer, Qt.Key.Key_Z, CONTROL)
    assert layer.data.tobytes() == proposed.tobytes()


def test_the_people_keys_are_napari_free(make_napari_viewer):
    from napari._app_model import get_app_model
    from napari.layers import Image, Shapes
    from napari.utils.action_manager import action_manager
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    taken = {str(coerce_keybinding(k)) for k in viewer.keymap}
    taken |= {str(b) for bindings in action_manager._shortcuts.values() for b in bindings}
    taken |= {str(k) for layer in (Image, Labels, Shapes) for k in layer.class_keymap}
    taken |= {str(binding.keybinding) for binding in get_app_model().keybindings}
    keys = [MERGE_KEY, SPLIT_KEY, NEW_PERSON_KEY, REMOVE_KEY]
    assert not {str(coerce_keybinding(key)) for key in keys} & taken
    _, widget = dock_plugin(viewer, "Review queue")
    assert all(coerce_keybinding(key) in viewer.keymap for key in keys)
    assert all(key in widget.people.help_line.value for key in keys)


def test_the_queue_proposes_people_ahead_and_keeps_their_edits(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    from napari_deeplab._napari.review_widget import NEXT_KEY, PREVIOUS_KEY

    assert (NEXT_KEY, PREVIOUS_KEY) == ("Alt-Right", "Alt-Left")
    alt = Qt.KeyboardModifier.AltModifier
    photos = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", photos)
    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Review queue")
    assert widget.people.ahead.value  # on by default
    widget.photos.value, widget.dataset.value = photos, tmp_path / "dataset"
    widget.model.source = model_file
    widget.open_button.native.click()
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=240_000)
    queue, first, second, third = widget.queue, *TRUE_COUNTS

    # the people of the drafts made ahead: kept beside them, shown with the photo
    for sample_id in (first, second):
        expected = people.propose_people(queue.load_draft(sample_id))
        np.testing.assert_array_equal(queue.load_people_draft(sample_id), expected)
    layer = viewer.layers[f"{first} people"]
    np.testing.assert_array_equal(layer.data, people.propose_people(queue.load_draft(first)))

    # an edit (all part pixels one new person, from a rectangle over the whole photo) is kept
    # on Next and shown again on Previous
    shapes = viewer.add_shapes(
        [np.array([[-1, -1], [layer.data.shape[0], layer.data.shape[1]]])],
        shape_type="rectangle",
    )
    shapes.selected_data = {0}
    viewer.layers.selection.active = shapes
    _press(viewer, NEW_PERSON_KEY)
    edited = layer.data.copy()
    assert edited.max() == 1 and people.consistent(edited, viewer.layers[f"{first} parts"].data)
    viewer.layers.remove(shapes)
    widget.people.ahead.value = False  # the next drafts come without people
    press_key(viewer, Qt.Key.Key_Right, alt)
    assert widget.shown_id == second and f"{first} people" not in viewer.layers
    np.testing.assert_array_equal(queue.load_people_draft(first), edited)
    np.testing.assert_array_equal(
        viewer.layers[f"{second} people"].data, queue.load_people_draft(second)
    )
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=240_000)
    assert queue.load_draft(third) is not None and queue.load_people_draft(third) is None
    press_key(viewer, Qt.Key.Key_Left, alt)
    assert widget.shown_id == first
    np.testing.assert_array_equal(viewer.layers[f"{first} people"].data, edited)


def _side_by_side(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays (H x W [x C]) side by side, padded at the bottom with zeros."""
    height = max(a.shape[0] for a in arrays)
    return np.concatenate(
        [np.pad(a, [(0, height - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) for a in arrays], axis=1
    )


def test_a_composed_crowd_shown_with_its_parts_and_people(
    make_napari_viewer, qtbot, cihp_samples, tmp_path
):
    """Two samples side by side (7 + 3 people) as one photo; its screenshot is
    docs/images/people_layer.png (written there when $PEOPLE_SCREENSHOT names it)."""
    import os

    ids = ("0005008", "0026375")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = _side_by_side(
        [np.asarray(PILImage.open(cihp_samples / "Images" / f"{i}.jpg")) for i in ids]
    )
    labels = _side_by_side([_true_parts(cihp_samples, i) for i in ids])
    PILImage.fromarray(photo).save(photos / "crowd.png")
    photos, root = _queue_of_true_parts(tmp_path, cihp_samples, {"crowd": labels})
    viewer = make_napari_viewer(show=True)
    main_window(viewer).resize(1600, 1000)
    widget = _open_queue(viewer, photos, root)
    assert not widget.prelabelling
    widget.people_button.native.click()
    layer = viewer.layers["crowd people"]
    assert layer.data.max() == TRUE_COUNTS[ids[0]] + TRUE_COUNTS[ids[1]]
    assert "10 people proposed" in widget.status.value
    layer.contour = 3  # each person outlined over the parts, for the picture
    layer.opacity = 1.0
    qtbot.wait(LEGEND_MS)  # the window laid out, the legend counted
    viewer.reset_view()
    qtbot.wait(100)
    assert len(_legend(widget)) == 10
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.shape[0] > 500 and shot.std() > 10
    out = os.environ.get("PEOPLE_SCREENSHOT") or str(tmp_path / "people_layer.png")
    PILImage.fromarray(shot).save(out)
