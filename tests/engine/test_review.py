import shutil

import numpy as np
import pytest

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
    assert [again.state(i.sample_id) for i in again.items] == ["pre-labelled", "corrected", "exported"]
    assert again.load_draft(second).max() == 1


def test_queue_of_a_cihp_split_and_bad_folders(tmp_path, cihp_samples):
    assert [i.sample_id for i in queue_items(cihp_samples)] == ["0002190", "0005008", "0026375"]
    with pytest.raises(FileNotFoundError, match="no photos"):
        queue_items(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="share a file stem"):
        queue_items(tmp_path)


@pytest.mark.parametrize("damage", [
    b"\x00\xffgarbage", b'{"position": 1, "states": {"0002190": "pre-lab', b"[1, 2]",
    b'{"position": "one", "states": {}}', b'{"position": -5, "states": {}}',
    b'{"position": true, "states": {}}', b'{"position": 0, "states": ["corrected"]}',
    b'{"position": 0, "states": {"0002190": "done"}}'])
def test_a_damaged_state_file_is_set_aside_and_the_queue_rebuilt(tmp_path, cihp_samples, damage):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    state_file = queue.folder / "queue.json"
    state_file.write_bytes(damage)

    again = ReviewQueue(photos, tmp_path / "dataset")
    assert len(again.warnings) == 1 and str(state_file) in again.warnings[0]
    assert "\n" not in again.warnings[0]
    aside = [p for p in queue.folder.iterdir() if p.name.startswith("queue.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damage and aside[0].name in again.warnings[0]
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


def test_drafts_and_state_are_written_atomically_and_a_damaged_draft_is_set_aside(tmp_path, cihp_samples):
    photos, queue = _queue_with_work(tmp_path, cihp_samples)
    assert not [p for p in queue.folder.iterdir() if ".tmp" in p.name]
    first = queue.items[0].sample_id
    queue.draft_path(first).write_bytes(b"\x89PNG truncated")
    assert queue.load_draft(first) is None
    assert str(queue.draft_path(first)) in queue.warnings[-1]
    assert [p.name for p in queue.folder.iterdir() if ".corrupt-" in p.name] == [
        queue.warnings[-1].rsplit(" ", 1)[-1]]
