"""Flip test-time augmentation (``--tta flip``), exactly, on a model whose logits are known.

The known model is one 3 x 3 convolution (zero padding) of the model input, with a kernel and
bias in multiples of 1/8; the inputs used are multiples of 1/4 (photos whose resizing to the
model's side takes exact means), so every logit is exact in float32 whatever the order of the
sums, and numpy computes the very same values."""

import numpy as np
import pytest

from napari_deeplab.cihp import CLASS_NAMES, LEFT_RIGHT_SWAP, NUM_CLASSES
from napari_deeplab.inference import (
    batch_outputs,
    checked_tta,
    model_input,
    segment,
    segment_stack,
    upsample_logits,
)

pytestmark = pytest.mark.keras

SIDE = 8
"""The known model's input side."""


def known_model(num_classes: int = NUM_CLASSES, seed: int = 0):
    """(model, kernel 3 x 3 x 3 x C, bias C): logits = conv(input, kernel) + bias."""
    import keras

    from napari_deeplab.model.architecture import ModelInfo

    rng = np.random.default_rng(seed)
    kernel = rng.integers(-32, 33, (3, 3, 3, num_classes)) / 8
    bias = rng.integers(-256, 257, num_classes) / 8
    names = CLASS_NAMES if num_classes == NUM_CLASSES else [f"c{i}" for i in range(num_classes)]
    rgb = keras.Input(shape=(None, None, 3), name="rgb")
    conv = keras.layers.Conv2D(num_classes, 3, padding="same", name="logits")
    logits = ModelInfo(names, SIDE, name="model_info")(conv(rgb))
    model = keras.Model(rgb, logits, name="known")
    conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model, kernel, bias


