import re

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp
from tests.conftest import CIHP_SAMPLES, SAMPLE_IDS


def _readme_table():
    readme = CIHP_SAMPLES.parent / "README.md"
    rows = re.findall(r"^\| (\d+) \| ([a-z-]+) \| (\d+),(\d+),(\d+) \|$", readme.read_text(), re.M)
    assert len(rows) == 20
    return rows


def test_label_set_matches_the_dataset_readme():
    rows = _readme_table()
    assert [int(r[0]) for r in rows] == list(range(20))
    assert list(cihp.CLASS_NAMES) == [r[1] for r in rows]
    assert cihp.PALETTE.dtype == np.uint8 and cihp.PALETTE.shape == (20, 3)
    np.testing.assert_array_equal(cihp.PALETTE, [[int(c) for c in r[2:]] for r in rows])
    for left, right in cihp.LEFT_RIGHT_PAIRS:
        assert cihp.CLASS_NAMES[left].startswith("left-")
        assert cihp.CLASS_NAMES[right] == cihp.CLASS_NAMES[left].replace("left-", "right-")
    assert cihp.LEFT_RIGHT_PAIRS == ((14, 15), (16, 17), (18, 19))


def test_palette_matches_the_official_colormap():
    import scipy.io

    path = CIHP_SAMPLES.parent / "human_colormap.mat"
    official = np.round(scipy.io.loadmat(path)["colormap"] * 255)
    assert np.abs(official - cihp.PALETTE).max() <= 1


def test_write_sample_copies_the_photo_and_writes_masks(tmp_path, cihp_samples):
    sample_id = SAMPLE_IDS[1]
    photo = cihp_samples / "Images" / f"{sample_id}.jpg"
    truth = np.asarray(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
    paths = cihp.write_sample(tmp_path, sample_id, truth, split="Validation", image_path=photo)

    assert paths["Images"].read_bytes() == photo.read_bytes()
    ids = Image.open(paths["Category_ids"])
    assert ids.mode == "L"
    np.testing.assert_array_equal(np.asarray(ids), truth)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["Categories"])), cihp.PALETTE[truth])
    assert (tmp_path / "Validation" / "val_id.txt").read_text() == f"{sample_id}\n"


def test_id_list_stays_sorted_and_unique(tmp_path):
    labels = np.zeros((4, 5), np.uint8)
    for sample_id in ("b", "a", "c"):
        cihp.write_sample(tmp_path, sample_id, labels, image=np.zeros((4, 5, 3), np.uint8))
    cihp.write_sample(tmp_path, "a", labels, overwrite=True)
    assert cihp.read_id_list(tmp_path, "Training") == ["a", "b", "c"]


def test_existing_sample_is_refused_without_overwrite(tmp_path):
    cihp.write_sample(tmp_path, "x", np.ones((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8))
    with pytest.raises(cihp.DatasetError, match="overwrite"):
        cihp.write_sample(
            tmp_path, "x", np.zeros((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8)
        )
    assert np.asarray(Image.open(tmp_path / "Training" / "Category_ids" / "x.png")).max() == 1


@pytest.mark.parametrize("bad_id", ["", "../x", "a/b", "..", " a"])
def test_bad_ids_and_labels_are_rejected_before_writing(tmp_path, bad_id):
    with pytest.raises(cihp.DatasetError):
        cihp.write_sample(tmp_path, bad_id, np.zeros((3, 3), np.uint8))
    with pytest.raises(cihp.DatasetError, match="0..19"):
        cihp.write_sample(tmp_path, "ok", np.full((3, 3), 20), image=np.zeros((3, 3), np.uint8))
    with pytest.raises(cihp.DatasetError, match="differs"):
        cihp.write_sample(
            tmp_path, "ok", np.zeros((3, 3), int), image=np.zeros((4, 3, 3), np.uint8)
        )
    with pytest.raises(cihp.DatasetError, match="split"):
        cihp.write_sample(
            tmp_path, "ok", np.zeros((3, 3), int), split="Train", image=np.zeros((3, 3), np.uint8)
        )
    assert not any(tmp_path.iterdir())


def test_failure_part_way_leaves_the_dataset_as_it_was(tmp_path):
    cihp.write_sample(tmp_path, "x", np.ones((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # The photo to copy is missing: the masks were already staged when the copy fails.
    with pytest.raises(OSError):
        cihp.write_sample(
            tmp_path,
            "x",
            np.zeros((3, 3), np.uint8),
            image_path=tmp_path / "gone.jpg",
            overwrite=True,
        )
    with pytest.raises(OSError):
        cihp.write_sample(
            tmp_path, "y", np.zeros((3, 3), np.uint8), image_path=tmp_path / "gone.jpg"
        )
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_round_trip_on_the_official_samples(tmp_path, cihp_samples):
    assert cihp.list_samples(cihp_samples, split=None) == list(SAMPLE_IDS)
    for sample_id in SAMPLE_IDS:
        official = cihp.read_sample(cihp_samples, sample_id, split=None)
        people = (official.category_ids > 0).astype(np.uint8)  # one "person" per mask
        cihp.write_sample(
            tmp_path,
            sample_id,
            official.category_ids,
            image_path=official.image_path,
            human_ids=people,
        )
        back = cihp.read_sample(tmp_path, sample_id)
        np.testing.assert_array_equal(back.image, official.image)
        np.testing.assert_array_equal(back.category_ids, official.category_ids)
        np.testing.assert_array_equal(back.human_ids, people)
        humans = np.asarray(Image.open(tmp_path / "Training" / "Humans" / f"{sample_id}.png"))
        np.testing.assert_array_equal(humans, cihp.colorize_humans(people))
        assert (humans[people > 0] != 0).any(axis=-1).all()
    assert cihp.list_samples(tmp_path, "Training") == list(SAMPLE_IDS)


def test_human_ids_are_checked_before_writing(tmp_path):
    labels = np.zeros((3, 3), np.uint8)
    with pytest.raises(cihp.DatasetError, match="human ids shape"):
        cihp.write_sample(tmp_path, "x", labels, human_ids=np.zeros((2, 3), int))
    with pytest.raises(cihp.DatasetError, match="0..255"):
        cihp.write_sample(tmp_path, "x", labels, human_ids=np.full((3, 3), 300))
    assert not any(tmp_path.iterdir())


def test_photo_suffixes_are_the_ones_predict_reads_from_folders():
    from napari_deeplab import prelabel

    assert prelabel.IMAGE_SUFFIXES == cihp.PHOTO_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in cihp.PHOTO_SUFFIXES)


def test_versions_and_listing_agree_on_any_id_list(tmp_path):
    cihp.write_sample(
        tmp_path, "a", np.zeros((4, 5), np.uint8), image=np.zeros((4, 5, 3), np.uint8)
    )
    id_list = tmp_path / "Training" / "train_id.txt"
    for text in (b"a\n", b"\xef\xbb\xbfa\r\n", b"b\ra", b"  a  \n", "a\n\u00e9\n".encode()):
        id_list.write_bytes(text)
        assert "a" in cihp.list_samples(tmp_path, "Training")
        assert cihp.sample_version(tmp_path, "a") is not None
        assert cihp.sample_exists(tmp_path, "a")
    id_list.write_bytes(b"ab\n")
    assert cihp.sample_version(tmp_path, "a") is None and not cihp.sample_exists(tmp_path, "a")
