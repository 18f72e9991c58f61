"""The Human parts widget, opened and driven as a user does: Plugins menu (napari's proxy
viewer), its buttons and fields, real mouse strokes and key presses."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import numpy as np
import pytest
from napari.layers import Labels
from napari.utils import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLineEdit

from napari_deeplab._napari.class_legend import NEXT_CLASS_KEY, PREVIOUS_CLASS_KEY
from napari_deeplab._napari.prelabel_widget import ALL_FRAMES, CURRENT_FRAME, RUN_KEY
from napari_deeplab._napari.shared_worker import shared_model_process
from napari_deeplab.cihp import CLASS_NAMES, PALETTE
from napari_deeplab.inference import Segmentation
from napari_deeplab.worker import ModelProcess

from .conftest import JOB_TIMEOUT_MS
from .gui import canvas_widget, drag, main_window

SHIFT, CONTROL = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.ControlModifier
PHOTO = "CIHP 0005008"  # the sample's layer name


@pytest.fixture
def sample_viewer(make_napari_viewer):
    """A viewer showing File > Open Sample > napari-deeplab > CIHP photo."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-deeplab", "cihp-photo")
    return viewer


@pytest.fixture(scope="module")
def direct_process():
    """A model process of the tests' own (not the widgets' shared one), started once for the
    module, for the predictions made directly."""
    process = ModelProcess()
    yield process
    process.close()


def _predict_directly(process, photo, model):
    return next(r for r in process.segment([photo], model) if isinstance(r, Segmentation))


def test_run_gives_a_parts_layer_in_cihp_colours(
    sample_viewer, dock_plugin, run_job, model_file, direct_process
):
    _, widget = dock_plugin(sample_viewer, "Human parts")
    assert widget.image.value.name == PHOTO
    widget.model.source = model_file
    assert run_job(widget.runner).startswith("Done")
    photo = sample_viewer.layers[PHOTO].data
    parts = sample_viewer.layers[f"{PHOTO} parts"]
    assert isinstance(parts, Labels)
    assert parts.data.dtype == np.uint8 and parts.data.shape == photo.shape[:2]
    assert parts.data.max() < 20
    assert isinstance(parts.colormap, DirectLabelColormap)
    for value in (5, 13, 19):
        np.testing.assert_allclose(parts.colormap.map(value)[:3], PALETTE[value] / 255, atol=1e-6)
    assert parts.colormap.map(0)[3] == 0  # the photo shows through the background
    assert list(parts.features["class"]) == list(CLASS_NAMES)
    value = int(parts.data[100, 200])
    assert CLASS_NAMES[value] in parts.get_status((100, 200))["coordinates"]
    confidence = sample_viewer.layers[f"{PHOTO} confidence"]
    assert not confidence.visible and confidence.data.shape == photo.shape[:2]
    assert confidence.data.min() > 0 and confidence.data.max() <= 1
    assert [w.name for w in widget.image.choices] == [PHOTO]  # no confidence layer offered
    np.testing.assert_array_equal(
        parts.data, _predict_directly(direct_process, photo, model_file).labels
    )


