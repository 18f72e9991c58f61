"""The effort log written by the Review queue at each Accept, driven as a user does: the queue
from the Plugins menu over a folder of real CIHP photos, pre-labelled by a real (random) model,
edits on the parts layer, Accept with its key; figures checked against a numpy diff."""

import json
import shutil
import time

import numpy as np
from PIL import Image
from qtpy.QtCore import Qt

from napari_deeplab import cli
from napari_deeplab.cihp import effort_log
from napari_deeplab.review_effort import load_prelabel

from .gui import dock_plugin, press_key

TIMEOUT_MS = 240_000  # model work on 2 shared cores, with a cold model process
SEEN_MS = 1200  # Accept applies to a photo on screen for MIN_SEEN_S (1 s)
ALT = Qt.KeyboardModifier.AltModifier


def _pairs(prelabel: np.ndarray, accepted: np.ndarray) -> list[list[int]]:
    """[from, to, pixels] of every pair of classes present, by numpy alone."""
    stacked = np.stack([prelabel.ravel(), accepted.ravel()]).astype(int)
    pairs, counts = np.unique(stacked, axis=1, return_counts=True)
    return [[int(a), int(b), int(n)] for (a, b), n in zip(pairs.T, counts, strict=True)]


def _accepted_mask(root, sample_id) -> np.ndarray:
    return np.array(Image.open(root / "Training" / "Category_ids" / f"{sample_id}.png"))


def test_accept_logs_the_exact_effort(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path, capsys
):
    photos, root = tmp_path / "photos", tmp_path / "dataset"
    shutil.copytree(cihp_samples / "Images", photos)
    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Review queue")
    opened_at = time.monotonic()
    widget.photos.value, widget.dataset.value = photos, root
    widget.model.source = model_file
    widget.open_button.native.click()
    assert widget.effort_line.value == ""  # nothing accepted yet
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    queue, first = widget.queue, widget.shown_id
    parts = viewer.layers[f"{first} parts"]
    prelabel = np.array(parts.data)  # the model's pre-label, as shown
    np.testing.assert_array_equal(prelabel, queue.load_draft(first))

    # three editing actions (each changes at least one pixel of the pre-label): a box
    # painted, a brush dab, a region of another class
    def other(y, x):
        return (int(prelabel[y, x]) + 7) % 20

    rows, columns = np.mgrid[20:60, 30:90]
    parts.data_setitem((rows.ravel(), columns.ravel()), other(40, 60))
    parts.brush_size = 5
    parts.paint((100, 150), other(100, 150), refresh=True)
    rows, columns = np.mgrid[150:170, 10:40]
    parts.data_setitem((rows.ravel(), columns.ravel()), other(160, 25))
    edited = np.array(parts.data)
    qtbot.wait(SEEN_MS)
    press_key(viewer, Qt.Key.Key_A, ALT)
    accepted_at = time.monotonic()
    assert widget.shown_id != first, widget.status.value  # exported, the next one shown

    accepted = _accepted_mask(root, first)
    np.testing.assert_array_equal(accepted, edited)
    log = effort_log.read_log(root)
    assert log.skipped == [] and len(log.entries) == 1
    entry = log.entries[0]
    changed = prelabel != accepted
    assert (entry["format"], entry["version"]) == ("napari-deeplab effort", 1)
    assert (entry["id"], entry["split"], entry["state"]) == (first, "Training", "pre-labelled")
    assert entry["pixels"] == prelabel.size == 200 * 300
    assert entry["changed"] == int(changed.sum()) > 0
    assert entry["changed_fraction"] == round(float(changed.mean()), 6)
    assert entry["confusion"] == _pairs(prelabel, accepted)
    assert entry["model"] == model_file
    assert entry["annotator"] == queue.me
    assert entry["actions"] == 3
    assert SEEN_MS / 1000 - 0.05 <= entry["active_s"] <= accepted_at - opened_at
    # the model's pre-label is kept although the draft now holds the accepted mask
    np.testing.assert_array_equal(load_prelabel(queue.folder, first).labels, prelabel)
    np.testing.assert_array_equal(queue.load_draft(first), accepted)
    # the queue shows the running figures
    assert widget.effort_line.value == (
        f"Corrections: mean changed {changed.mean():.1%} over 1 photo, this model"
    )

    # the next photo accepted as the model made it: nothing changed, no action
    second = widget.shown_id
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    qtbot.wait(SEEN_MS)
    press_key(viewer, Qt.Key.Key_A, ALT)
    entry = effort_log.read_log(root).entries[1]
    assert (entry["id"], entry["changed"], entry["actions"]) == (second, 0, 0)
    assert entry["confusion"] == _pairs(_accepted_mask(root, second), _accepted_mask(root, second))
    assert widget.effort_line.value == (
        f"Corrections: mean changed {changed.mean() / 2:.1%} over 2 photos, this model"
    )

    # the report reads it (in napari's process: no Keras loaded, see conftest)
    capsys.readouterr()
    assert cli.main(["report", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["count"] == 2 and model["mean_actions"] == 1.5


def test_the_watch_counts_edits_and_active_time_per_photo():
    """EffortWatch on napari's viewer model and a real Labels layer, with a clock the test sets."""
    from napari.components import ViewerModel
    from napari.layers import Labels

    from napari_deeplab._napari.effort_watch import EffortWatch
    from napari_deeplab._napari.parts_layer import edit_tracker

    viewer, clock = ViewerModel(), [0.0]
    watch = EffortWatch(viewer, now=lambda: clock[0])
    parts = viewer.add_labels(np.zeros((50, 60), np.uint8))
    assert isinstance(parts, Labels)
    watch.watch_layer(parts)
    tracker = edit_tracker(parts)

    watch.show("a")  # at 0
    clock[0] = 10.0
    parts.paint((5, 5), 3)  # an action; in use at 10
    clock[0] = 25.0
    with tracker.model_writes():  # the model's write: no action, not the annotator's time
        parts.data_setitem((np.array([1]), np.array([1])), 7)
    clock[0] = 40.0
    viewer.scene.camera.zoom = 3.0  # in use at 40 (+30)
    clock[0] = 200.0
    parts.paint((20, 20), 4)  # after 160 s idle: an action, the gap left out
    clock[0] = 205.0
    watch.show("b")  # a pauses at 205 (+5)
    clock[0] = 300.0
    parts.paint((30, 30), 5)  # b's action (the 95 s before it are idle: left out)
    clock[0] = 310.0
    watch.show("a")  # b pauses (+10); a runs again from 310
    clock[0] = 312.0
    assert watch.take("a") == (2, 10 + 30 + 5 + 2)
    assert watch.take("b") == (1, 10.0)
    clock[0] = 320.0
    assert watch.take("a") == (0, 8.0)  # still shown: counted again from its last take
    watch.close()
    clock[0] = 330.0
    viewer.scene.camera.zoom = 2.0  # no longer watched
    assert watch.take("a") == (0, 10.0)  # only the time shown, no event since 320
