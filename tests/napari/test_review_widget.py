"""The review queue on a folder of real CIHP photos, exported into a dataset, and resumed."""

import shutil

import numpy as np

from napari_deeplab import cihp
from napari_deeplab._napari.review_widget import ReviewWidget

TIMEOUT_MS = 240_000


def _open(viewer, photos, root, model):
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.source.setText(str(photos))
    widget.root.setText(str(root))
    widget.model_combo.setCurrentText(model)
    widget.open_queue()
    return widget


def test_review_pre_labels_ahead_exports_and_resumes(make_napari_viewer, qtbot, cihp_samples,
                                                     model_file, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", photos)
    root = tmp_path / "dataset"
    viewer = make_napari_viewer()
    widget = _open(viewer, photos, root, model_file)
    queue = widget.queue
    ids = [item.sample_id for item in queue.items]
    assert ids == ["0002190", "0005008", "0026375"]
    # the photo shown and the one after it are pre-labelled in the background
    qtbot.waitUntil(lambda: queue.load_draft(ids[1]) is not None, timeout=TIMEOUT_MS)
    assert f"{ids[0]} parts" in viewer.layers
    assert [queue.state(i) for i in ids] == ["pre-labelled", "pre-labelled", "new"]

    widget.step(1)  # instant: the draft is there
    parts = viewer.layers[f"{ids[1]} parts"]
    assert ids[0] not in viewer.layers
    parts.data_setitem((np.array([5, 6]), np.array([5, 5])), 13)  # a correction
    widget.step(1)
    assert queue.state(ids[1]) == "corrected"
    assert queue.load_draft(ids[1])[5, 5] == 13

    qtbot.waitUntil(lambda: f"{ids[2]} parts" in viewer.layers, timeout=TIMEOUT_MS)
    widget.propose_people()
    people = viewer.layers[f"{ids[2]} people"]
    assert people.data.max() >= 1
    expected_parts = viewer.layers[f"{ids[2]} parts"].data.copy()
    widget.accept()
    assert queue.state(ids[2]) == "exported"
    sample = cihp.read_sample(root, ids[2])
    np.testing.assert_array_equal(sample.category_ids, expected_parts)
    np.testing.assert_array_equal(sample.human_ids, people.data)
    assert (root / "Training" / "Images" / f"{ids[2]}.jpg").read_bytes() == \
        (photos / f"{ids[2]}.jpg").read_bytes()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)

    # close napari's widget and come back: the queue resumes from the dataset folder
    widget.step(-1)
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    again = _open(viewer, photos, root, model_file)
    assert again.queue.position == 1
    assert [again.queue.state(i) for i in ids] == ["pre-labelled", "corrected", "exported"]
    assert viewer.layers[f"{ids[1]} parts"].data[5, 5] == 13
    assert again.list.item(2).text().endswith("exported")
    again.step(1)  # the exported photo is skipped: we stay at the last photo to review
    assert again.queue.position == 1
    qtbot.waitUntil(lambda: again._worker is None, timeout=TIMEOUT_MS)
