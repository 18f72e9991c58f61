"""The Review queue used by a small team: two annotators in two real napari processes on one
queue and one dataset (this test's viewer, and ``review_driver.py`` in a child process), driven by
real key events, clicks and fields; every correction is exported or refused with its line."""

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from qtpy.QtCore import Qt

import napari_deeplab._napari.review_widget as review_widget
from napari_deeplab import cihp
from napari_deeplab._napari.review_widget import AUTOSAVE_S, MIN_SEEN_S
from napari_deeplab.cihp import ANNOTATOR_ENV, effort_log
from napari_deeplab.review import ReviewQueue

from .gui import press_key

ALT = Qt.KeyboardModifier.AltModifier
SEEN_S = MIN_SEEN_S + 0.2
TIMEOUT_MS = 240_000
DRIVER = "tests.napari.review_driver"  # run as a module, so that it imports tests.napari.gui
REPO = Path(__file__).resolve().parents[2]


class Annotator:
    """Another annotator: a napari process running ``review_driver.py``."""

    def __init__(self, user: str, log: Path):
        env = {**os.environ, ANNOTATOR_ENV: user}
        self.log = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", DRIVER, "0.5"],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._reply(120)["ready"]

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.replies.put(json.loads(line))

    def _reply(self, timeout_s: float, qtbot=None) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if qtbot is not None:
                qtbot.wait(20)  # this test's napari keeps running meanwhile
            try:
                answer = self.replies.get(timeout=0 if qtbot else 0.05)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"the driver ended ({self.process.returncode}); see {self.log.name}"
                    ) from None
                continue
            assert answer["ok"], answer
            return answer
        raise AssertionError(f"no reply from the driver in {timeout_s} s; see {self.log.name}")

    def send(self, qtbot, *command, timeout_s: float = 120) -> dict:
        self.process.stdin.write(
            json.dumps([str(c) if isinstance(c, Path) else c for c in command]) + "\n"
        )
        self.process.stdin.flush()
        return self._reply(timeout_s, qtbot)

    def kill(self) -> None:
        self.process.kill()  # kill -9
        self.process.wait()

    def close(self, qtbot) -> dict:
        answer = self.send(qtbot, "close")
        self.process.wait(60)
        return answer


@pytest.fixture
def annotators(tmp_path):
    started = []

    def start(user: str) -> Annotator:
        started.append(Annotator(user, tmp_path / f"{user}.log"))
        return started[-1]

    yield start
    for annotator in started:
        if annotator.process.poll() is None:
            annotator.kill()


def _photos(cihp_samples, folder: Path, names) -> Path:
    folder.mkdir()
    for name in names:
        PILImage.open(cihp_samples / "Images" / "0005008.jpg").reduce(4).save(
            folder / f"{name}.jpg"
        )
    return folder


def _open(widget, photos, root, model) -> None:
    widget.photos.value, widget.dataset.value = photos, root
    widget.model.source = str(model)
    widget.open_button.native.click()


def _ids_of(root) -> list[str]:
    return cihp.list_samples(root) if (Path(root) / "Training").is_dir() else []


