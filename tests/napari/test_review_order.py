"""The Review queue in score order, re-pre-labelling on a model change, and the audit's checks:
docked from the Plugins menu, over a folder of the real CIHP photos, with small random-weight
models in the plugin's model process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from napari.layers import Shapes
from PIL import Image as PILImage
from qtpy.QtCore import Qt

from napari_deeplab import cihp
from napari_deeplab.queue_order import ordered
from napari_deeplab.review import ReviewQueue

from .gui import dock_plugin, press_key

TIMEOUT_MS = 300_000  # model work on 2 shared cores, a cold model process
ALT = Qt.KeyboardModifier.AltModifier
CIHP = ["0002190", "0005008", "0026375"]
MIRRORED = ["0002190m", "0005008m"]  # mirror images: other photos, other scores
IDS = sorted(CIHP + MIRRORED)
SCREENSHOT = os.environ.get("REVIEW_ORDER_SCREENSHOT")  # where to save the queue in score order


def _photos(cihp_samples, folder: Path) -> Path:
    shutil.copytree(cihp_samples / "Images", folder)
    for name in MIRRORED:
        with PILImage.open(folder / f"{name[:-1]}.jpg") as photo:
            photo.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}.jpg")
    return folder


def _size(photos: Path, sample_id: str) -> tuple[int, int]:
    with PILImage.open(photos / f"{sample_id}.jpg") as photo:
        return photo.size[::-1]


def _rows(widget) -> list[str]:
    return [widget.photo_list.item(i).text() for i in range(widget.photo_list.count())]


def _row_ids(widget) -> list[str]:
    return [row.split(" — ")[0] for row in _rows(widget)]


def _open(widget, photos, root, model) -> None:
    widget.photos.value, widget.dataset.value = photos, root
    widget.model.source = str(model)
    widget.open_button.native.click()


def test_score_order_and_a_new_model_re_pre_labels_only_untouched_photos(
    make_napari_viewer, qtbot, cihp_samples, model_file, other_model_file, tmp_path
):
    photos, root = _photos(cihp_samples, tmp_path / "photos"), tmp_path / "dataset"
    # an earlier session: model drafts of every photo but the second, one of them corrected
    earlier = ReviewQueue(photos, root)
    first, second, corrected = IDS[0], IDS[1], IDS[3]
    for sample_id in IDS:
        if sample_id != second:
            earlier.save_draft(sample_id, np.zeros(_size(photos, sample_id), np.uint8), False)
    edit = np.zeros(_size(photos, corrected), np.uint8)
    edit[20:60, 30:90] = 13
    earlier.save_draft(corrected, edit, corrected=True)
    corrected_bytes = earlier.draft_path(corrected).read_bytes()

    viewer = make_napari_viewer(show=True)
    dock, widget = dock_plugin(viewer, "Review queue")
    _open(widget, photos, root, model_file)
    queue = widget.queue
    assert widget.order.value == "file name" and _row_ids(widget) == IDS

    # pre-label-ahead pre-labels the second photo and records its score in the dataset's
    # scores file (the one predict --scores writes), and the list shows it
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    recorded = cihp.read_scores(root)
    assert list(recorded) == [second] and recorded[second]["model"] == model_file
    assert _rows(widget)[1] == f"{second} — pre-labelled · score {recorded[second]['score']:.3f}"

    # another model chosen: the queue offers to re-pre-label the untouched photos (not the
    # photo in hand, not the corrected one, not the one the chosen model... made already)
    widget.model.source = other_model_file
    runner = widget.relabel_runner
    assert runner.visible
    assert runner.run_button.text == "Re-pre-label 3 untouched photos with random1.keras"
    in_hand_bytes = queue.draft_path(first).read_bytes()
    before = {i: queue.draft_path(i).read_bytes() for i in IDS}
    runner.run_button.native.click()
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)
    assert runner.status.value == "Re-pre-labelled 3 untouched photos with random1.keras"
    assert queue.draft_path(corrected).read_bytes() == corrected_bytes  # byte-identical
    assert queue.draft_path(first).read_bytes() == in_hand_bytes  # the photo in hand
    relabelled = [IDS[1], IDS[2], IDS[4]]
    assert all(queue.draft_path(i).read_bytes() != before[i] for i in relabelled)
    recorded = cihp.read_scores(root)
    assert {i: recorded[i]["model"] for i in recorded} == dict.fromkeys(
        relabelled, other_model_file
    )
    assert not runner.visible  # nothing left to re-pre-label with this model
    assert widget.status.value.startswith(runner.status.value)  # the one line, kept in view

    # least confident first: the photo in hand stays first, then the scores, highest first,
    # then the photos without a score (the corrected one)
    widget.order.value = "least confident first"
    scores = cihp.read_scores(root)
    expected = [first, *sorted(relabelled, key=lambda i: -scores[i]["score"]), corrected]
    assert _row_ids(widget) == expected == ordered(IDS, scores, "score", first, IDS)
    assert widget.shown_id == first and widget.photo_list.currentRow() == 0
    if SCREENSHOT:  # docs/images/review_queue_scores.png; the fields show short names
        widget.photos.value, widget.dataset.value = Path("photos"), Path("dataset")
        viewer.window.resize(1400, 900)
        qtbot.wait(800)
        viewer.screenshot(SCREENSHOT, canvas_only=False, flash=False)

    # Next: the least confident photo; then scores change (re-pre-labelled by the first model):
    # what is ahead is ranked again, the photo in hand stays where it is
    press_key(viewer, Qt.Key.Key_Right, ALT)
    in_hand, position = widget.shown_id, queue.position
    assert in_hand == expected[1] and position == 1
    widget.model.source = model_file
    # the first photo (seen, no score) and the two ahead; not the photo in hand
    assert runner.run_button.text == "Re-pre-label 3 untouched photos with random0.keras"
    in_hand_bytes = queue.draft_path(in_hand).read_bytes()
    runner.run_button.native.click()
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)
    scores = cihp.read_scores(root)
    ahead = sorted(expected[2:4], key=lambda i: (-scores[i]["score"], i))
    assert _row_ids(widget) == [first, in_hand, *ahead, corrected]
    assert widget.shown_id == in_hand and queue.position == position
    assert widget.photo_list.currentRow() == position
    assert queue.draft_path(in_hand).read_bytes() == in_hand_bytes
    assert queue.draft_path(corrected).read_bytes() == corrected_bytes

    # resume: the queue opened again keeps the order and the photo in hand
    rows = _rows(widget)
    viewer.window.remove_dock_widget(dock)
    viewer.layers.clear()
    _, again = dock_plugin(viewer, "Review queue")
    _open(again, photos, root, model_file)
    assert _rows(again) == rows and again.shown_id == in_hand
    assert again.order.value == "least confident first"


def test_the_audit_list_to_check_flags_and_sending_back(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    photos = shutil.copytree(cihp_samples / "Images", tmp_path / "photos")
    root = tmp_path / "dataset"
    accepted = ReviewQueue(photos, root)
    for sample in CIHP:  # accepted earlier: their ground-truth masks
        accepted.accept(sample, cihp.read_sample(cihp_samples, sample, None).category_ids)
    # the audit's list as the command writes it (a random model, every confidence counted)
    audit = subprocess.run(
        [sys.executable, "-m", "napari_deeplab.cli", "audit", str(root), "--model"]
        + [model_file, "--min-confidence", "0", "--top", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert audit.returncode == 0, audit.stderr
    listed = json.loads(audit.stdout)
    audit_file = tmp_path / "audit.json"
    audit_file.write_text(audit.stdout)
    to_check = [entry["id"] for entry in listed]
    assert len(to_check) == 2 and listed[0]["regions"]

    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Review queue")
    _open(widget, photos, root, tmp_path / "no-model.keras")
    queue = widget.queue
    widget.audit_file.value = audit_file
    widget.open_audit_button.native.click()
    assert widget.status.value == "2 photos to check"
    assert [queue.state(i) for i in to_check] == ["to-check", "to-check"]
    assert queue.exported_count() == 1 and widget.progress.value == "1 of 3 exported"

    # a photo to check shows its suspect regions outlined, with their kinds
    row = _row_ids(widget).index(to_check[0])
    widget.go_to(row)
    suspects = viewer.layers[f"{to_check[0]} suspects"]
    boxes = [r["bbox"] for r in listed[0]["regions"]]
    assert isinstance(suspects, Shapes) and len(suspects.data) == len(boxes)
    np.testing.assert_array_equal(suspects.data[0].min(axis=0), boxes[0][:2])
    np.testing.assert_array_equal(suspects.data[0].max(axis=0), boxes[0][2:])
    assert list(suspects.features["kind"]) == [r["kind"] for r in listed[0]["regions"]]
    assert viewer.layers.selection.active.name == f"{to_check[0]} parts"
    assert "suspect regions outlined" in widget.status.value

    # flag the other accepted photo with a note; send the third back for correction
    (plain,) = set(CIHP) - set(to_check)
    widget.go_to(_row_ids(widget).index(plain))
    assert f"{to_check[0]} suspects" not in viewer.layers
    widget.note.value = "left and right shoes swapped"
    widget.flag_button.native.click()
    assert queue.full_state(plain) == "flagged"
    assert queue.note(plain) == "left and right shoes swapped"
    assert "note: left and right shoes swapped" in widget.status.value
    widget.go_to(_row_ids(widget).index(to_check[1]))
    widget.send_back_button.native.click()
    assert queue.state(to_check[1]) == "returned"

    # held photos are never counted as exported (nor skipped as exported) until accepted again
    again = ReviewQueue(photos, root)
    assert again.accepted_ids() == [] and again.exported_count() == 0
    assert sorted(again.held_ids()) == sorted(CIHP)
    assert again.note(plain) == "left and right shoes swapped"
    widget.go_to(_row_ids(widget).index(to_check[0]))
    qtbot.wait(1200)  # looked at long enough for Accept
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert queue.full_state(to_check[0]) == "exported-reviewed"
    assert ReviewQueue(photos, root).accepted_ids() == [to_check[0]]
