import shutil

import numpy as np
import pytest

from napari_deeplab.review import ReviewQueue, queue_items


def test_queue_state_lives_in_the_dataset_folder(tmp_path, cihp_samples):
    photos = shutil.copytree(cihp_samples / "Images", tmp_path / "photos")
    queue = ReviewQueue(photos, tmp_path / "dataset")
    first, second, third = (item.sample_id for item in queue.items)
    queue.save_draft(first, np.zeros((200, 300), np.uint8), corrected=False)
    queue.save_draft(second, np.ones((313, 576), np.uint8), corrected=True)
    queue.accept(third, np.full((498, 500), 2, np.uint8))
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
