"""The runner-up class map and relabelling with it, exactly, in numpy."""

import numpy as np
import pytest

from napari_deeplab.inference import _bilinear_taps, upsample_logits
from napari_deeplab.second_choice import relabel_with_runner_up, runner_up, upsample_runner_up


def upsampled_whole(logits: np.ndarray, shape) -> np.ndarray:
    """Every pixel's bilinear blend (H x W x C), as upsample_logits blends a pixel."""
    y_low, y_high, wy = _bilinear_taps(shape[0], logits.shape[0])
    x_low, x_high, wx = _bilinear_taps(shape[1], logits.shape[1])
    wy, wx = wy[:, None, None], wx[None, :, None]
    grid = (
        np.ix_(y_low, x_low),
        np.ix_(y_low, x_high),
        np.ix_(y_high, x_low),
        np.ix_(y_high, x_high),
    )
    blend = logits[grid[0]] * ((1 - wy) * (1 - wx))
    blend += logits[grid[1]] * ((1 - wy) * wx)
    blend += logits[grid[2]] * (wy * (1 - wx))
    blend += logits[grid[3]] * (wy * wx)
    return blend


def test_runner_up_is_the_second_largest():
    logits = np.array([[0.0, 5.0, 3.0, -1.0], [2.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 9.0]])
    assert runner_up(logits).tolist() == [2, 1, 0]  # a tie: argmax 0, runner-up 1
    assert runner_up(logits).dtype == np.uint8
    order = np.argsort(-np.random.default_rng(0).normal(size=(5, 6, 20)), axis=-1)
    assert np.array_equal(runner_up(-np.argsort(order, axis=-1).astype(np.float32)), order[..., 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        runner_up(np.zeros((3, 1)))


@pytest.mark.parametrize("shape", [(23, 31), (7, 9), (5, 4), (40, 13)])
def test_upsampled_runner_up_is_that_of_every_blend(shape):
    rng = np.random.default_rng(shape[0])
    # smooth logits (as a model's): many cells whose corners agree, so the shortcut is used
    logits = np.cumsum(rng.normal(size=(7, 9, 20)), axis=1).astype(np.float32)
    whole = upsampled_whole(logits, shape)
    second = upsample_runner_up(logits, shape)
    assert second.dtype == np.uint8 and second.shape == shape
    assert np.array_equal(second, runner_up(whole))
    labels, _ = upsample_logits(logits, shape)
    assert np.array_equal(labels, whole.argmax(axis=-1))
    assert not np.any(second == labels)


def test_relabel_takes_the_majority_runner_up_per_class():
    labels = np.array(
        [
            [0, 7, 7, 7, 0],
            [0, 7, 7, 7, 0],
            [0, 14, 14, 0, 0],
        ],
        np.uint8,
    )
    second = np.array(
        [
            [7, 5, 5, 0, 7],
            [7, 5, 6, 5, 7],
            [7, 15, 7, 14, 14],
        ],
        np.uint8,
    )
    coat = labels == 7
    relabelled = relabel_with_runner_up(labels, second, coat)
    expected = labels.copy()
    expected[coat] = 5  # 4 votes for upper-clothes, 1 for dress, 1 for background
    assert np.array_equal(relabelled, expected)
    assert np.array_equal(labels[0], [0, 7, 7, 7, 0])  # the input is not changed

    # a selection over several classes: each class by its own majority; a tie -> lowest id
    selection = np.zeros_like(coat)
    selection[1:, :3] = True
    relabelled = relabel_with_runner_up(labels, second, selection)
    expected = labels.copy()
    expected[1, 0] = expected[2, 0] = 7  # background -> coat (both runner-ups)
    expected[1, 1:3] = 5  # coat: one vote each for 5 and 6 -> 5
    expected[2, 1:3] = 7  # left arm: 15 and 7 tie -> 7
    assert np.array_equal(relabelled, expected)


def test_relabel_leaves_a_class_whose_only_runner_up_is_itself():
    labels = np.full((2, 2), 5, np.uint8)
    second = np.full((2, 2), 5, np.uint8)  # painted by hand: the model's runner-up was 5
    assert np.array_equal(relabel_with_runner_up(labels, second, np.ones((2, 2), bool)), labels)
    empty = relabel_with_runner_up(labels, np.zeros_like(labels), np.zeros((2, 2), bool))
    assert np.array_equal(empty, labels)
    with pytest.raises(ValueError, match="same shape"):
        relabel_with_runner_up(labels, second, np.ones((3, 2), bool))


@pytest.mark.keras
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_segment_stack_keeps_the_runner_up_of_what_it_labels(tta):
    """The model's runner-up comes with the labels, from the same (flip-averaged) logits."""
    from napari_deeplab.inference import segment_stack
    from tests.engine.test_tta import exact_input, flip_averaged, known_logits, known_model, photo

    model, kernel, bias = known_model()
    images = [photo(seed) for seed in (1, 2, 3)]
    results = list(segment_stack(images, model, batch_size=2, tta=tta, runner_up=True))
    for image, result in zip(images, results, strict=True):
        logits = (flip_averaged if tta == "flip" else known_logits)(
            exact_input(image), kernel, bias
        )
        assert np.array_equal(result.labels, upsample_logits(logits, image.shape[:2])[0])
        assert np.array_equal(result.runner_up, upsample_runner_up(logits, image.shape[:2]))
    assert next(segment_stack(images, model)).runner_up is None  # only when asked
