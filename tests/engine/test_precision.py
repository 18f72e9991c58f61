"""bfloat16 mixed precision (``--precision bfloat16``): logits and labels close to float32's,
training in it, and files that load as float32.

The session's model has random weights, so its logits lie close together: the top two differ
by about 0.12 at the median pixel (a trained model's by several units), and bfloat16 moves
logits by up to about 0.015. How many labels change then depends on the random draw (98.7%
to 99.99% of the pixels agreed over several draws), so the tests bound what bfloat16 may do:
the change of the logits relative to their spread, no changed label where float32 is decided
(top two logits more than 0.05 apart), and a loose floor on the agreement at full resolution.
"""

import keras
import numpy as np
import pytest
from PIL import Image

from napari_deeplab.inference import inference_model, model_input, segment
from napari_deeplab.model import load_model, model_precision, with_precision
from napari_deeplab.training import finetune, training_and_validation
from tests.conftest import SAMPLE_IDS

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def photos(cihp_samples) -> list[np.ndarray]:
    return [np.asarray(Image.open(cihp_samples / "Images" / f"{i}.jpg")) for i in SAMPLE_IDS]


@pytest.fixture(scope="module")
def bf16_model(model_file):
    return load_model(model_file, precision="bfloat16")


def test_bfloat16_computes_in_bfloat16_and_changes_only_undecided_labels(model, bf16_model, photos):
    assert model_precision(model) == "float32" and model_precision(bf16_model) == "bfloat16"
    assert bf16_model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in bf16_model.weights)  # mixed: variables stay float32
    x = np.stack([model_input(photo, 512) for photo in photos])
    exact = model.predict_on_batch(x)
    rounded = bf16_model.predict_on_batch(x)
    assert rounded.dtype == np.float32
    difference = np.abs(rounded - exact).max()
    assert 0 < difference < 0.1 * exact.std()  # measured: 0.015, 3.5% of the std
    top_two = np.sort(exact, axis=-1)[..., -2:]
    decided = top_two[..., 1] - top_two[..., 0] > 0.05
    assert decided.mean() > 0.5
    same = exact.argmax(-1) == rounded.argmax(-1)
    assert same[decided].mean() >= 0.999  # measured: 1.0
    assert with_precision(bf16_model, "bfloat16") is bf16_model
    assert model_precision(with_precision(bf16_model, "float32")) == "float32"


def test_bfloat16_labels_agree_with_float32_on_the_cihp_samples(model, bf16_model, photos):
    for sample_id, photo in zip(SAMPLE_IDS, photos, strict=True):
        exact, _ = segment(photo, model)
        rounded, _ = segment(photo, bf16_model)
        agreement = (exact == rounded).mean()
        assert agreement >= 0.9, f"{sample_id}: {agreement:.4f} of the pixels agree"
        assert len(np.unique(exact)) > 1
    assert model_precision(inference_model(bf16_model)) == "bfloat16"  # batch norm folded


def test_a_bfloat16_finetune_trains_and_saves_a_float32_file(model_file, cihp_samples, tmp_path):
    model = load_model(model_file, precision="bfloat16")
    before = [w.copy() for w in model.get_weights()]
    train, val = training_and_validation(cihp_samples, "Training", None)
    out = tmp_path / "tuned.keras"
    reports = list(finetune(model, train, val, out, epochs=1, batch_size=2, image_size=64))
    assert np.isfinite(reports[-1].loss)
    assert model_precision(model) == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    saved = keras.saving.load_model(out, compile=False)  # as anyone would load it
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert model_precision(load_model(out)) == "float32"
