import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_deeplab import cihp, review
from napari_deeplab.review import ReviewQueue, queue_items


def _queue_with_work(tmp_path, cihp_samples):
    """A queue with a model draft (first), a correction (second) and an export (third)."""
    photos = shutil.copytree(cihp_samples / "Images", tmp_path / "photos")
    queue = ReviewQueue(photos, tmp_path / "dataset")
    first, second, third = (item.sample_id for item in queue.items)
    queue.save_draft(first, np.zeros((200, 300), np.uint8), corrected=False)
    queue.save_draft(second, np.ones((313, 576), np.uint8), corrected=True)
    queue.accept(third, np.full((498, 500), 2, np.uint8))
    queue.go_to(1)
    return photos, queue


def test_queue_state_lives_in_the_dataset_folder(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    second = queue.items[1].sample_id
    queue.go_to(0)
    assert queue.move(1, skip_exported=True) == 1
    assert queue.move(1, skip_exported=True) == 1  # nothing left but the exported one

    again = ReviewQueue(photos, tmp_path / "dataset")
    assert again.position == 1
    assert [again.state(i.sample_id) for i in again.items] == [
        "pre-labelled",
        "corrected",
        "exported",
    ]
    assert again.load_draft(second).max() == 1


def test_queue_of_a_cihp_split_and_bad_folders(tmp_path, cihp_samples):
    assert [i.sample_id for i in queue_items(cihp_samples)] == ["0002190", "0005008", "0026375"]
    with pytest.raises(FileNotFoundError, match="no photos"):
        queue_items(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="share a file stem"):
        queue_items(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        b"\x00\xffgarbage",
        b'{"position": 1, "states": {"0002190": "pre-lab',
        b"[1, 2]",
        b'{"position": "one", "states": {}}',
        b'{"position": -5, "states": {}}',
        b'{"position": true, "states": {}}',
        b'{"position": 0, "states": ["corrected"]}',
        b'{"position": 0, "states": {"0002190": "done"}}',
    ],
)
def test_a_damaged_state_file_is_set_aside_and_the_queue_rebuilt(tmp_path, cihp_samples, damage):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    state_file = queue.folder / "queue.json"
    state_file.write_bytes(damage)

    again = ReviewQueue(photos, tmp_path / "dataset")
    assert len(again.warnings) == 1 and str(state_file) in again.warnings[0]
    assert "\n" not in again.warnings[0]
    aside = [p for p in queue.folder.iterdir() if p.name.startswith("queue.json.corrupt-")]
    assert (
        len(aside) == 1 and aside[0].read_bytes() == damage and aside[0].name in again.warnings[0]
    )
    # nothing lost: the export from the id list, both drafts protected as corrections
    assert [again.state(i.sample_id) for i in again.items] == ["corrected", "corrected", "exported"]
    assert again.position == 0 and again.load_draft(again.items[1].sample_id).max() == 1
    again.move(1)
    assert ReviewQueue(photos, tmp_path / "dataset").warnings == []  # written back whole


