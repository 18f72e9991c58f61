"""The model's second choice (Shift+O) and flip averaging in the Human parts widget, opened
from the Plugins menu and driven with a real mouse position and real keys."""

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication
from skimage.segmentation import flood

from napari_deeplab._napari.prelabel_widget import ALL_FRAMES
from napari_deeplab._napari.second_choice import RUNNER_UP_KEY, runner_up_map
from napari_deeplab.inference import Segmentation
from napari_deeplab.second_choice import relabel_with_runner_up
from napari_deeplab.worker import ModelProcess

from .gui import canvas_point, canvas_widget

SHIFT, CONTROL = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.ControlModifier
PHOTO = "CIHP 0005008"


@pytest.fixture(scope="module")
def direct_process():
    """The tests' own model process, for the predictions made directly."""
    process = ModelProcess()
    yield process
    process.close()


def predict_directly(process, photo, model, tta=None) -> Segmentation:
    results = process.segment([photo], model, tta=tta, runner_up=True)
    return next(r for r in results if isinstance(r, Segmentation))


def point_at(qtbot, viewer, row: int, col: int) -> None:
    """Move the mouse over the data pixel (row, col) of an unscaled layer, as a hand does."""
    canvas = canvas_widget(viewer)
    assert canvas.width() > 0 and canvas.height() > 0, "the docked widgets leave no canvas"
    point = canvas_point(viewer, row, col)
    # the mouse's move as Qt delivers it to the canvas (QTest.mouseMove moves no pointer here)
    move = QMouseEvent(
        QEvent.Type.MouseMove,
        QPointF(point),
        QPointF(canvas.mapToGlobal(point)),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(canvas, move)
    qtbot.waitUntil(
        lambda: tuple(np.round(viewer.cursor.position[-2:]).astype(int)) == (row, col),
        timeout=5000,
    )


def a_part_pixel(labels: np.ndarray, runner_up: np.ndarray) -> tuple[int, int]:
    """The middle pixel of the largest region of a part (not background) whose relabelling
    changes it, as (row, col)."""
    best = None
    for value in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == value)
        middle = len(rows) // 2
        region = flood(labels, (rows[middle], cols[middle]), connectivity=1)
        changed = relabel_with_runner_up(labels, runner_up, region) != labels
        if changed.any() and (best is None or region.sum() > best[0]):
            best = (region.sum(), int(rows[middle]), int(cols[middle]))
    assert best is not None, "no part region to relabel"
    return best[1], best[2]


def test_second_choice_relabels_the_region_under_the_cursor_undoably(
    make_napari_viewer,
    dock_plugin,
    run_job,
    press_key,
    qtbot,
    model_file,
    other_model_file,
    direct_process,
):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-deeplab", "cihp-photo")
    photo = viewer.layers[PHOTO].data
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    assert run_job(widget.runner).startswith("Done")
    parts = viewer.layers[f"{PHOTO} parts"]
    direct = predict_directly(direct_process, photo, model_file)
    kept = runner_up_map(parts)
    np.testing.assert_array_equal(parts.data, direct.labels)
    np.testing.assert_array_equal(kept.classes, direct.runner_up)
    assert kept.classes.dtype == np.uint8 and kept.nbytes == parts.data.nbytes + 1

    before = parts.data.copy()
    row, col = a_part_pixel(before, kept.classes)
    expected = relabel_with_runner_up(
        before, kept.classes, flood(before, (row, col), connectivity=1)
    )
    point_at(qtbot, viewer, row, col)
    press_key(viewer, Qt.Key.Key_O, SHIFT)
    np.testing.assert_array_equal(parts.data, expected)
    assert "Ctrl+Z undoes" in widget.runner.status.value
    press_key(viewer, Qt.Key.Key_Z, CONTROL)  # one undo step
    np.testing.assert_array_equal(parts.data, before)

    erased = np.zeros_like(before, bool)  # background, as an eraser leaves it
    erased[10:20, 10:20] = True
    parts.data_setitem(np.nonzero(erased), 0)
    with_background = parts.data.copy()
    point_at(qtbot, viewer, 15, 15)
    press_key(viewer, Qt.Key.Key_O, SHIFT)
    assert "background" in widget.runner.status.value  # refused: its region is the photo
    np.testing.assert_array_equal(parts.data, with_background)

    # a re-run (another model, flip averaging ticked) replaces the map with its own
    widget.model.source = other_model_file
    widget.flip.value = True
    widget.discard_edits.value = True
    assert run_job(widget.runner).startswith("Done")
    flipped = predict_directly(direct_process, photo, other_model_file, tta="flip")
    plain = predict_directly(direct_process, photo, other_model_file)
    assert not np.array_equal(flipped.labels, plain.labels)  # the tick made a difference
    np.testing.assert_array_equal(parts.data, flipped.labels)
    np.testing.assert_array_equal(runner_up_map(parts).classes, flipped.runner_up)
    rerun = parts.data.copy()
    row, col = a_part_pixel(rerun, flipped.runner_up)
    point_at(qtbot, viewer, row, col)
    press_key(viewer, Qt.Key.Key_O, SHIFT)
    expected = relabel_with_runner_up(
        rerun, flipped.runner_up, flood(rerun, (row, col), connectivity=1)
    )
    np.testing.assert_array_equal(parts.data, expected)


def test_second_choice_on_a_stack_frame_and_a_selection(
    make_napari_viewer, dock_plugin, run_job, press_key, qtbot, model_file, cihp_photo
):
    viewer = make_napari_viewer(show=True)
    frames = np.stack([cihp_photo[::2, ::2], cihp_photo[::2, ::-2], cihp_photo[::-2, ::2]])
    viewer.add_image(frames, name="frames", rgb=True)
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    widget.frames.value = ALL_FRAMES
    assert run_job(widget.runner).startswith("Done")
    parts = viewer.layers["frames parts"]
    kept = parts.metadata[RUNNER_UP_KEY]
    assert kept.known.tolist() == [True, True, True]
    assert kept.classes.shape == parts.data.shape

    viewer.dims.set_current_step(0, 1)
    before = parts.data.copy()
    height, width = before.shape[1:]
    box = np.array([[height // 4, width // 4], [3 * height // 4, 3 * width // 4]])
    shapes = viewer.add_shapes([box], shape_type="rectangle", name="frames parts selection", ndim=2)
    viewer.layers.selection.active = shapes
    point_at(qtbot, viewer, height // 2, width // 2)
    press_key(viewer, Qt.Key.Key_O, SHIFT)
    mask = shapes.to_masks((height, width))[0]
    expected = before.copy()
    expected[1] = relabel_with_runner_up(before[1], kept.classes[1], mask)
    assert (expected != before).any()
    np.testing.assert_array_equal(parts.data, expected)  # frame 1 only
    assert viewer.layers.selection.active is parts or viewer.layers.selection.active == parts
    press_key(viewer, Qt.Key.Key_Z, CONTROL)
    np.testing.assert_array_equal(parts.data, before)
