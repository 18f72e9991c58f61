import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt
from napari.utils import DirectLabelColormap
from napari.utils.key_bindings import coerce_keybinding
from napari.utils.notifications import notification_manager

from napari_deeplab.cihp import CLASS_NAMES, PALETTE
from napari_deeplab.model_process import FrameResult, ModelProcess
from napari_deeplab._napari.model_process import shared_model_process
from napari_deeplab._napari.prelabel_widget import (NEXT_CLASS_KEY, PREVIOUS_CLASS_KEY, RUN_KEY,
                                                    PrelabelWidget)

TIMEOUT_MS = 240_000


@pytest.fixture
def viewer_with_photo(make_napari_viewer, cihp_photo):
    viewer = make_napari_viewer()
    viewer.add_image(cihp_photo, name="photo")
    return viewer


def _widget(viewer, model):
    widget = PrelabelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_combo.setCurrentText(model)
    return widget


def _run(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=TIMEOUT_MS)
    # the confidence layer is written in a later turn of the event loop
    qtbot.waitUntil(lambda: not widget._pending_confidence, timeout=TIMEOUT_MS)


def _predict_directly(photo, model):
    process = ModelProcess()
    try:
        return next(r for r in process.segment([photo], model) if isinstance(r, FrameResult))
    finally:
        process.close()


def test_run_gives_a_parts_layer_in_cihp_colours(qtbot, viewer_with_photo, model_file, cihp_photo):
    widget = _widget(viewer_with_photo, model_file)
    assert widget.image_combo.currentText() == "photo"
    _run(qtbot, widget)
    parts = viewer_with_photo.layers["photo parts"]
    assert isinstance(parts, Labels)
    assert parts.data.dtype == np.uint8 and parts.data.shape == cihp_photo.shape[:2]
    assert parts.data.max() < 20
    assert isinstance(parts.colormap, DirectLabelColormap)
    for value in (5, 13, 19):
        np.testing.assert_allclose(parts.colormap.map(value)[:3], PALETTE[value] / 255, atol=1e-6)
    assert parts.colormap.map(0)[3] == 0  # the photo shows through the background
    assert list(parts.features["class"]) == list(CLASS_NAMES)
    value = int(parts.data[100, 200])
    assert CLASS_NAMES[value] in parts.get_status((100, 200))["coordinates"]
    confidence = viewer_with_photo.layers["photo confidence"]
    assert confidence.data.shape == cihp_photo.shape[:2]
    assert 0 < confidence.data.min() and confidence.data.max() <= 1
    np.testing.assert_array_equal(parts.data, _predict_directly(cihp_photo, model_file).labels)
    assert "tensorflow" not in sys.modules


def test_rerun_keeps_the_annotators_edits(qtbot, viewer_with_photo, model_file, other_model_file,
                                          cihp_photo):
    widget = _widget(viewer_with_photo, model_file)
    _run(qtbot, widget)
    parts = viewer_with_photo.layers["photo parts"]
    parts.brush_size = 21
    parts.paint((100, 100), 13)  # a brush stroke of "face"
    parts.data_setitem((np.array([200, 201]), np.array([300, 300])), 2)  # what refine tools do
    edited = np.zeros(parts.data.shape, bool)
    edited[90:111, 90:111] = parts.data[90:111, 90:111] == 13
    edited[200:202, 300] = True
    kept = parts.data.copy()

    widget.model_combo.setCurrentText(other_model_file)  # e.g. after fine-tuning
    _run(qtbot, widget)
    np.testing.assert_array_equal(parts.data[edited], kept[edited])
    new_prediction = _predict_directly(cihp_photo, other_model_file).labels
    untouched = np.ones(parts.data.shape, bool)
    untouched[80:121, 80:121] = False
    untouched[200:202, 300] = False
    np.testing.assert_array_equal(parts.data[untouched], new_prediction[untouched])
    assert (kept != new_prediction)[untouched].any()  # the second model did change pixels

    parts.undo()  # the re-run was one undo step
    np.testing.assert_array_equal(parts.data, kept)
    parts.redo()
    widget.discard_edits.setChecked(True)
    _run(qtbot, widget)
    np.testing.assert_array_equal(parts.data, new_prediction)


