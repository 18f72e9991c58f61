"""Re-parse a person: the crop, the resize to the model's input, the merge, edits kept."""

import numpy as np
import pytest

from napari_deeplab.reparse import (
    bounding_box,
    crop_box,
    crop_changes,
    merge_crop,
    others_mask,
    reparse_people,
)


def test_crop_box_is_a_square_with_the_margin_centred_on_the_person():
    mask = np.zeros((3000, 4000), bool)
    mask[1000:1150, 2000:2060] = True  # a person 150 px tall, 60 px wide
    rows, cols = crop_box(mask, mask.shape, margin=0.15)
    # 150 * 1.3 = 195 px on each side, centred on the person's box
    assert (rows.start, rows.stop) == (977, 1172)
    assert (cols.start, cols.stop) == (1932, 2127)
    assert crop_box((1000, 2000, 1150, 2060), mask.shape, 0.15) == (rows, cols)


def test_crop_box_moves_inside_the_photo_and_takes_the_whole_side_when_narrower():
    shape = (100, 400)
    rows, cols = crop_box((0, 390, 50, 400), shape, margin=0.5)  # 50 -> 100 px square
    assert (rows.start, rows.stop) == (0, 100)
    assert (cols.start, cols.stop) == (300, 400)  # pushed left to stay in the photo
    rows, cols = crop_box((10, 10, 90, 390), shape, margin=0.1)  # wider than the photo is tall
    assert (rows.start, rows.stop) == (0, 100)
    assert (cols.start, cols.stop) == (0, 400)
    rows, cols = crop_box((50, 50, 52, 52), shape, margin=0.1)  # tiny: at least 32 px
    assert rows.stop - rows.start == 32 and cols.stop - cols.start == 32


def test_crop_box_refuses_an_empty_person():
    with pytest.raises(ValueError, match="empty"):
        crop_box(np.zeros((10, 10), bool), (10, 10))
    with pytest.raises(ValueError, match="no pixel"):
        crop_box((20, 20, 30, 30), (10, 10))
    assert bounding_box(np.zeros((4, 4), bool)) is None


def test_merge_writes_the_crop_and_keeps_edits_and_other_people():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 10  # the plain run: one blob of class 10
    labels[0, 0] = 5  # another person's pixel, inside the crop
    box = (slice(0, 6), slice(0, 6))
    crop_labels = np.full((6, 6), 13, np.uint8)
    crop_labels[3:, :] = 9
    keep = np.zeros((8, 8), bool)
    keep[2, 2] = True  # a hand-edited pixel
    keep[0, 0] = True
    merged = merge_crop(labels, crop_labels, box, keep)
    expected = labels.copy()
    expected[:3, :6] = 13
    expected[3:6, :6] = 9
    expected[2, 2] = 10
    expected[0, 0] = 5
    np.testing.assert_array_equal(merged, expected)
    positions, values = crop_changes(labels, crop_labels, box, keep)
    assert len(values) == int((merged != labels).sum())  # only the pixels that change
    assert merged is not labels and labels[1, 1] == 0  # the input is left alone


def test_merge_refuses_labels_of_another_size():
    with pytest.raises(ValueError, match="shape"):
        crop_changes(np.zeros((8, 8), np.uint8), np.zeros((5, 6), np.uint8), (slice(0, 6),) * 2)


def test_reparse_people_sends_each_crop_and_merges_it_back():
    """Two people: the large one under the size limit is left alone; the small one is cropped
    exactly (``segment`` sees ``photo[crop]``) and its crop written over all but the other
    person's pixels and the hand edits."""
    photo = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    people = np.zeros((60, 80), np.uint8)
    labels[5:55, 5:30] = 5
    people[5:55, 5:30] = 1  # 1250 px
    labels[20:30, 40:46] = 2
    people[20:30, 40:46] = 2  # 60 px
    edits = np.zeros((60, 80), bool)
    edits[22, 42] = True
    seen = []

    def segment(crops):
        seen.extend(crops)
        return [np.where(crop[..., 0] > 127, 14, 15).astype(np.uint8) for crop in crops]

    merged, count = reparse_people(
        photo, labels, people, segment, min_pixels=50, margin=0.5, keep_mask=edits
    )
    assert count == 2
    small = crop_box(people == 2, labels.shape, 0.5)
    assert small == (slice(9, 41), slice(27, 59))  # 20 px, grown to the 32 px minimum
    np.testing.assert_array_equal(seen[1], photo[small])
    expected = labels.copy()
    big = crop_box(people == 1, labels.shape, 0.5)
    for box, person in ((big, 1), (small, 2)):
        keep = others_mask(people, person) | edits
        new = np.where(photo[box][..., 0] > 127, 14, 15)
        expected[box] = np.where(keep[box], expected[box], new)
    np.testing.assert_array_equal(merged, expected)
    assert merged[22, 42] == 2  # the edit kept
    merged, count = reparse_people(photo, labels, people, segment, min_pixels=100)
    assert count == 1  # only the large person


def test_reparse_runs_the_model_on_the_crop_at_its_input_size(model, cihp_photo):
    """The real path: the crop resized to the model's input (512 x 512) and its logits back to
    the crop's size, exactly as ``segment`` does for a whole photo of that size."""
    from napari_deeplab.inference import segment

    photo = cihp_photo
    box = crop_box((100, 200, 250, 260), photo.shape[:2])
    crop = photo[box]
    assert crop.shape[:2] == (195, 195)
    crop_labels, _ = segment(crop, model)
    assert crop_labels.shape == crop.shape[:2]
    labels = np.zeros(photo.shape[:2], np.uint8)
    merged = merge_crop(labels, crop_labels, box)
    np.testing.assert_array_equal(merged[box], crop_labels)
    assert not merged[: box[0].start].any() and not merged[box[0].stop :].any()


def test_predict_per_person_writes_every_person_reparsed(cihp_samples, model, model_file, tmp_path):
    """``predict --per-person N`` writes the plain run's labels with every proposed person of
    N pixels or more re-parsed on their crop (N: the second largest person's size, or the
    only one's; one photo, to keep the model calls few)."""
    import shutil

    from napari_deeplab import cihp
    from napari_deeplab.cli import EXIT_ERROR, EXIT_OK, main
    from napari_deeplab.inference import segment
    from napari_deeplab.people import propose_people
    from napari_deeplab.photos import read_photo
    from napari_deeplab.reparse import reparse_with_model
    from tests.engine.commands import predict_command

    photos = tmp_path / "photos"
    photos.mkdir()
    path = photos / "0005008.jpg"
    shutil.copy(cihp_samples / "Images" / path.name, path)
    photo = read_photo(path)
    plain, _ = segment(photo, model)
    sizes = np.sort(np.bincount(propose_people(plain).ravel())[1:])[::-1]
    min_pixels = int(sizes[min(1, len(sizes) - 1)])
    out = tmp_path / "dataset"
    command = predict_command(
        photos, model=model_file, out=out, options=["--per-person", str(min_pixels)]
    )
    assert main(command) == EXIT_OK
    expected, count = reparse_with_model(photo, plain, model, min_pixels)
    assert count == int((sizes >= min_pixels).sum()) >= 1
    np.testing.assert_array_equal(cihp.read_sample(out, path.stem).category_ids, expected)
    ray = predict_command(
        photos, model=model_file, out=out, options=["--per-person", "9", "--engine", "ray"]
    )
    assert main(ray) == EXIT_ERROR
