import json

import keras
import numpy as np
from PIL import Image

from napari_deeplab.cihp import CLASS_NAMES, read_id_list
from napari_deeplab.cli import main
from napari_deeplab.inference import forget_inference_model
from napari_deeplab.model import build_model, load_model, model_info
from napari_deeplab.training import (augment, evaluate, finetune, flip_left_right, locate_dataset,
                                     resize_labels, training_and_validation)
from tests.conftest import SAMPLE_IDS


def test_flip_matches_the_official_flipped_masks(cihp_samples):
    for sample_id in SAMPLE_IDS:
        labels = np.asarray(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        expected = np.asarray(Image.open(cihp_samples / "Category_ids_flipped" / f"{sample_id}.png"))
        photo = np.asarray(Image.open(cihp_samples / "Images" / f"{sample_id}.jpg"))
        flipped_photo, flipped = flip_left_right(photo, labels)
        np.testing.assert_array_equal(flipped, expected)
        np.testing.assert_array_equal(flipped_photo, photo[:, ::-1])


def test_masks_are_resized_without_blending_class_ids(cihp_samples):
    labels = np.asarray(Image.open(cihp_samples / "Category_ids" / "0005008.png"))
    small = resize_labels(labels, 64)
    assert small.shape == (64, 64) and set(np.unique(small)) <= set(np.unique(labels))
    x, y = augment(np.asarray(Image.open(cihp_samples / "Images" / "0005008.jpg")), labels, 96,
                   np.random.default_rng(0))
    assert x.shape == (96, 96, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert y.shape == (96, 96) and set(np.unique(y)) <= set(np.unique(labels)) | {14, 15, 16, 17, 18, 19}


def test_validation_is_held_out_when_there_is_no_split(cihp_samples):
    train, val = training_and_validation(cihp_samples, "Training", "Validation")
    assert len(val.ids) == 1 and len(train.ids) == 2 and not set(val.ids) & set(train.ids)


def test_finetuning_lowers_the_loss_raises_miou_and_the_model_predicts(cihp_samples, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model()
    everything = locate_dataset(cihp_samples, "Training")
    model_info(model).input_size = 128
    before = evaluate(model, everything)["miou"]
    train, val = training_and_validation(cihp_samples, "Training", None)
    out = tmp_path / "tuned.keras"
    reports = list(finetune(model, train, val, out, epochs=10, batch_size=2, image_size=128,
                            learning_rate=1e-3))
    losses = [r.loss for r in reports[1:]]
    assert np.mean(losses[-3:]) < losses[0]
    forget_inference_model(model)
    assert evaluate(model, everything)["miou"] > before
    assert reports[0].saved and out.exists()

    tuned = load_model(out)  # the best model by validation mean IoU
    assert model_info(tuned).class_names == CLASS_NAMES and model_info(tuned).input_size == 128
    best = max(r.val_miou for r in reports)
    assert abs(evaluate(tuned, val)["miou"] - best) < 1e-6
    predicted = tmp_path / "predicted"
    assert main(["predict", str(cihp_samples / "Images" / "0005008.jpg"), "--model", str(out),
                 "--out", str(predicted)]) == 0
    assert read_id_list(predicted, "Training") == ["0005008"]


def test_evaluate_command_prints_json(cihp_samples, tmp_path, capsys):
    path = tmp_path / "m.keras"
    build_model().save(path)
    assert main(["evaluate", str(cihp_samples), "--model", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"miou", "pixel_accuracy", "per_class"}
    assert set(result["per_class"]) == set(CLASS_NAMES)
    assert 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