def test_two_annotators_in_two_napari_processes(
    make_napari_viewer, qtbot, cihp_samples, tmp_path, monkeypatch, annotators
):
    monkeypatch.setattr(review_widget, "CLAIM_HEARTBEAT_S", 0.5)
    monkeypatch.setenv(ANNOTATOR_ENV, "alice")
    photos, root = _photos(cihp_samples, tmp_path / "photos", "abcd"), tmp_path / "dataset"
    # the model's drafts of a and b, made earlier (the model itself: the test below)
    earlier = ReviewQueue(photos, root)
    for name in "ab":
        shape = PILImage.open(photos / f"{name}.jpg").size[::-1]
        earlier.save_draft(name, np.full(shape, 14, np.uint8), corrected=False)
    no_model = tmp_path / "no-model.keras"
    viewer = make_napari_viewer(show=True)
    _, alice = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    _open(alice, photos, root, no_model)
    assert alice.shown_id == "a" and viewer.layers["a parts"].data.any()

    # bob opens the same queue: a is alice's, so he starts on b, with its draft (never empty)
    bob = annotators("bob")
    seen = bob.send(qtbot, "open", photos, root, no_model)
    assert seen["shown"] == "b" and seen["parts_sum"] > 0
    assert "claimed by alice@" in seen["rows"][0]
    qtbot.waitUntil(lambda: "claimed by bob@" in alice.photo_list.item(1).text(), timeout=10_000)

    # bob corrects b and presses Alt+A twice in a row: b is exported, c (just shown) is not
    bob.send(qtbot, "paint", 5, 5, 13)
    bob.send(qtbot, "wait", SEEN_S)
    seen = bob.send(qtbot, "key", "A", "Alt", 2)
    assert seen["shown"] == "c"
    assert seen["status"] == "Accept pressed twice: c was not exported; look at it, then Accept"
    assert _ids_of(root) == ["b"] and cihp.read_sample(root, "b").category_ids[5, 5] == 13
    assert "1 of 4 exported" in seen["progress"]

    # a's sample is saved meanwhile by another tool (File > Save): alice's Accept is refused
    # with one line, the dataset keeps theirs; Keep mine (a second step) exports hers
    parts = viewer.layers["a parts"]
    parts.paint((9, 9), 7)
    cihp.write_sample(
        root,
        "a",
        np.full(parts.data.shape, 2, np.uint8),
        image=np.zeros((*parts.data.shape, 3), np.uint8),
    )
    qtbot.wait(int(SEEN_S * 1000))
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert alice.shown_id == "a" and alice.choice_row.visible
    assert alice.status.value.startswith("a was not exported: ") and "\n" not in alice.status.value
    assert cihp.read_sample(root, "a").category_ids.max() == 2
    press_key(viewer, Qt.Key.Key_A, ALT)  # Accept again does not decide for her
    assert cihp.read_sample(root, "a").category_ids.max() == 2
    alice.keep_mine_button.native.click()
    assert cihp.read_sample(root, "a").category_ids[9, 9] == 7
    assert alice.shown_id == "d"  # b exported, c is bob's
    assert alice.status.value.startswith("Exported a — Undo")

    # Undo puts the dataset's a back as the other tool saved it (a PNG photo again)
    alice.undo_button.native.click()
    assert cihp.read_sample(root, "a").category_ids.max() == 2
    assert cihp.find_image(root, "a").suffix == ".png"
    assert alice.shown_id == "a" and viewer.layers["a parts"].data[9, 9] == 7  # hers, in hand
    qtbot.wait(int(SEEN_S * 1000))
    stall = press_key(viewer, Qt.Key.Key_A, ALT)  # now based on the restored version: exported
    assert cihp.read_sample(root, "a").category_ids[9, 9] == 7 and alice.shown_id == "d"

    # bob edits c, the autosave runs, and his napari is killed (kill -9): reopening resumes on
    # c with that edit
    bob.send(qtbot, "paint", 7, 7, 9)
    bob.send(qtbot, "wait", AUTOSAVE_S + 1.5)
    bob.kill()
    bob = annotators("bob")
    seen = bob.send(qtbot, "open", photos, root, no_model)
    assert seen["shown"] == "c" and "unsaved edits restored" in seen["status"]
    # closing napari with an edit in hand (no Next, no autosave yet) keeps it as c's draft
    bob.send(qtbot, "paint", 40, 40, 4)
    bob.close(qtbot)
    draft = ReviewQueue(photos, root).load_draft("c")
    assert draft[7, 7] == 9 and draft[40, 40] == 4

    # c is free now: alice opens it from the list and sees bob's correction; an
    # all-background mask asks first, then exports on the explicit second step
    qtbot.waitUntil(lambda: "claimed" not in alice.photo_list.item(2).text(), timeout=10_000)
    alice.go_to(2)
    parts = viewer.layers["c parts"]
    assert parts.data[7, 7] == 9 and parts.data[40, 40] == 4
    parts.data_setitem(np.nonzero(parts.data), 0)
    qtbot.wait(int(SEEN_S * 1000))
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert alice.choice_row.visible and "every pixel is background" in alice.status.value
    assert "c" not in _ids_of(root)
    alice.export_empty_button.native.click()
    assert "c" in _ids_of(root) and not cihp.read_sample(root, "c").category_ids.any()

    # closing the viewer with an edit in hand keeps it, and ends the claim
    qtbot.waitUntil(lambda: not alice.prelabelling, timeout=TIMEOUT_MS)
    assert alice.shown_id == "d"
    viewer.layers["d parts"].paint((3, 3), 11)
    viewer.close()
    queue_after = ReviewQueue(photos, root)
    assert queue_after.load_draft("d")[3, 3] == 11 and queue_after.claims() == {}
    assert [queue_after.full_state(i) for i in "abcd"] == [
        "exported-reviewed",
        "exported-reviewed",
        "exported-reviewed",
        "corrected",
    ]
    # every Accept of both processes is in the dataset's effort log, each by its annotator
    # (these drafts were no model's pre-label: compared with an empty mask, model None)
    log = effort_log.read_log(root)
    assert log.skipped == [] and all(entry["model"] is None for entry in log.entries)
    assert [(entry["id"], entry["annotator"]["user"]) for entry in log.entries] == [
        ("b", "bob"),
        ("a", "alice"),
        ("a", "alice"),
        ("c", "alice"),
    ]
    print(f"\nAccept key press (export + next photo shown): {stall * 1000:.0f} ms")


def test_a_draft_another_napari_wrote_is_shown_when_the_pre_label_arrives(
    make_napari_viewer, qtbot, cihp_samples, model_file, tmp_path
):
    photos, root = _photos(cihp_samples, tmp_path / "photos", "a"), tmp_path / "dataset"
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    _open(widget, photos, root, model_file)
    assert widget.prelabelling and not viewer.layers["a parts"].data.any()
    theirs = np.full(viewer.layers["a parts"].data.shape, 6, np.uint8)
    ReviewQueue(photos, root).save_draft("a", theirs, corrected=False)  # "another process"
    qtbot.waitUntil(lambda: not widget.prelabelling, timeout=TIMEOUT_MS)
    np.testing.assert_array_equal(viewer.layers["a parts"].data, theirs)
    np.testing.assert_array_equal(widget.queue.load_draft("a"), theirs)