def test_rerun_keeps_a_painted_stroke_in_a_shown_viewer(
    make_napari_viewer,
    dock_plugin,
    run_job,
    press_key,
    qtbot,
    model_file,
    other_model_file,
    direct_process,
    capsys,
):
    """Issue 9, item 1: the Plugins-menu path, a real mouse stroke, Run again, Ctrl+Z."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-deeplab", "cihp-photo")
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    run_job(widget.runner)
    parts = viewer.layers[f"{PHOTO} parts"]
    first_run = parts.data.copy()

    parts.brush_size = 15
    widget.legend.list.setCurrentRow(13)  # the user clicks "face" in the legend
    parts.mode = "paint"  # the brush button of the layer controls
    drag(qtbot, viewer, (100, 60), (130, 200))
    stroke = parts.data != first_run
    assert stroke.sum() > 500, "the mouse stroke did not paint"
    assert (parts.data[stroke] == 13).all()
    painted = parts.data.copy()

    widget.model.source = other_model_file  # e.g. after fine-tuning
    run_job(widget.runner)
    kept = (parts.data[stroke] == 13).mean()
    new_prediction = _predict_directly(
        direct_process, viewer.layers[PHOTO].data, other_model_file
    ).labels
    np.testing.assert_array_equal(parts.data[~stroke], new_prediction[~stroke])
    assert (new_prediction != first_run)[~stroke].any()  # the second model changed pixels
    second_run = parts.data.copy()

    undo_steps = 0  # Ctrl+Z, as the keyboard sends it, until the first run's result is back
    viewer.layers.selection.active = parts
    while undo_steps < 5 and not np.array_equal(parts.data, first_run):
        press_key(viewer, Qt.Key.Key_Z, CONTROL)
        undo_steps += 1
        if undo_steps == 1:
            np.testing.assert_array_equal(parts.data, painted)  # the second run undone
    with capsys.disabled():
        print(
            f"\n[measured] stroke of {stroke.sum()} px: {kept:.1%} kept after the second Run; "
            f"{undo_steps} Ctrl+Z back to the first run's result"
        )
    assert kept == 1.0
    assert undo_steps == 2  # the second run, then the stroke
    press_key(viewer, Qt.Key.Key_Z, CONTROL | SHIFT)
    press_key(viewer, Qt.Key.Key_Z, CONTROL | SHIFT)
    np.testing.assert_array_equal(parts.data, second_run)

    widget.discard_edits.value = True
    run_job(widget.runner)
    np.testing.assert_array_equal(parts.data, new_prediction)


def test_cancel_mid_stack_keeps_finished_frames(
    make_napari_viewer, dock_plugin, run_job, qtbot, model_file, cihp_photo
):
    viewer = make_napari_viewer()
    photo = cihp_photo[::2, ::2]
    viewer.add_image(np.stack([photo] * 6), name="frames", rgb=True)
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    assert widget.frames.enabled
    widget.frames.value = ALL_FRAMES
    widget.runner.run_button.native.click()
    qtbot.waitUntil(
        lambda: "frames parts" in viewer.layers and viewer.layers["frames parts"].data[0].any(),
        timeout=JOB_TIMEOUT_MS,
    )
    widget.runner.cancel_button.native.click()
    assert not widget.runner.running and widget.runner.run_button.enabled
    assert widget.runner.status.value == "Cancelled"
    parts = viewer.layers["frames parts"]
    assert parts.data.shape == (6,) + photo.shape[:2]
    qtbot.wait(2000)  # results still in flight must not be written after Cancel
    assert not parts.data[5].any()
    done = [i for i in range(6) if parts.data[i].any()]
    assert done and len(done) < 6

    widget.frames.value = CURRENT_FRAME
    viewer.dims.set_current_step(0, 5)
    assert run_job(widget.runner).startswith("Done")
    assert parts.data[5].any()


def test_a_missing_model_is_refused_at_once(
    sample_viewer, dock_plugin, child_processes, qtbot, tmp_path
):
    """Issue 9, item 6: reported before any model process starts."""
    _, widget = dock_plugin(sample_viewer, "Human parts")
    widget.model.source = str(tmp_path / "missing.keras")
    children = child_processes()
    start = time.perf_counter()
    widget.runner.run_button.native.click()
    elapsed = time.perf_counter() - start
    assert not widget.runner.running and elapsed < 1.0
    assert widget.runner.status.value.startswith("Failed: ")
    assert "missing.keras: no such file" in widget.runner.status.value
    qtbot.wait(500)
    assert child_processes() <= children  # no model process was started
    assert f"{PHOTO} parts" not in sample_viewer.layers


def test_a_layer_in_the_way_of_the_parts_layer_is_refused_before_the_model_runs(
    make_napari_viewer, dock_plugin, model_file, cihp_photo, child_processes, qtbot
):
    """An image called '<photo> parts', or a parts layer of another size: one line, no run,
    and never a second parts layer ('photo parts [1]') whose next run would lose the edits."""
    viewer = make_napari_viewer()
    viewer.add_image(cihp_photo[::8, ::8], name="photo")
    viewer.add_image(cihp_photo[::8, ::8], name="photo parts")
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    widget.image.value = viewer.layers["photo"]
    children = child_processes()
    widget.runner.run_button.native.click()
    assert not widget.runner.running
    assert widget.runner.status.value == (
        "Failed: 'photo parts' is not a Labels layer; rename or remove it and run again"
    )
    viewer.layers.remove("photo parts")
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="photo parts")
    widget.runner.run_button.native.click()
    assert widget.runner.status.value == (
        f"Failed: 'photo parts' has shape (5, 5), not the image's {cihp_photo[::8, ::8].shape[:2]}; "
        "rename or remove it and run again"
    )
    qtbot.wait(200)
    assert child_processes() <= children  # the model never ran
    assert [layer.name for layer in viewer.layers] == ["photo", "photo parts"]


def test_a_multiscale_photo_is_pre_labelled_at_full_resolution(
    make_napari_viewer, dock_plugin, run_job, model_file, cihp_photo
):
    """napari hands a pyramid's smallest level to np.asarray: the parts would not cover it."""
    viewer = make_napari_viewer()
    photo = cihp_photo[::4, ::4]
    viewer.add_image([photo, photo[::2, ::2]], name="pyramid", rgb=True, multiscale=True)
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    assert run_job(widget.runner).startswith("Done")
    assert viewer.layers["pyramid parts"].data.shape == photo.shape[:2]
    assert viewer.layers["pyramid confidence"].data.shape == photo.shape[:2]


