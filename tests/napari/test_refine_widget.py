"""The Refine parts widget on a real CIHP photo and a corrupted copy of its ground truth."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import flood
from napari.utils.key_bindings import coerce_keybinding

from napari_deeplab import refine
from napari_deeplab._napari.parts_layer import edit_tracker, parts_colormap, parts_features
from napari_deeplab._napari.refine_widget import SHORTCUTS, RefineWidget


@pytest.fixture
def session(make_napari_viewer, cihp_samples, qtbot):
    viewer = make_napari_viewer()
    photo = np.asarray(Image.open(cihp_samples / "Images" / "0005008.jpg"))
    truth = np.asarray(Image.open(cihp_samples / "Category_ids" / "0005008.png"))
    rng = np.random.default_rng(0)
    speckled = truth.copy()
    for _ in range(60):
        y, x = rng.integers(0, truth.shape[0] - 4), rng.integers(0, truth.shape[1] - 4)
        speckled[y:y + 3, x:x + 3] = rng.integers(1, 20)
    viewer.add_image(photo, name="photo")
    parts = viewer.add_labels(speckled.copy(), name="photo parts", colormap=parts_colormap(),
                              features=parts_features())
    widget = RefineWidget(viewer)
    viewer.window.add_dock_widget(widget)

    def run(name):
        widget.apply(name)
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)

    return SimpleNamespace(viewer=viewer, widget=widget, parts=parts, photo=photo, truth=truth,
                           speckled=speckled, run=run)


def test_whole_layer_operation_is_one_undo_step_and_counts_as_edits(session):
    tracker = edit_tracker(session.parts)
    assert session.widget.parts_combo.currentText() == "photo parts"
    session.run("remove_small_regions")
    expected = refine.remove_small_regions(session.speckled, 40)
    np.testing.assert_array_equal(session.parts.data, expected)
    changed = expected != session.speckled
    assert changed.any()
    np.testing.assert_array_equal(tracker.mask, changed)  # a re-run of the model keeps these
    session.parts.undo()
    np.testing.assert_array_equal(session.parts.data, session.speckled)


def test_shapes_selection_limits_the_change(session):
    shapes = session.widget.selection_layer()
    shapes.add_rectangles(np.array([[0, 0], [150, 300]]))
    session.run("swap_left_right")
    outside = np.ones(session.truth.shape, bool)
    outside[:151, :301] = False
    np.testing.assert_array_equal(session.parts.data[outside], session.speckled[outside])
    inside = ~outside
    np.testing.assert_array_equal(session.parts.data[inside],
                                  refine.swap_left_right(session.speckled)[inside])


def test_clicked_region_and_relabel(session):
    row, col = np.argwhere(session.truth == 7)[0]  # a coat pixel
    session.widget._remember_click(session.parts, SimpleNamespace(position=(row, col)))
    session.widget.region.setChecked(True)
    session.widget.source_class.setCurrentIndex(7)
    session.widget.target_class.setCurrentIndex(6)
    session.run("relabel")
    region = flood(session.speckled, (row, col), connectivity=1)
    assert (session.parts.data[region] == 6).all()
    np.testing.assert_array_equal(session.parts.data[~region], session.speckled[~region])


def test_scribbles_fix_a_wrong_region(session):
    coat = session.truth == 7
    session.parts.data_setitem(np.nonzero(coat), 5)  # the model called the coat upper-clothes
    wrong = session.parts.data.copy()
    scribbles = session.widget.scribbles_layer()
    row, col = np.argwhere(coat)[len(np.argwhere(coat)) // 2]
    scribbles.data_setitem((np.array([row]), np.array([col])), 7)
    session.run("refine_with_scribbles")
    fixed = session.parts.data
    assert (fixed[coat] == 7).mean() > (wrong[coat] == 7).mean() + 0.3
    assert not scribbles.data.any()  # the strokes were used up


def test_next_low_confidence_region_moves_the_camera(session):
    confidence = np.ones(session.truth.shape, np.float32)
    confidence[200:260, 400:500] = 0.2  # the largest doubtful region
    confidence[10:20, 10:20] = 0.3
    session.viewer.add_image(confidence, name="photo confidence")
    camera = getattr(session.viewer, "scene", session.viewer).camera
    session.run("next_low_confidence")
    np.testing.assert_allclose(camera.center[-2:], (230, 450), atol=1)
    session.run("next_low_confidence")
    np.testing.assert_allclose(camera.center[-2:], (15, 15), atol=1)


def test_every_tool_has_a_shortcut_in_its_tooltip(session):
    for name, key in SHORTCUTS.items():
        assert key in session.widget.buttons[name].toolTip()
        assert coerce_keybinding(key) in session.viewer.keymap
    session.viewer.keymap[coerce_keybinding(SHORTCUTS["fill_holes"])](session.viewer)
    session.run("fill_holes")  # waits for the one started by the key
    assert (session.parts.data != session.speckled).any()
