import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from napari_deeplab.inference import model_input, segment, segment_stack, to_rgb, upsample_logits

pytestmark = pytest.mark.keras


def _smooth_logits(seed=0, size=64, classes=20):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size, size, classes)).astype(np.float32)
    return ndimage.gaussian_filter(noise, (3, 3, 0)) * 20


@pytest.mark.parametrize("shape", [(1, 1), (37, 50), (300, 200), (64, 64), (700, 333)])
def test_labels_are_the_argmax_of_bilinearly_upsampled_logits(shape):
    import tensorflow as tf

    logits = _smooth_logits()
    labels, confidence = upsample_logits(logits, shape)
    full = tf.image.resize(logits, shape, method="bilinear").numpy()
    assert labels.shape == confidence.shape == shape
    assert labels.dtype == np.uint8 and confidence.dtype == np.float32
    assert (labels == full.argmax(-1)).mean() > 0.9999  # float ties aside
    # confidence is interpolated from the model's grid: close to, not equal to, the exact value
    probabilities = tf.nn.softmax(full).numpy().max(-1)
    assert np.abs(confidence - probabilities).mean() < 0.03
    assert confidence.min() > 0 and confidence.max() <= 1


def test_upsampling_a_large_photo_stays_in_bounded_memory():
    logits = _smooth_logits(size=512)
    tracemalloc.start()
    labels, confidence = upsample_logits(logits, (3000, 4000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the 12-megapixel outputs take 60 MB; one 20-class float array of that size would be 960 MB
    assert peak < 120e6
    assert labels.shape == (3000, 4000)


@pytest.mark.parametrize(
    "image",
    [
        np.full((5, 7), 200, np.uint8),
        np.full((5, 7, 1), 200, np.uint8),
        np.dstack([np.full((5, 7), 200, np.uint8)] * 3 + [np.zeros((5, 7), np.uint8)]),
        np.full((5, 7, 3), 200 * 257, np.uint16),
        np.full((5, 7, 3), 200 / 255, np.float32),
        np.full((5, 7, 3), 200.0, np.float64),
    ],
)
def test_to_rgb_accepts_common_photo_forms(image):
    rgb = to_rgb(image)
    assert rgb.shape == (5, 7, 3)
    np.testing.assert_allclose(rgb, 200, atol=1e-3)


def test_to_rgb_rejects_what_is_not_a_photo():
    with pytest.raises(ValueError, match="H x W"):
        to_rgb(np.zeros((2, 5, 7, 3)))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(np.zeros((0, 7)))


def test_model_input_matches_the_seed_preprocessing(cihp_photo):
    import tensorflow as tf

    expected = tf.image.resize(cihp_photo, (512, 512)).numpy()
    np.testing.assert_allclose(model_input(cihp_photo, 512), expected, atol=1e-3)


def test_segment_a_real_photo_at_full_resolution(model, cihp_photo):
    import tensorflow as tf

    labels, confidence = segment(cihp_photo, model)
    assert labels.shape == confidence.shape == cihp_photo.shape[:2]
    assert labels.dtype == np.uint8 and labels.max() < 20
    x = tf.image.resize(cihp_photo, (512, 512)).numpy()[None]
    logits = model.predict_on_batch(x)[0]
    expected = tf.image.resize(logits, cihp_photo.shape[:2]).numpy().argmax(-1)
    assert (labels == expected).mean() > 0.999


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.random.default_rng(1).integers(0, 65535, (40, 30), dtype=np.uint16),
        np.random.default_rng(2).integers(0, 255, (30, 40, 4), dtype=np.uint8),
        np.random.default_rng(3).random((30, 40, 3)),
    ],
)
def test_segment_tiny_gray_rgba_and_16_bit(model, image):
    labels, confidence = segment(image, model)
    assert labels.shape == image.shape[:2]
    assert np.isfinite(confidence).all()


def test_stack_goes_through_in_batches_like_single_photos(model, cihp_photo):
    frames = np.stack([cihp_photo, cihp_photo[::-1], cihp_photo[:, ::-1]])
    results = list(segment_stack(frames, model, batch_size=2))
    assert [r.index for r in results] == [0, 1, 2]
    for frame, result in zip(frames, results, strict=True):
        labels, _ = segment(frame, model)
        assert (result.labels == labels).mean() > 0.999
    sizes = [np.zeros((20, 30, 3), np.uint8), np.zeros((50, 10), np.uint8)]
    assert [r.labels.shape for r in segment_stack(sizes, model)] == [(20, 30), (50, 10)]


def test_closing_the_generator_stops_reading_photos(model, cihp_photo):
    read = []

    def photos():
        for i in range(10):
            read.append(i)
            yield cihp_photo

    results = segment_stack(photos(), model, batch_size=2)
    next(results)
    results.close()  # what napari's Cancel and Ctrl+C do
    assert read == [0, 1]
