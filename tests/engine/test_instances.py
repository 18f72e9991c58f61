"""The whole CIHP record: part instances derived from parts x people (CIHP's ``Instance_ids``
numbering and ``.txt`` table), written by every writer with the people, read back, and the
limits of 8-bit maps."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "cihp_samples"
SAMPLE_IDS = ("0002190", "0005008", "0026375")
RECORD = ("Images", "Category_ids", "Categories", "Human_ids", "Humans", "Instances")
"""The folders of a whole record, one ``<id>.png`` (or photo) each; plus Instance_ids."""


def _direct_table(parts: np.ndarray, people: np.ndarray) -> str:
    """The ``.txt`` of CIHP's numbering computed straight from the pixels: one line per
    (person, class) pair present, value = class + 20 * (person - 1), sorted by value."""
    both = (parts > 0) & (people > 0)
    pairs = {
        (int(c) + 20 * (int(p) - 1), int(c), int(p))
        for c, p in zip(parts[both], people[both], strict=True)
    }
    return "".join(f"{v} {c} {p}\n" for v, c, p in sorted(pairs))


def _random_record(seed: int, people: int, shape=(40, 60)):
    rng = np.random.default_rng(seed)
    parts = rng.integers(0, 20, shape).astype(np.uint8)
    humans = rng.integers(0, people + 1, shape).astype(np.uint8)
    return parts, humans


def _record_files(split: Path, sample_id: str) -> dict[str, bytes]:
    found = {folder: next((split / folder).glob(f"{sample_id}.*")) for folder in RECORD}
    found["Instance_ids"] = split / "Instance_ids" / f"{sample_id}.png"
    found["Instance_ids.txt"] = split / "Instance_ids" / f"{sample_id}.txt"
    return {key: path.read_bytes() for key, path in found.items()}


def test_instance_ids_are_class_plus_20_per_person_and_the_table_matches_the_pixels(tmp_path):
    parts, people = _random_record(1, 12)
    cihp.write_sample(
        tmp_path, "r", parts, image=np.zeros(parts.shape + (3,), np.uint8), human_ids=people
    )
    split = tmp_path / "Training"
    instance_map = np.asarray(Image.open(split / "Instance_ids" / "r.png"))
    both = (parts > 0) & (people > 0)
    expected = np.where(both, parts.astype(int) + 20 * (people.astype(int) - 1), 0)
    np.testing.assert_array_equal(instance_map, expected)
    table = (split / "Instance_ids" / "r.txt").read_text()
    assert table == _direct_table(parts, people)
    picture = np.asarray(Image.open(split / "Instances" / "r.png"))
    np.testing.assert_array_equal(picture, cihp.INSTANCE_COLOURS[expected])
    assert len({tuple(c) for c in cihp.INSTANCE_COLOURS}) == 256  # every instance its colour
    sample = cihp.read_sample(tmp_path, "r")
    np.testing.assert_array_equal(sample.instance_ids, instance_map)
    assert cihp.parse_instance_table(table) == cihp.part_instances(parts, people)[1]


def test_more_than_12_people_are_numbered_1_to_n_with_the_table_naming_each(tmp_path):
    _, people = _random_record(2, 13, shape=(60, 60))
    # classes 1, 2, 3, 5 only: at most 13 x 4 instances
    parts = np.random.default_rng(2).choice(np.array([0, 1, 2, 3, 5], np.uint8), (60, 60))
    cihp.write_sample(
        tmp_path, "crowd", parts, image=np.zeros((60, 60, 3), np.uint8), human_ids=people
    )
    split = tmp_path / "Training"
    instance_map = np.asarray(Image.open(split / "Instance_ids" / "crowd.png"))
    instances = cihp.parse_instance_table((split / "Instance_ids" / "crowd.txt").read_text())
    assert [i.value for i in instances] == list(range(1, len(instances) + 1))
    both = (parts > 0) & (people > 0)
    assert [(i.person_id, i.class_id) for i in instances] == sorted(
        {(int(p), int(c)) for c, p in zip(parts[both], people[both], strict=True)}
    )
    for instance in instances:  # each value's pixels are exactly that class of that person
        where = instance_map == instance.value
        np.testing.assert_array_equal(
            where, (parts == instance.class_id) & (people == instance.person_id)
        )
    assert not ((instance_map > 0) ^ both).any()


def test_more_instances_than_8_bits_or_people_than_8_bits_are_refused_in_one_line(tmp_path):
    parts = np.tile(np.arange(1, 20, dtype=np.uint8), (14, 1))  # 19 classes per row
    people = np.repeat(np.arange(1, 15, dtype=np.uint8)[:, None], 19, axis=1)  # 14 people
    photo = np.zeros(parts.shape + (3,), np.uint8)
    with pytest.raises(cihp.DatasetError) as refused:  # 14 x 19 = 266 instances
        cihp.write_sample(tmp_path, "many", parts, image=photo, human_ids=people)
    message = str(refused.value)
    assert "sample many" in message and "266 part instances" in message and "\n" not in message
    with pytest.raises(cihp.DatasetError, match=r"sample big: human ids must lie in 0\.\.255 "):
        cihp.write_sample(
            tmp_path, "big", parts, image=photo, human_ids=people.astype(np.int32) + 250
        )
    assert not cihp.list_samples(tmp_path, "Training")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".png", ".txt")]
    # 13 people but few enough instances: written, numbered 1..N
    cihp.write_sample(
        tmp_path, "ok", parts[:13, :10], image=photo[:13, :10], human_ids=people[:13, :10]
    )
    assert cihp.read_sample(tmp_path, "ok").instance_ids.max() == 130


def test_part_instances_refuses_values_out_of_range():
    with pytest.raises(ValueError, match="parts must lie in 0..19"):
        cihp.part_instances(np.full((2, 2), 20), np.ones((2, 2), int))
    with pytest.raises(ValueError, match="people must lie in 0..255"):
        cihp.part_instances(np.ones((2, 2), int), np.full((2, 2), 256))
    instance_map, instances = cihp.part_instances(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert instances == [] and not instance_map.any()


def test_removing_a_sample_removes_its_instance_table(tmp_path):
    parts, people = _random_record(3, 3)
    cihp.write_sample(
        tmp_path, "r", parts, image=np.zeros(parts.shape + (3,), np.uint8), human_ids=people
    )
    removed = {
        p.relative_to(tmp_path / "Training").as_posix() for p in cihp.remove_sample(tmp_path, "r")
    }
    assert {"Instance_ids/r.png", "Instance_ids/r.txt", "Instances/r.png"} <= removed
    assert not list((tmp_path / "Training" / "Instance_ids").iterdir())


@pytest.mark.parametrize("sample_id", SAMPLE_IDS)
def test_the_real_samples_whole_records_round_trip_byte_for_byte(tmp_path, sample_id):
    official = cihp.read_sample(SAMPLES, sample_id, split=None)
    parts, people = official.category_ids, official.human_ids
    assert people is not None and int(people.max()) == {"0002190": 2, "0005008": 7}.get(
        sample_id, 3
    )
    # the stored instances are CIHP's numbering of exactly these parts x people
    both = (parts > 0) & (people > 0)
    expected = np.where(both, parts.astype(int) + 20 * (people.astype(int) - 1), 0)
    np.testing.assert_array_equal(official.instance_ids, expected)
    table = (SAMPLES / "Instance_ids" / f"{sample_id}.txt").read_text()
    assert table == _direct_table(parts, people)

    first, second = tmp_path / "first", tmp_path / "second"
    cihp.write_sample(first, sample_id, parts, image_path=official.image_path, human_ids=people)
    back = cihp.read_sample(first, sample_id)
    cihp.write_sample(
        second, sample_id, back.category_ids, image_path=back.image_path, human_ids=back.human_ids
    )
    written = _record_files(first / "Training", sample_id)
    assert written == _record_files(second / "Training", sample_id)
    assert written["Images"] == official.image_path.read_bytes()
    for folder in ("Human_ids", "Humans", "Instances", "Instance_ids"):  # as made in tests/data
        assert written[folder] == (SAMPLES / folder / f"{sample_id}.png").read_bytes()
    assert written["Instance_ids.txt"] == table.encode()


def test_an_overwrite_keeps_fitting_people_unless_told_the_sample_has_none(tmp_path):
    parts, people = _random_record(4, 3)
    photo = np.zeros(parts.shape + (3,), np.uint8)
    cihp.write_sample(tmp_path, "r", parts, image=photo, human_ids=people)
    new_parts = np.where(parts > 0, 7, 0).astype(np.uint8)
    cihp.write_sample(tmp_path, "r", new_parts, overwrite=True)  # people kept, instances anew
    sample = cihp.read_sample(tmp_path, "r")
    np.testing.assert_array_equal(sample.human_ids, people)
    np.testing.assert_array_equal(sample.instance_ids, cihp.part_instances(new_parts, people)[0])
    table = (tmp_path / "Training" / "Instance_ids" / "r.txt").read_text()
    assert table == _direct_table(new_parts, people)
    cihp.write_sample(tmp_path, "r", new_parts, overwrite=True, human_ids=cihp.NO_PEOPLE)
    sample = cihp.read_sample(tmp_path, "r")
    assert sample.human_ids is None and sample.instance_ids is None
    for folder in cihp.PEOPLE_FOLDERS:
        assert not list((tmp_path / "Training" / folder).glob("r.*")), folder
    np.testing.assert_array_equal(sample.category_ids, new_parts)