def known_logits(inputs: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The known model in numpy: S x S x 3 -> S x S x C float32 (exact: see the module doc)."""
    height, width = inputs.shape[:2]
    padded = np.pad(inputs.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    out = np.broadcast_to(bias, (height, width, bias.size)).copy()
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + height, dx : dx + width] @ kernel[dy, dx]
    return out.astype(np.float32)


def flip_averaged(inputs, kernel, bias) -> np.ndarray:
    """What ``--tta flip`` must give, in numpy: the mean of the logits of the input and those
    of its mirror, un-mirrored with left/right channels swapped back."""
    plain = known_logits(inputs, kernel, bias)
    mirrored = known_logits(inputs[:, ::-1], kernel, bias)[:, ::-1][
        ..., LEFT_RIGHT_SWAP[:NUM_CLASSES]
    ]
    return (plain + mirrored) * np.float32(0.5)


def top_probability(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return (1 / exp.sum(axis=-1)).astype(np.float32)


@pytest.fixture(scope="module")
def known():
    return known_model()


def photo(seed: int, shape=(16, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def exact_input(image: np.ndarray) -> np.ndarray:
    inputs = model_input(image, SIDE)
    assert np.array_equal(inputs * 4, np.round(inputs * 4)), "the test needs exact inputs"
    return inputs


def test_plain_logits_are_the_known_function(known):
    model, kernel, bias = known
    inputs = exact_input(photo(1))
    ((logits, labels, _),) = batch_outputs(model, inputs[None])
    assert np.array_equal(logits, known_logits(inputs, kernel, bias))
    assert np.array_equal(labels, logits.argmax(axis=-1))


def test_flip_averages_the_mirrored_logits_on_the_grid(known):
    model, kernel, bias = known
    inputs = np.stack([exact_input(photo(seed)) for seed in (1, 2, 3)])
    outputs = batch_outputs(model, inputs, tta="flip")
    assert len(outputs) == 3  # the mirrored inputs join the batch, not the answer
    for item, (logits, labels, confidence) in zip(inputs, outputs, strict=True):
        expected = flip_averaged(item, kernel, bias)
        assert np.array_equal(logits, expected)
        assert np.array_equal(labels, expected.argmax(axis=-1))
        np.testing.assert_allclose(confidence, top_probability(expected), rtol=1e-5)
        # the averaging changes the answer (or this test could not fail)
        assert not np.array_equal(labels, known_logits(item, kernel, bias).argmax(axis=-1))


def test_flip_labels_and_confidence_at_full_size(known):
    model, kernel, bias = known
    images = [photo(seed) for seed in (4, 5, 6)]
    results = list(segment_stack(images, model, batch_size=2, tta="flip"))
    for image, result in zip(images, results, strict=True):
        expected = flip_averaged(exact_input(image), kernel, bias)
        labels, confidence = upsample_logits(expected, image.shape[:2])  # averaged first
        assert np.array_equal(result.labels, labels)
        np.testing.assert_allclose(result.confidence, confidence, rtol=1e-5, atol=1e-6)
    plain = segment(images[0], model)[0]
    assert not np.array_equal(plain, results[0].labels)


def test_flip_is_mirror_consistent(known):
    """The flip-averaged labels of a mirrored photo are the mirror of the photo's, left and
    right swapped; the plain model's (asymmetric kernel) are not."""
    model, *_ = known
    image = photo(7, shape=(16, 16))  # exact resizing both ways: no rounding breaks symmetry
    labels = segment(image, model, tta="flip")[0]
    mirrored = segment(image[:, ::-1], model, tta="flip")[0]
    assert np.array_equal(mirrored, LEFT_RIGHT_SWAP[labels][:, ::-1])
    plain, plain_mirrored = segment(image, model)[0], segment(image[:, ::-1], model)[0]
    assert not np.array_equal(plain_mirrored, LEFT_RIGHT_SWAP[plain][:, ::-1])


def test_flip_on_the_deeplab_stand_in(model):
    """The real architecture runs with flip averaging: same shapes, a different answer."""
    image = photo(8, shape=(40, 30))
    labels, confidence = segment(image, model, tta="flip")
    assert labels.shape == confidence.shape == (40, 30) and labels.dtype == np.uint8
    assert np.all((confidence > 0) & (confidence <= 1))


def test_refusals():
    assert checked_tta("none") is None and checked_tta(None) is None
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rotate'"):
        checked_tta("rotate")
    other, *_ = known_model(num_classes=5)
    with pytest.raises(ValueError, match="needs the 20 CIHP classes"):
        segment(photo(9), other, tta="flip")


@pytest.mark.one_backend
def test_predict_and_evaluate_with_tta_flip(known, tmp_path, capsys):
    """``predict --tta flip`` writes the flip-averaged labels; ``evaluate --tta flip`` of them
    scores 1.0, plain ``evaluate`` less; with ``--engine ray`` it is refused in one line."""
    import json

    from PIL import Image

    from napari_deeplab.cihp import read_sample
    from napari_deeplab.cli import main
    from napari_deeplab.model import save_model

    model, *_ = known
    model_path = tmp_path / "known.keras"
    save_model(model, model_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    images = {f"p{seed}": photo(seed) for seed in (1, 2, 3)}
    for name, image in images.items():
        Image.fromarray(image).save(photos / f"{name}.png")
    out = tmp_path / "out"
    predict = ["predict", str(photos), "--out", str(out), "--model", str(model_path)]
    assert main([*predict, "--split", "Validation", "--tta", "flip", "--workers", "2"]) == 0
    for name, image in images.items():
        written = read_sample(out, name, "Validation").category_ids
        assert np.array_equal(written, segment(image, model, tta="flip")[0])
    capsys.readouterr()
    evaluate = ["evaluate", str(out), "--model", str(model_path), "--json"]
    assert main([*evaluate, "--tta", "flip"]) == 0
    assert json.loads(capsys.readouterr().out)["pixel_accuracy"] == 1.0
    assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out)["pixel_accuracy"] < 0.9

    assert main([*predict, "--tta", "flip", "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["napari-deeplab: error: --tta needs --engine local"], err