def test_the_photo_removed_while_the_model_runs_is_said(
    make_napari_viewer, dock_plugin, qtbot, model_file, cihp_photo
):
    viewer = make_napari_viewer()
    viewer.add_image(cihp_photo[::8, ::8], name="photo")
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    widget.runner.run_button.native.click()
    viewer.layers.remove("photo")
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    assert widget.runner.status.value == (
        "'photo' was removed while the model ran: nothing was written"
    )
    assert len(viewer.layers) == 0


def test_a_failed_run_ends_as_a_failure_and_the_next_run_recovers(
    make_napari_viewer, dock_plugin, run_job, qtbot, model_file, cihp_photo, monkeypatch
):
    """Issue 9, items 6 and 10: the model process killed mid-stack (as the OOM killer would);
    the model is remembered once per job that succeeded, not once per frame."""
    from napari_deeplab._napari import prelabel_widget

    remembered = []
    monkeypatch.setattr(prelabel_widget, "remember_model", remembered.append)
    viewer = make_napari_viewer()
    photo = cihp_photo[::2, ::2]
    viewer.add_image(np.stack([photo] * 3), name="three", rgb=True)
    viewer.add_image(np.stack([photo] * 30), name="many", rgb=True)
    _, widget = dock_plugin(viewer, "Human parts")
    widget.model.source = model_file
    widget.image.value = viewer.layers["many"]
    widget.frames.value = ALL_FRAMES
    widget.runner.run_button.native.click()
    qtbot.waitUntil(lambda: "many parts" in viewer.layers, timeout=JOB_TIMEOUT_MS)
    os.kill(shared_model_process().pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    assert widget.runner.status.value.startswith("Failed: "), widget.runner.status.value
    assert "Done" not in widget.runner.status.value
    assert remembered == []

    widget.image.value = viewer.layers["three"]
    assert run_job(widget.runner).startswith("Done")
    assert all(frame.any() for frame in viewer.layers["three parts"].data)
    assert remembered == [model_file]


def test_shortcuts_legend_and_tooltips(sample_viewer, dock_plugin, press_key, qtbot, model_file):
    dock, widget = dock_plugin(sample_viewer, "Human parts")
    widget.model.source = model_file
    assert RUN_KEY in widget.runner.run_button.tooltip
    assert NEXT_CLASS_KEY in widget.legend.list.toolTip()
    assert PREVIOUS_CLASS_KEY in widget.legend.list.toolTip()
    assert any(
        RUN_KEY in w.value for w in widget if hasattr(w, "value") and isinstance(w.value, str)
    )  # the help line
    press_key(sample_viewer, Qt.Key.Key_R, SHIFT)
    assert widget.runner.running
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    parts = sample_viewer.layers[f"{PHOTO} parts"]

    widget.legend.list.setCurrentRow(13)
    assert parts.selected_label == 13
    press_key(sample_viewer, Qt.Key.Key_Down, SHIFT)
    assert parts.selected_label == 14
    press_key(sample_viewer, Qt.Key.Key_Up, SHIFT)
    press_key(sample_viewer, Qt.Key.Key_Up, SHIFT)
    assert parts.selected_label == 12
    widget.legend.list.item(13).setCheckState(Qt.CheckState.Unchecked)  # hide "face"
    assert parts.colormap.map(13)[3] == 0 and parts.colormap.map(2)[3] == 1


def test_a_removed_widget_leaves_no_key_bindings_and_is_freed(
    sample_viewer, dock_plugin, press_key, qtbot, model_file
):
    """Issue 9, item 10."""
    dock, widget = dock_plugin(sample_viewer, "Human parts")
    widget.model.source = model_file
    removed = weakref.ref(widget)
    sample_viewer.window.remove_dock_widget(dock)
    del dock, widget
    press_key(sample_viewer, Qt.Key.Key_R, SHIFT)
    qtbot.wait(200)
    assert f"{PHOTO} parts" not in sample_viewer.layers
    gc.collect()
    assert removed() is None, gc.get_referrers(removed())


def test_layout_legend_rows_and_long_model_path(make_napari_viewer, dock_plugin, qtbot):
    """Issue 9, item 9: the legend stays readable beside Refine parts; a long model path does
    not widen the dock over the canvas."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 800)
    viewer.open_sample("napari-deeplab", "cihp-photo")
    dock, widget = dock_plugin(viewer, "Human parts")
    dock_plugin(viewer, "Refine parts")
    qtbot.wait(100)
    legend = widget.legend.list
    visible_rows = legend.viewport().height() / legend.sizeHintForRow(0)
    assert visible_rows >= 10, visible_rows

    widget.model.source = "/home/annotator/" + "a-very-long-folder-name/" * 12 + "model.keras"
    assert len(widget.model.source) > 300
    qtbot.wait(100)
    assert dock.width() < 450, dock.width()


def test_sample_data_is_a_real_cihp_photo(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-deeplab", "cihp-photo-with-parts")
    photo, truth = viewer.layers
    assert photo.data.shape == (313, 576, 3)
    assert truth.data.shape == (313, 576) and set(np.unique(truth.data)) <= set(range(20))


def test_tensorflow_stays_out_of_napari_and_the_viewer_renders(model_file, tmp_path):
    """A whole session in a fresh process: shown viewer, Plugins menu, Run, screenshot, exit."""
    script = textwrap.dedent(f"""
        import sys, time
        import napari
        from qtpy.QtWidgets import QApplication
        viewer = napari.Viewer(show=True)
        viewer.open_sample("napari-deeplab", "cihp-photo")
        _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Human parts")
        widget.model.source = {model_file!r}
        widget.runner.run_button.native.click()
        start = time.time()
        while widget.runner.running and time.time() - start < 200:
            QApplication.processEvents()
            time.sleep(0.01)
        assert "{PHOTO} parts" in viewer.layers, widget.runner.status.value
        assert "tensorflow" not in sys.modules
        shot = viewer.screenshot({str(tmp_path / "shot.png")!r}, canvas_only=True)
        assert shot.std() > 5, "blank screenshot"
        from napari_deeplab._napari.shared_worker import shared_model_process
        assert shared_model_process().is_alive()
        viewer.close()
        for _ in range(20):
            QApplication.processEvents()
        assert not shared_model_process().is_alive(), "the model process outlived the viewer"
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "shot.png").exists()


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-deeplab")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Human parts",
        "Refine parts",
        "Review queue",
        "Fine-tune",
    }
    assert len(manifest.contributions.sample_data) == 2