def test_a_draft_without_a_saved_state_stays_protected(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    state = (queue.folder / "queue.json").read_text().replace('"pre-labelled"', '"new"')
    (queue.folder / "queue.json").write_text(state.replace('"0005008": "corrected",', ""))
    again = ReviewQueue(photos, tmp_path / "dataset")
    assert again.warnings == []
    assert [again.state(i.sample_id) for i in again.items] == ["corrected", "corrected", "exported"]


def test_drafts_and_state_are_written_atomically_and_a_damaged_draft_is_set_aside(
    tmp_path, cihp_samples
):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    assert not [p for p in queue.folder.iterdir() if ".tmp" in p.name]
    first = queue.items[0].sample_id
    queue.draft_path(first).write_bytes(b"\x89PNG truncated")
    assert queue.load_draft(first) is None
    assert str(queue.draft_path(first)) in queue.warnings[-1]
    assert [p.name for p in queue.folder.iterdir() if ".corrupt-" in p.name] == [
        queue.warnings[-1].rsplit(" ", 1)[-1]
    ]


# --- a team on one queue: states merged, positions per annotator, claims, versions, Undo ------


def _as(monkeypatch, user: str) -> None:
    monkeypatch.setenv(cihp.ANNOTATOR_ENV, user)


def test_two_annotators_merge_states_and_keep_their_own_positions(
    tmp_path, cihp_samples, monkeypatch
):
    photos = shutil.copytree(cihp_samples / "Images", tmp_path / "photos")
    _as(monkeypatch, "alice")
    alice = ReviewQueue(photos, tmp_path / "dataset")
    _as(monkeypatch, "bob")
    bob = ReviewQueue(photos, tmp_path / "dataset")
    first, second, third = (item.sample_id for item in alice.items)
    alice.save_draft(first, np.ones((200, 300), np.uint8), corrected=True)
    bob.save_draft(second, np.ones((313, 576), np.uint8), corrected=True)  # bob never re-read
    alice.go_to(2)
    bob.go_to(1)
    bob.set_state(third, "flagged")
    _as(monkeypatch, "alice")
    again = ReviewQueue(photos, tmp_path / "dataset")
    assert again.position == 2  # alice's, not bob's
    assert [again.full_state(i) for i in (first, second, third)] == [
        "corrected",
        "corrected",
        "flagged",
    ]
    assert again.writer_of(third)["user"] == "bob" and "flagged by bob@" in again.describe(third)
    alice.refresh()
    assert alice.full_state(third) == "flagged"


def test_a_model_draft_never_replaces_another_draft(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    second = queue.items[1].sample_id
    assert not queue.save_draft(second, np.zeros((313, 576), np.uint8), corrected=False)
    assert queue.load_draft(second).max() == 1 and queue.state(second) == "corrected"


def test_the_old_state_file_reads_exported_as_exported_reviewed(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    third = queue.items[2].sample_id
    (queue.folder / "queue.json").write_text(
        json.dumps({"source": str(queue.source), "position": 1, "states": {third: "exported"}})
    )
    again = ReviewQueue(photos, tmp_path / "dataset")
    assert again.warnings == [] and again.position == 1
    assert again.full_state(third) == "exported-reviewed" and again.state(third) == "exported"
    assert again.exported_count() == 1


def test_accept_refuses_a_sample_changed_since_it_was_shown_and_undo_puts_it_back(
    tmp_path, cihp_samples
):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    root, first = tmp_path / "dataset", queue.items[0].sample_id
    # a new sample: Accept expects it absent, Undo unlists it
    record = queue.accept(first, np.full((200, 300), 3, np.uint8), expected_version=None)
    assert queue.full_state(first) == "exported-reviewed" and first in cihp.list_samples(root)
    queue.undo_export(record)
    assert first not in cihp.list_samples(root) and queue.state(first) == "corrected"
    assert queue.load_draft(first).max() == 3  # the accepted mask stays the draft

    # an overwrite: someone (File > Save) writes the sample after it was shown
    shown = cihp.sample_version(root, first)
    assert shown is None
    cihp.write_sample(
        root, first, np.full((200, 300), 5, np.uint8), image=np.zeros((200, 300, 3), np.uint8)
    )
    with pytest.raises(cihp.SampleChangedError) as refused:
        queue.accept(first, np.full((200, 300), 3, np.uint8), expected_version=shown)
    assert refused.value.sample_id == first and "\n" not in str(refused.value)
    assert cihp.read_sample(root, first).category_ids.max() == 5
    # shown again, the dataset's newer sample is what opens, not the old draft
    labels, version, origin = queue.opening(first)
    assert origin == "dataset" and labels.max() == 5 and version == refused.value.current_version
    before = (root / "Training" / "Images" / f"{first}.png").read_bytes()
    record = queue.accept(
        first,
        np.full((200, 300), 3, np.uint8),
        expected_version=version,
        human_ids=np.ones((200, 300), np.uint8),
    )
    assert cihp.read_sample(root, first).category_ids.max() == 3
    assert (root / "Training" / "Instance_ids" / f"{first}.txt").read_text() == "3 3 1\n"
    assert not (root / "Training" / "Images" / f"{first}.png").exists()  # the photo's jpg now
    queue.undo_export(record)
    assert cihp.read_sample(root, first).category_ids.max() == 5
    for folder in cihp.PEOPLE_FOLDERS:  # it had no people before that Accept
        assert not list((root / "Training" / folder).glob(f"{first}.*")), folder
    assert (root / "Training" / "Images" / f"{first}.png").read_bytes() == before
    assert not (root / "Training" / "Images" / f"{first}.jpg").exists()


def test_work_in_hand_is_kept_apart_from_the_draft(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    first = queue.items[0].sample_id
    queue.save_in_hand(first, np.full((200, 300), 7, np.uint8))
    again = ReviewQueue(photos, tmp_path / "dataset")
    assert again.load_in_hand(first).max() == 7 and again.state(first) == "pre-labelled"
    again.drop_in_hand(first)
    assert again.load_in_hand(first) is None


def test_claims_are_exclusive_and_lapse_with_their_process(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    first, second = queue.items[0].sample_id, queue.items[1].sample_id
    assert queue.claim(first) is None and queue.claim(first) is None  # ours, again
    assert queue.claims() == {}  # our own are not the others'
    # another live process (same host) holds the second photo
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = queue.folder / "claims" / f"{second}.json"
        path.write_text(
            json.dumps(
                {
                    "user": "bob",
                    "host": queue.me["host"],
                    "pid": other.pid,
                    "time": "2026-12-02T01:00:00+00:00",
                    "heartbeat": time.time(),
                }
            )
        )
        held = queue.claim(second)
        assert held is not None and held.user == "bob" and "claimed by bob@" in held.describe()
        assert list(queue.claims()) == [second]
        queue.release(second)  # not ours: left alone
        assert path.exists()
    finally:
        other.kill()
        other.wait()
    assert queue.claims() == {} and queue.claim(second) is None  # its process is gone
    # another host's claim lapses by its age alone
    path.write_text(
        json.dumps(
            {
                "user": "carol",
                "host": "elsewhere",
                "pid": 1,
                "time": "",
                "heartbeat": time.time() - review.CLAIM_LAPSE_S - 1,
            }
        )
    )
    assert queue.claim(second) is None
    assert queue.renew(second)
    queue.release(second)
    assert not path.exists()