def test_cancel_mid_stack_keeps_finished_frames(qtbot, make_napari_viewer, model_file, cihp_photo):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([cihp_photo] * 6), name="frames", rgb=True)
    widget = _widget(viewer, model_file)
    assert widget.all_frames.isEnabled()
    widget.all_frames.setChecked(True)
    widget.run()
    qtbot.waitUntil(lambda: "frames parts" in viewer.layers
                    and viewer.layers["frames parts"].data[0].any(), timeout=TIMEOUT_MS)
    widget.cancel()
    assert not widget.is_running() and widget.run_button.isEnabled()
    parts = viewer.layers["frames parts"]
    assert parts.data.shape == (6,) + cihp_photo.shape[:2]
    qtbot.wait(3000)  # results still in flight must not be written after Cancel
    assert not parts.data[5].any()
    done = [i for i in range(6) if parts.data[i].any()]
    assert done and len(done) < 6

    widget.current_frame.setChecked(True)
    viewer.dims.set_current_step(0, 5)
    _run(qtbot, widget)
    assert parts.data[5].any()


def test_model_failures_are_reported_and_the_next_run_recovers(qtbot, viewer_with_photo, model_file,
                                                                tmp_path, cihp_photo):
    widget = _widget(viewer_with_photo, str(tmp_path / "missing.keras"))
    before = len(notification_manager.records)
    _run(qtbot, widget)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("missing.keras: no such file" in m for m in messages)
    assert "photo parts" not in viewer_with_photo.layers

    # a crash (here: the model process killed, as the OOM killer would) mid-stack
    viewer_with_photo.add_image(np.stack([cihp_photo] * 20), name="many", rgb=True)
    widget.image_combo.setCurrentText("many")
    widget.all_frames.setChecked(True)
    widget.model_combo.setCurrentText(model_file)
    widget.run()
    qtbot.waitUntil(lambda: "many parts" in viewer_with_photo.layers, timeout=TIMEOUT_MS)
    os.kill(shared_model_process().pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=TIMEOUT_MS)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("model process stopped: it was killed" in m for m in messages)

    widget.image_combo.setCurrentText("photo")
    _run(qtbot, widget)
    assert viewer_with_photo.layers["photo parts"].data.any()


def test_legend_shortcuts_and_tooltips(qtbot, viewer_with_photo, model_file):
    widget = _widget(viewer_with_photo, model_file)
    assert RUN_KEY in widget.run_button.toolTip()
    assert NEXT_CLASS_KEY in widget.legend.toolTip() and PREVIOUS_CLASS_KEY in widget.legend.toolTip()
    viewer_with_photo.keymap[coerce_keybinding(RUN_KEY)](viewer_with_photo)  # the shortcut starts a run
    assert widget.is_running()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=TIMEOUT_MS)
    parts = viewer_with_photo.layers["photo parts"]

    widget.legend.setCurrentRow(13)
    assert parts.selected_label == 13
    viewer_with_photo.keymap[coerce_keybinding(NEXT_CLASS_KEY)](viewer_with_photo)
    assert parts.selected_label == 14
    widget.cycle_class(-15)
    assert parts.selected_label == 19
    widget.legend.item(13).setCheckState(Qt.CheckState.Unchecked)  # hide "face"
    assert parts.colormap.map(13)[3] == 0 and parts.colormap.map(2)[3] == 1


def test_sample_data_is_a_real_cihp_photo(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-deeplab", "cihp-photo-with-parts")
    photo, truth = viewer.layers
    assert photo.data.shape == (313, 576, 3)
    assert truth.data.shape == (313, 576) and set(np.unique(truth.data)) <= set(range(20))


def test_tensorflow_stays_out_of_napari_and_the_viewer_renders(model_file, tmp_path):
    """A whole session in a fresh process: shown viewer, run, screenshot, clean exit."""
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import napari
        from qtpy.QtWidgets import QApplication
        viewer = napari.Viewer(show=True)
        viewer.open_sample("napari-deeplab", "cihp-photo")
        _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Human parts")
        widget.model_combo.setCurrentText({model_file!r})
        widget.run()
        start = time.time()
        while widget.is_running() and time.time() - start < 200:
            QApplication.processEvents()
            time.sleep(0.01)
        assert "CIHP 0005008 parts" in viewer.layers, widget.status.text()
        assert "tensorflow" not in sys.modules
        shot = viewer.screenshot({str(tmp_path / 'shot.png')!r}, canvas_only=True)
        assert shot.std() > 5, "blank screenshot"
        from napari_deeplab._napari.model_process import shared_model_process
        assert shared_model_process().is_alive()
        viewer.close()
        for _ in range(20):
            QApplication.processEvents()
        assert not shared_model_process().is_alive(), "the model process outlived the viewer"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "shot.png").exists()


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-deeplab")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == {"Human parts", "Refine parts", "Review queue", "Fine-tune"}
    assert len(manifest.contributions.sample_data) == 2