def test_autosave_cost_on_a_12_mp_layer(tmp_path, cihp_samples):
    """The autosave's PNG of a 4000 x 3000 layer (written off the GUI thread)."""
    photos = _photos(cihp_samples, tmp_path / "photos", "a")
    queue = ReviewQueue(photos, tmp_path / "dataset")
    labels = np.zeros((3000, 4000), np.uint8)
    labels[500:2500, 1000:3000] = 13
    labels[::7, ::5] = 2
    start = time.perf_counter()
    queue.save_in_hand("a", labels)
    took = time.perf_counter() - start
    np.testing.assert_array_equal(queue.load_in_hand("a"), labels)
    print(
        f"\nautosave of a 12 MP layer: {took * 1000:.0f} ms, "
        f"{queue.in_hand_path('a').stat().st_size // 1024} KB"
    )
    assert took < 5  # fsync on a busy shared disk dominates


def test_the_photos_and_dataset_fields_offer_the_folders_used_last(
    make_napari_viewer, tmp_path, cihp_samples
):
    photos, root = _photos(cihp_samples, tmp_path / "photos", "a"), tmp_path / "dataset"
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    _open(widget, photos, root, tmp_path / "no-model.keras")
    viewer.window.remove_dock_widget(dock)
    _, again = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    assert again.photos.value is None and again.dataset.value is None
    again.recent_photos.value = str(photos.resolve())
    again.recent_dataset.value = str(root.absolute())
    assert again.photos.value == photos.resolve() and again.dataset.value == root.absolute()
    shutil.rmtree(root)


def test_states_say_what_happened(make_napari_viewer, qtbot, cihp_samples, tmp_path):
    photos, root = _photos(cihp_samples, tmp_path / "photos", "abc"), tmp_path / "dataset"
    earlier = ReviewQueue(photos, root)
    for name in "abc":
        earlier.save_draft(
            name,
            np.full(PILImage.open(photos / f"{name}.jpg").size[::-1], 14, np.uint8),
            corrected=False,
        )
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    _open(widget, photos, root, tmp_path / "no-model.keras")
    assert widget.progress.value == "0 of 3 exported"
    press_key(viewer, Qt.Key.Key_Right, ALT)  # a left at once: still only pre-labelled
    assert widget.queue.full_state("a") == "pre-labelled"
    qtbot.wait(int(SEEN_S * 1000))
    stall = press_key(viewer, Qt.Key.Key_Right, ALT)  # b looked at, not edited
    print(f"\nNext key press: {stall * 1000:.0f} ms")
    assert widget.queue.full_state("b") == "seen" and widget.photo_list.item(1).text() == "b — seen"
    widget.flag_button.native.click()
    assert widget.photo_list.item(2).text() == "c — flagged"
    assert widget.status.value.startswith("c: flagged by ")
    qtbot.wait(int(SEEN_S * 1000))
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert widget.queue.full_state("c") == "exported-reviewed"
    assert (
        widget.status.value.startswith("Exported c — Undo")
        and widget.progress.value == "1 of 3 exported"
    )
    widget.undo_button.native.click()
    assert "c" not in _ids_of(root) and widget.queue.full_state("c") == "corrected"
    assert widget.shown_id == "c" and widget.progress.value == "0 of 3 exported"


def test_open_theirs_shows_the_newer_sample_and_keeps_yours_aside(
    make_napari_viewer, qtbot, cihp_samples, tmp_path
):
    photos, root = _photos(cihp_samples, tmp_path / "photos", "ab"), tmp_path / "dataset"
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Review queue")
    _open(widget, photos, root, tmp_path / "no-model.keras")
    parts = viewer.layers["a parts"]
    parts.paint((20, 20), 5)
    theirs = np.full(parts.data.shape, 3, np.uint8)
    cihp.write_sample(root, "a", theirs, image_path=photos / "a.jpg", writer_tool="predict")
    qtbot.wait(int(SEEN_S * 1000))
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert "written by" in widget.status.value and "with predict at" in widget.status.value
    parts.paint((30, 60), 6)  # painted after the refusal: kept aside too
    widget.open_theirs_button.native.click()
    np.testing.assert_array_equal(viewer.layers["a parts"].data, theirs)
    kept = list((widget.queue.folder / "kept").glob("a-*.png"))
    assert len(kept) == 1 and str(kept[0]) in widget.status.value
    mine = np.array(PILImage.open(kept[0]))
    assert mine[20, 20] == 5 and mine[30, 60] == 6
    # theirs is now what Accept starts from: no refusal
    qtbot.wait(int(SEEN_S * 1000))
    press_key(viewer, Qt.Key.Key_A, ALT)
    assert widget.shown_id == "b" and widget.queue.full_state("a") == "exported-reviewed"
