"""People proposed from real CIHP masks and crowds made of them, and the people edits."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import people as P

SAMPLES = Path(__file__).parents[1] / "data" / "cihp_samples" / "Category_ids"
TRUE_COUNTS = {"0002190": 2, "0005008": 7, "0026375": 3}  # counted in the photos


def _mask(sample_id):
    return np.array(Image.open(SAMPLES / f"{sample_id}.png"))


@pytest.mark.parametrize("sample_id", sorted(TRUE_COUNTS))
def test_people_proposed_on_real_samples(sample_id):
    labels = _mask(sample_id)
    people = P.propose_people(labels)
    assert people.dtype == np.uint8 and people.shape == labels.shape
    assert people.max() == TRUE_COUNTS[sample_id]
    assert P.consistent(people, labels)


def _crowd(first, second, overlap):
    a, b = _mask(first), _mask(second)
    height = max(a.shape[0], b.shape[0])
    crowd = np.zeros((height, a.shape[1] + b.shape[1] - overlap), np.uint8)
    crowd[: b.shape[0], a.shape[1] - overlap :] = b
    left = crowd[: a.shape[0], : a.shape[1]]
    np.copyto(left, a, where=a > 0)  # the first in front
    return crowd


@pytest.mark.parametrize("overlap", [0, 40])
def test_people_who_touch_are_separated(overlap):
    crowd = _crowd("0002190", "0026375", overlap)
    people = P.propose_people(crowd)
    assert people.max() == 5 and P.consistent(people, crowd)


def test_merge_remove_new_split_are_exact():
    labels = np.zeros((6, 8), np.uint8)
    labels[:, 1:7] = 5
    people = np.zeros_like(labels)
    people[:, 1:3], people[:, 3:5], people[:, 5:7] = 1, 2, 3
    merged = P.merge_people(people, 1, 2)
    expected = np.where(people == 3, 2, np.where(people > 0, 1, 0)).astype(np.uint8)
    np.testing.assert_array_equal(merged, expected)
    removed = P.remove_person(people, 2)
    np.testing.assert_array_equal(
        removed, np.where(people == 3, 2, np.where(people == 2, 0, people))
    )
    region = np.zeros(labels.shape, bool)
    region[:3, 0:3] = True  # column 0 is background: not taken
    added = P.new_person(people, labels, region)
    assert (added[:3, 1:3] == 4).all() and added[0, 0] == 0 and (added[3:, 1:3] == 1).all()
    seeds = np.zeros(labels.shape, np.int64)
    seeds[0, 5], seeds[5, 5] = 1, 2
    split = P.split_person(people, labels, 3, seeds)
    assert (split[:3, 5:7] == 3).all() and (split[3:, 5:7] == 4).all()
    stroke = np.zeros(labels.shape, bool)
    stroke[2, :] = True
    cut = P.split_person(people, labels, 3, stroke)
    assert set(np.unique(cut[:, 5:7])) == {3, 4} and (cut[:, :5] == people[:, :5]).all()
    for edited in (merged, added, split, cut):
        assert P.consistent(edited, labels)


def test_consistency_rule_and_repair():
    labels = np.zeros((4, 6), np.uint8)
    labels[:, :4] = 2
    people = np.zeros_like(labels)
    people[:, :2] = 1
    assert not P.consistent(people, labels)  # parts without a person
    people[0, 5] = 3
    repaired = P.repair(people, labels)
    assert P.consistent(repaired, labels)
    assert (repaired[:, :4] == 1).all() and repaired[0, 5] == 0
    assert not P.consistent(np.where(labels > 0, 2, 0).astype(np.uint8), labels)  # no 1


def test_predict_people_writes_the_proposed_people(cihp_samples, model_file, tmp_path):
    import shutil

    from napari_deeplab import cihp
    from napari_deeplab.cli import EXIT_ERROR, EXIT_OK, main
    from tests.engine.commands import predict_command

    photos = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", photos)
    out = tmp_path / "dataset"
    assert main(predict_command(photos, model=model_file, out=out, options=["--people"])) == EXIT_OK
    for photo in sorted(photos.iterdir()):
        sample = cihp.read_sample(out, photo.stem)
        assert sample.human_ids is not None
        np.testing.assert_array_equal(sample.human_ids, P.propose_people(sample.category_ids))
        assert (out / "Training" / "Humans" / f"{photo.stem}.png").is_file()
        instance_map, instances = cihp.part_instances(sample.category_ids, sample.human_ids)
        np.testing.assert_array_equal(sample.instance_ids, instance_map)  # the whole record
        table = out / "Training" / "Instance_ids" / f"{photo.stem}.txt"
        assert table.read_text() == cihp.format_instance_table(instances)
        assert (out / "Training" / "Instances" / f"{photo.stem}.png").is_file()
    ray = predict_command(
        photos, model=model_file, out=out, options=["--people", "--engine", "ray"]
    )
    assert main(ray) == EXIT_ERROR
