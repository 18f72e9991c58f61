"""The refinement operations on real CIHP masks, each against the mistake it is for."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import refine

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import refine as corruptions  # noqa: E402  the benchmark's corruptions and mean IoU

mean_iou = corruptions.mean_iou


@pytest.fixture(scope="module")
def samples(cihp_samples):
    out = []
    for path in sorted((cihp_samples / "Category_ids").glob("*.png")):
        photo = np.asarray(Image.open(cihp_samples / "Images" / f"{path.stem}.jpg"))
        out.append((np.asarray(Image.open(path)), photo))
    return out


def _won_back(samples, corrupt, fix, seed=0):
    rng = np.random.default_rng(seed)
    before, after = [], []
    for truth, photo in samples:
        bad = corrupt(truth, rng)
        before.append(mean_iou(bad, truth))
        after.append(mean_iou(fix(bad, photo), truth))
    before, after = np.mean(before), np.mean(after)
    return (after - before) / (1 - before)


def _clean_cost(samples, fix):
    return max(1 - mean_iou(fix(truth, photo), truth) for truth, photo in samples)


def test_remove_small_regions_undoes_speckle(samples):
    fix = lambda labels, photo: refine.remove_small_regions(labels, 40)  # noqa: E731
    assert _won_back(samples, corruptions.speckle, fix) > 0.9
    assert _clean_cost(samples, fix) < 0.02


def test_fill_holes_closes_holes(samples):
    fix = lambda labels, photo: refine.fill_holes(labels, 60)  # noqa: E731
    assert _won_back(samples, corruptions.holes, fix) > 0.8
    assert _clean_cost(samples, fix) < 0.02


def test_smooth_straightens_jagged_edges_and_keeps_thin_parts(samples):
    fix = lambda labels, photo: refine.smooth(labels, 1)  # noqa: E731
    assert _won_back(samples, corruptions.jagged, fix) > 0.3
    assert _clean_cost(samples, fix) < 0.02
    arm = np.zeros((40, 40), np.uint8)
    arm[:, 19:21] = 14  # a 2-pixel-wide arm survives
    assert (refine.smooth(arm, 1) == 14).sum() == (arm == 14).sum()


def test_snap_to_image_moves_boundaries_back_onto_edges(samples):
    fix = lambda labels, photo: refine.snap_to_image(labels, photo)  # noqa: E731
    assert _won_back(samples, corruptions.shifted, fix) > 0.1


def test_swap_left_right_inside_a_mask_is_exact(samples):
    rng = np.random.default_rng(0)
    for truth, _ in samples:
        bad, limb = corruptions.limb_swapped(truth, rng)
        np.testing.assert_array_equal(refine.swap_left_right(bad, mask=limb), truth)
    flipped = refine.swap_left_right(np.array([[14, 15, 16, 17, 18, 19, 5]], np.uint8))
    np.testing.assert_array_equal(flipped, [[15, 14, 17, 16, 19, 18, 5]])


def test_one_scribble_fixes_a_wrongly_labelled_region(samples):
    rng = np.random.default_rng(0)
    for truth, photo in samples:
        bad, scribble = corruptions.wrong_region(truth, rng)
        fixed = refine.refine_with_scribbles(bad, photo, scribble)
        assert mean_iou(fixed, truth) > mean_iou(bad, truth) + 0.05


def test_mask_limits_every_operation_and_dtype_is_kept():
    rng = np.random.default_rng(1)
    blocks = np.array([[0, 5, 14, 0], [2, 5, 13, 16], [0, 9, 9, 0]])
    labels = np.kron(blocks, np.ones((10, 10), int)).astype(np.uint16)
    labels[12, 12] = labels[7, 8] = 3  # specks: small regions, and holes in their blocks
    photo = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros(labels.shape, bool)
    mask[5:15, 5:20] = True
    scribbles = np.zeros(labels.shape, np.uint8)
    scribbles[8, 6:18] = 3
    operations = [
        lambda m: refine.remove_small_regions(labels, 5, mask=m),
        lambda m: refine.fill_holes(labels, mask=m),
        lambda m: refine.smooth(labels, 1, mask=m),
        lambda m: refine.snap_to_image(labels, photo, mask=m),
        lambda m: refine.swap_left_right(labels, mask=m),
        lambda m: refine.relabel(labels, 5, 7, mask=m),
        lambda m: refine.refine_with_scribbles(labels, photo, scribbles, mask=m),
    ]
    for operation in operations:
        out = operation(mask)
        assert out.dtype == labels.dtype and out.shape == labels.shape
        np.testing.assert_array_equal(out[~mask], labels[~mask])
        assert (operation(None) != labels).any()
    with pytest.raises(ValueError, match="mask shape"):
        refine.relabel(labels, 1, 2, mask=mask[:5])


def test_people_are_proposed_from_connected_person_regions():
    labels = np.zeros((40, 60), np.uint8)
    labels[5:35, 5:20] = 5  # a person
    labels[5:35, 30:55] = 13  # a larger one
    labels[2, 22] = 2  # a stray speck near the first
    people = refine.people_from_parts(labels, min_size=50)
    assert people.dtype == np.uint8
    assert set(np.unique(people)) == {0, 1, 2}
    assert (people[5:35, 30:55] == 1).all() and (people[5:35, 5:20] == 2).all()
    assert people[2, 22] == 2 and (people[labels == 0] == 0).all()