# --- keys that always work (issue 17, item 6) and Save to dataset (item 5) -----------------


def _parts_session(viewer, dock_plugin, cihp_samples):
    """A photo and a parts layer made without the model (a real CIHP mask), Human parts docked."""
    import PIL.Image

    photo = viewer.add_image(
        np.asarray(PIL.Image.open(cihp_samples / "Images" / "0005008.jpg")), name="0005008"
    )
    parts = viewer.add_labels(
        np.array(PIL.Image.open(cihp_samples / "Category_ids" / "0005008.png")),
        name="0005008 parts",
    )
    dock, widget = dock_plugin(viewer, "Human parts")
    widget.image.value = photo
    viewer.layers.selection.active = parts
    return photo, parts, widget


def _focused_key(qtbot, key, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    """A key pressed where the keyboard focus is now (not forced onto the canvas)."""
    from qtpy.QtWidgets import QApplication

    target = QApplication.focusWidget()
    assert target is not None
    qtbot.keyClick(target, key, modifiers)


def test_shift_up_down_step_human_parts_classes_with_the_review_queue_docked_after_it(
    make_napari_viewer, dock_plugin, press_key, cihp_samples
):
    viewer = make_napari_viewer()
    photo, parts, widget = _parts_session(viewer, dock_plugin, cihp_samples)
    dock_plugin(viewer, "Review queue")  # docked last: it used to take the keys
    widget.legend.list.setCurrentRow(13)
    press_key(viewer, Qt.Key.Key_Down, SHIFT)
    assert parts.selected_label == 14 and widget.legend.list.currentRow() == 14
    press_key(viewer, Qt.Key.Key_Up, SHIFT)
    press_key(viewer, Qt.Key.Key_Up, SHIFT)
    assert parts.selected_label == 12


def test_keys_work_after_a_button_click_escape_returns_to_the_canvas_and_typing_types(
    make_napari_viewer, dock_plugin, qtbot, cihp_samples, tmp_path
):
    viewer = make_napari_viewer(show=True)
    photo, parts, widget = _parts_session(viewer, dock_plugin, cihp_samples)
    widget.legend.list.setCurrentRow(5)
    window, canvas = main_window(viewer), canvas_widget(viewer)
    window.activateWindow()
    canvas.setFocus()
    qtbot.waitUntil(canvas.hasFocus)
    qtbot.mouseClick(widget.save_button.native, Qt.MouseButton.LeftButton)  # no dataset: refused
    assert widget.runner.status.value.startswith("Choose the dataset folder")
    assert not widget.save_button.native.hasFocus()
    _focused_key(qtbot, Qt.Key.Key_Down, SHIFT)
    assert parts.selected_label == 6

    field = widget.model.native.findChild(QLineEdit)  # the model path
    field.setFocus()
    qtbot.waitUntil(field.hasFocus)
    before = field.text()
    _focused_key(qtbot, Qt.Key.Key_R, SHIFT)  # typing in the field: a letter, no Run
    assert field.text().lower() == before.lower() + "r" and not widget.runner.running
    field.setText(before)
    _focused_key(qtbot, Qt.Key.Key_Escape)
    assert not field.hasFocus()
    _focused_key(qtbot, Qt.Key.Key_Down, SHIFT)  # the canvas has the keys again
    assert parts.selected_label == 7 and field.text() == before


def test_the_new_label_key_stays_within_the_classes(
    make_napari_viewer, dock_plugin, press_key, cihp_samples
):
    viewer = make_napari_viewer()
    photo, parts, widget = _parts_session(viewer, dock_plugin, cihp_samples)
    parts.mode = "paint"
    press_key(viewer, Qt.Key.Key_M)  # napari: "set label to the next unused"
    assert 0 <= parts.selected_label <= 19
    assert parts.selected_label not in np.unique(parts.data)  # unused, as M promises
    parts.selected_label = 25
    assert 0 <= parts.selected_label <= 19


def test_save_to_dataset_writes_the_sample_and_remembers_the_dataset(
    make_napari_viewer, dock_plugin, press_key, cihp_samples, tmp_path
):
    from napari_deeplab import cihp
    from napari_deeplab._napari.recent_datasets import recent_datasets

    viewer = make_napari_viewer()
    photo, parts, widget = _parts_session(viewer, dock_plugin, cihp_samples)
    widget.dataset.folder = str(tmp_path / "dataset")
    widget.save_button.native.click()
    assert widget.runner.status.value.startswith("Saved '0005008'"), widget.runner.status.value
    np.testing.assert_array_equal(
        cihp.read_sample(tmp_path / "dataset", "0005008").category_ids, parts.data
    )
    assert recent_datasets()[0] == str(tmp_path / "dataset")
    parts.data_setitem((np.array([3]), np.array([3])), 9)
    press_key(viewer, Qt.Key.Key_D, SHIFT)
    assert cihp.read_sample(tmp_path / "dataset", "0005008").category_ids[3, 3] == 9
    assert cihp.read_id_list(tmp_path / "dataset", "Training") == ["0005008"]
