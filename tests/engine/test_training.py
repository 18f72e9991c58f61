import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from napari_deeplab.cihp import CLASS_NAMES, DatasetError, read_id_list
from napari_deeplab.cli import main
from napari_deeplab.inference import forget_inference_model, model_input
from napari_deeplab.model import build_model, load_model, model_info
from napari_deeplab.training import (
    AugmentedBatches,
    ResizedValidation,
    SampleCache,
    augment,
    confusion,
    evaluate,
    finetune,
    flip_left_right,
    locate_dataset,
    resize_labels,
    resize_photo,
    training_and_validation,
)
from tests.conftest import SAMPLE_IDS
from tests.engine.commands import quick_finetune_command, run_as_nobody

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.keras
def test_flip_matches_the_official_flipped_masks(cihp_samples):
    for sample_id in SAMPLE_IDS:
        labels = np.asarray(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        expected = np.asarray(
            Image.open(cihp_samples / "Category_ids_flipped" / f"{sample_id}.png")
        )
        photo = np.asarray(Image.open(cihp_samples / "Images" / f"{sample_id}.jpg"))
        flipped_photo, flipped = flip_left_right(photo, labels)
        np.testing.assert_array_equal(flipped, expected)
        np.testing.assert_array_equal(flipped_photo, photo[:, ::-1])


@pytest.mark.keras
def test_masks_are_resized_without_blending_class_ids(cihp_samples):
    labels = np.asarray(Image.open(cihp_samples / "Category_ids" / "0005008.png"))
    small = resize_labels(labels, 64)
    assert small.shape == (64, 64) and set(np.unique(small)) <= set(np.unique(labels))
    x, y = augment(
        np.asarray(Image.open(cihp_samples / "Images" / "0005008.jpg")),
        labels,
        96,
        np.random.default_rng(0),
    )
    assert x.shape == (96, 96, 3) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 255
    assert y.shape == (96, 96) and set(np.unique(y)) <= set(np.unique(labels)) | {
        14,
        15,
        16,
        17,
        18,
        19,
    }


@pytest.mark.keras
def test_the_opencv_resize_is_the_model_input(cihp_photo):
    for size in (96, 256, 700):  # down and up
        np.testing.assert_allclose(
            resize_photo(cihp_photo, size), model_input(cihp_photo, size), atol=1e-4
        )


def _batches(cache, pool, epochs=2, **options):
    augmented = AugmentedBatches(cache, 64, 2, pool, seed=7, **options)
    stream = augmented.batches()
    batches = [next(stream) for _ in range(epochs * augmented.steps_per_epoch)]
    stream.close()
    return batches


@pytest.mark.keras
def test_augmented_batches_are_the_same_for_any_number_of_threads_and_processes(cihp_samples):
    cache = SampleCache(locate_dataset(cihp_samples, "Training"), 86)
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(3) as three:
        serial, parallel = _batches(cache, one, epochs=3), _batches(cache, three, epochs=3)
        halves = [_batches(cache, three, epochs=3, shard=(p, 2)) for p in (0, 1)]
    assert (
        len(serial) == 3 and serial[0][0].shape == (2, 64, 64, 3) and serial[0][1].dtype == np.uint8
    )
    for (x, y), (px, py), first, second in zip(serial, parallel, *halves, strict=True):
        np.testing.assert_array_equal(x, px)
        np.testing.assert_array_equal(y, py)
        np.testing.assert_array_equal(x, np.concatenate([first[0], second[0]]))
        np.testing.assert_array_equal(y, np.concatenate([first[1], second[1]]))
    assert not np.array_equal(serial[0][0], serial[1][0])  # each epoch augments anew
    assert serial[0][0].min() >= 0 and serial[0][0].max() <= 255


@pytest.mark.keras
def test_samples_are_decoded_once_and_shrunk_in_memory_or_on_disk(cihp_samples, tmp_path):
    split = tmp_path / "d" / "Training"
    shutil.copytree(cihp_samples / "Images", split / "Images")
    shutil.copytree(cihp_samples / "Category_ids", split / "Category_ids")
    dataset = locate_dataset(split.parent, "Training")
    in_memory = SampleCache(dataset, 200)
    on_disk = SampleCache(dataset, 200, memory_budget=0, folder=tmp_path / "cache")
    assert in_memory.in_memory and not on_disk.in_memory
    for index, sample_id in enumerate(dataset.ids):
        photo = np.asarray(Image.open(split / "Images" / f"{sample_id}.jpg"))
        mask = np.asarray(Image.open(split / "Category_ids" / f"{sample_id}.png"))
        shape = tuple(min(side, 200) for side in mask.shape)
        cached = in_memory[index]
        assert cached.dtype == np.uint8 and cached.shape == (*shape, 4)
        assert np.abs(cached[..., :3] - resize_photo(photo, shape)).max() <= 0.5
        np.testing.assert_array_equal(cached[..., 3], resize_labels(mask, shape))
        np.testing.assert_array_equal(on_disk[index], cached)
        assert in_memory[index] is cached  # decoded once
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 3
    edited = split / "Category_ids" / f"{dataset.ids[0]}.png"
    mask = np.array(Image.open(edited))
    mask[:] = 3
    time.sleep(0.01)
    Image.fromarray(mask).save(edited)
    assert (on_disk[0][..., 3] == 3).all()  # the edited mask is read again...
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # ...its old file removed


@pytest.mark.keras
def test_validation_is_held_out_when_there_is_no_split(cihp_samples):
    train, val = training_and_validation(cihp_samples, "Training", "Validation")
    assert len(val.ids) == 1 and len(train.ids) == 2 and not set(val.ids) & set(train.ids)


@pytest.mark.keras
def test_finetuning_lowers_the_loss_raises_miou_and_the_model_predicts(cihp_samples, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model()
    everything = locate_dataset(cihp_samples, "Training")
    model_info(model).input_size = 128
    before = evaluate(model, everything)["miou"]
    train, val = training_and_validation(cihp_samples, "Training", None)
    out = tmp_path / "tuned.keras"
    reports = list(
        finetune(
            model,
            train,
            val,
            out,
            epochs=10,
            batch_size=2,
            image_size=128,
            learning_rate=1e-3,
            eval_every=4,
        )
    )
    losses = [r.loss for r in reports[1:]]
    assert np.mean(losses[-3:]) < losses[0]
    forget_inference_model(model)
    assert reports[0].saved and out.exists()
    # full resolution after epochs 4, 8 and the last; the last model's score
    assert [r.epoch for r in reports if r.full_resolution_miou is not None] == [4, 8, 10]
    assert abs(reports[-1].full_resolution_miou - evaluate(model, val)["miou"]) < 1e-6
    assert {r.val_size for r in reports} == {128}

    tuned = load_model(out)  # the best model by validation mean IoU at 128 px
    assert model_info(tuned).class_names == CLASS_NAMES and model_info(tuned).input_size == 128
    best = max(r.val_miou for r in reports)
    assert [r.epoch for r in reports if r.saved][-1] == [r.val_miou for r in reports].index(best)
    with ThreadPoolExecutor(2) as pool:
        rescored = ResizedValidation(tuned, SampleCache(val, 128), 128, 2, pool).miou()
    assert abs(rescored - best) < 1e-6 and best > reports[0].val_miou
    assert evaluate(tuned, everything)["miou"] > before
    predicted = tmp_path / "predicted"
    assert (
        main(
            [
                "predict",
                str(cihp_samples / "Images" / "0005008.jpg"),
                "--model",
                str(out),
                "--out",
                str(predicted),
            ]
        )
        == 0
    )
    assert read_id_list(predicted, "Training") == ["0005008"]


def test_evaluate_command_prints_json(cihp_samples, model_file, capsys):
    assert main(["evaluate", str(cihp_samples), "--model", str(model_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "miou",
        "miou_all_classes",
        "pixel_accuracy",
        "mean_class_accuracy",
        "per_class",
    }
    assert set(result["per_class"]) == set(CLASS_NAMES)
    assert 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1


def test_both_miou_conventions_and_class_accuracy_are_exact():
    from napari_deeplab.training.metrics import scores

    matrix = np.zeros((4, 4), np.int64)  # rows truth, columns prediction; class 3 absent
    matrix[0, 0], matrix[0, 1] = 6, 2
    matrix[1, 1], matrix[1, 2] = 3, 1
    matrix[2, 2] = 4
    result = scores(matrix, ["a", "b", "c", "d"])
    ious = [6 / 8, 3 / 6, 4 / 5]
    assert result["miou"] == pytest.approx(np.mean(ious))
    assert result["miou_all_classes"] == pytest.approx(sum(ious) / 4)
    assert result["mean_class_accuracy"] == pytest.approx((6 / 8 + 3 / 4 + 1) / 4)
    assert result["pixel_accuracy"] == pytest.approx(13 / 16)
    assert result["per_class"]["d"] is None


def _dataset_with_bad_samples(tmp_path, cihp_samples):
    """A Training split: 0002190 fine, 0005008's mask of another size, 0026375 with class 37
    (and 255, which is allowed), 'nomask' without a mask, 'nophoto' without a photo."""
    split = tmp_path / "bad" / "Training"
    shutil.copytree(cihp_samples / "Images", split / "Images")
    shutil.copytree(cihp_samples / "Category_ids", split / "Category_ids")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(split / "Category_ids" / "0005008.png")
    mask = np.array(Image.open(split / "Category_ids" / "0026375.png"))
    mask[:5], mask[5:10] = 37, 255
    Image.fromarray(mask).save(split / "Category_ids" / "0026375.png")
    shutil.copy(split / "Images" / "0002190.jpg", split / "Images" / "nomask.jpg")
    shutil.copy(split / "Category_ids" / "0002190.png", split / "Category_ids" / "nophoto.png")
    (split / "train_id.txt").write_text("0002190\n0005008\n0026375\nnomask\nnophoto\n")
    return split.parent


@pytest.mark.keras
def test_bad_samples_are_each_named_on_one_line_before_any_work(cihp_samples, tmp_path, capsys):
    root = _dataset_with_bad_samples(tmp_path, cihp_samples)
    never_loaded = str(tmp_path / "no-such-model.keras")  # the checks come before the model
    for args in (
        ["evaluate", str(root), "--split", "Training", "--model", never_loaded],
        ["finetune", str(root), "--model", never_loaded, "--out", str(tmp_path / "t.keras")],
    ):
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "".join(lines) and len(lines) == 5
        problems = dict(line.split(" (", 1)[0].rsplit(" ", 1)[::-1] for line in lines[:4])
        assert set(problems) == {"0005008", "0026375", "nomask", "nophoto"}
        assert "differs from photo" in lines[0] and "class 37 out of range 0..19" in lines[1]
        assert "255 = ignore" in lines[1] and "no mask" in lines[2] and "no photo" in lines[3]
        assert lines[4].startswith("napari-deeplab: error: 4 bad samples")
    assert not (tmp_path / "t.keras").exists()


@pytest.mark.keras
def test_255_is_left_out_of_the_score(cihp_samples, tmp_path):
    matrix = confusion(np.array([[1, 255], [2, 2]]), np.array([[1, 7], [2, 3]]), 20)
    assert matrix.sum() == 3 and matrix[1, 1] == matrix[2, 2] == matrix[2, 3] == 1


@pytest.mark.keras
def test_an_existing_out_is_refused_or_kept_until_a_better_model(cihp_samples, tmp_path, capsys):
    out = tmp_path / "tuned.keras"
    out.write_bytes(b"the previous good model")
    assert main(["finetune", str(cihp_samples), "--model", "unused", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0]
    train, val = training_and_validation(cihp_samples, "Training", None)
    model = build_model()
    with pytest.raises(DatasetError, match="exists"):
        next(finetune(model, train, val, out, epochs=1, image_size=64))
    reports = finetune(model, train, val, out, epochs=1, image_size=64, overwrite=True)
    start = next(reports)  # the start model is scored, never written over the existing file
    reports.close()
    assert not start.saved and out.read_bytes() == b"the previous good model"


KILLED_WHILE_SAVING = """
import sys
import numpy as np
from napari_deeplab.model import build_model
from napari_deeplab.training import finetune, training_and_validation
train, val = training_and_validation(sys.argv[1], "Training", None)
# The start model predicts glove (3), in no mask, everywhere: its mean IoU is 0, so the first
# epoch that gets any pixel right is saved, whatever the backend's training does.
start = build_model()
logits = start.get_layer("logits")
kernel, bias = logits.get_weights()
logits.set_weights([np.zeros_like(kernel), np.eye(len(bias), dtype=bias.dtype)[3] * 1e-3])
for report in finetune(start, train, val, sys.argv[2], epochs=3, batch_size=2,
                       image_size=64, learning_rate=1e-3):
    print(report.epoch, report.saved, report.loss, flush=True)
"""


@pytest.mark.keras
def test_training_ignores_255_and_a_kill_while_saving_leaves_the_previous_model(
    cihp_samples, tmp_path
):
    from napari_deeplab import files

    split = tmp_path / "d" / "Training"  # masks with a third of their rows unlabelled (255)
    shutil.copytree(cihp_samples / "Images", split / "Images")
    shutil.copytree(cihp_samples / "Category_ids", split / "Category_ids")
    for path in (split / "Category_ids").iterdir():
        mask = np.array(Image.open(path))
        mask[: mask.shape[0] // 3] = 255
        Image.fromarray(mask).save(path)
    out = tmp_path / "tuned.keras"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        files.CRASH_ENV: "2",
    }  # the second save: after its file is written, before the rename
    run = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, str(split.parent), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == files.CRASH_EXIT_CODE, run.stdout + run.stderr[-2000:]
    assert f"staged {out.name}" in run.stderr
    epochs = [line.split() for line in run.stdout.splitlines()]
    assert epochs[0][:2] == ["0", "True"] and all(np.isfinite(float(e[2])) for e in epochs[1:])
    assert model_info(load_model(out)).input_size == 64  # the first save, whole
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
    assert len(staged) == 1
    assert files.remove_stale_temporaries(tmp_path, out.name) == staged  # its writer is dead


# --- an existing --out is scored, bad photos and masks are named --------------------------------


def _constant_model(model, class_id: int, path: Path) -> Path:
    """``model`` (a real one) made to predict ``class_id`` everywhere, saved to ``path``."""
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights(
        [np.zeros_like(kernel), np.eye(len(bias), dtype=bias.dtype)[class_id] * 1e-3]
    )
    model.save(path)
    return path


@pytest.mark.one_backend
def test_overwrite_never_replaces_a_better_model_by_a_worse_one(cihp_samples, tmp_path, capsys):
    root = tmp_path / "d"
    _copy_split(cihp_samples, root)
    val = root / "Validation"  # all background: a model that says so scores 1, one saying glove 0
    shutil.copytree(cihp_samples / "Images", val / "Images")
    (val / "Category_ids").mkdir()
    for photo in (val / "Images").iterdir():
        size = Image.open(photo).size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(
            val / "Category_ids" / f"{photo.stem}.png"
        )
    (val / "val_id.txt").write_text(
        "".join(f"{p.stem}\n" for p in sorted((val / "Images").iterdir()))
    )
    model = build_model()  # its logits decide alone: one model makes both files
    start = _constant_model(model, 3, tmp_path / "start.keras")  # glove everywhere: mean IoU 0
    out = _constant_model(model, 0, tmp_path / "tuned.keras")  # background everywhere: 1
    better = out.read_bytes()
    common = [
        "finetune",
        str(root),
        "--model",
        str(start),
        "--out",
        str(out),
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--learning-rate",
        "1e-3",
        "--epochs",
        "1",
        "--overwrite",
    ]
    assert main(common) == 0
    lines = capsys.readouterr().out.splitlines()
    exists = next(line for line in lines if line.startswith(f"{out} exists"))
    out_miou, start_miou = [
        float(word.rstrip(",")) for word in exists.split() if word[:2] in ("0.", "1.")
    ][:2]
    new_miou = float(lines[-2].split("validation mean IoU ")[1].split()[0])  # epoch 1
    assert start_miou == 0 and out_miou == 1 and start_miou < new_miou <= out_miou
    assert out.read_bytes() == better  # before: replaced, as the new model beats the start
    assert lines[-1].startswith(f"no new model beat {out}") and f"{new_miou:.4f}" in lines[-1]
    assert main([*common, "--replace-better"]) == 0
    replaced = capsys.readouterr().out.splitlines()
    assert "(--replace-better)" in next(
        line for line in replaced if line.startswith(f"{out} exists")
    )
    assert out.read_bytes() != better and replaced[-1].startswith(f"saved {out}")
    print("\n" + "\n".join(lines + replaced))


def _copy_split(cihp_samples, root: Path) -> Path:
    split = root / "Training"
    shutil.copytree(cihp_samples / "Images", split / "Images")
    shutil.copytree(cihp_samples / "Category_ids", split / "Category_ids")
    (split / "train_id.txt").write_text("0002190\n0005008\n0026375\n")
    return split


@pytest.mark.one_backend
def test_photos_that_cannot_be_decoded_are_named_in_evaluate_and_finetune(
    cihp_samples, tmp_path, model_file, capsys
):
    split = _copy_split(cihp_samples, tmp_path / "d")
    whole = (split / "Images" / "0005008.jpg").read_bytes()
    (split / "Images" / "0005008.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    grey = np.asarray(Image.open(split / "Images" / "0026375.jpg").convert("L"))
    (split / "Images" / "0026375.jpg").unlink()
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)])).save(
        split / "Images" / "0026375.png"
    )
    model = model_file
    for args in _evaluate_and_finetune(split, model, tmp_path / "t.keras"):
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert "Traceback" not in err and len(lines) == 2, err
        assert lines[0].startswith("napari-deeplab: sample 0005008 (") and "truncated" in lines[0]
        assert lines[1].startswith("napari-deeplab: error: 1 bad sample in ")
    assert not (tmp_path / "t.keras").exists()
    (split / "Images" / "0005008.jpg").write_bytes(whole)  # the LA photo alone: it is a photo
    assert main(["evaluate", str(split.parent), "--split", "Training", "--model", str(model)]) == 0
    assert "(3 samples)" in capsys.readouterr().out


def _evaluate_and_finetune(split: Path, model: Path, out: Path) -> list[list[str]]:
    """The command lines of ``evaluate`` and of a 1-epoch ``finetune`` (64 px) on ``split``."""
    return [
        ["evaluate", str(split.parent), "--split", "Training", "--model", str(model)],
        quick_finetune_command(split.parent, model, out),
    ]


@pytest.mark.one_backend
def test_masks_without_labelled_pixels_are_not_scored_zero(
    cihp_samples, tmp_path, model_file, capsys
):
    split = _copy_split(cihp_samples, tmp_path / "d")
    for path in (split / "Category_ids").iterdir():
        Image.fromarray(np.full_like(np.asarray(Image.open(path)), 255)).save(path)
    model = model_file
    for args in _evaluate_and_finetune(split, model, tmp_path / "t.keras"):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no labelled pixels" in err[0] and "255" in err[0], err
    assert not (tmp_path / "t.keras").exists()


@pytest.mark.one_backend
def test_an_id_listed_twice_is_scored_once_and_named(cihp_samples, tmp_path, model_file, capsys):
    split = _copy_split(cihp_samples, tmp_path / "d")
    model = model_file
    args = ["evaluate", str(split.parent), "--split", "Training", "--model", str(model), "--json"]
    assert main(args) == 0
    once = json.loads(capsys.readouterr().out)
    (split / "train_id.txt").write_text("0002190\n0005008\n0002190\n0026375\n0005008\n")
    assert locate_dataset(split.parent, "Training").ids == ["0002190", "0005008", "0026375"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == once
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and "0002190, 0005008" in note[0] and "used once" in note[0]


NOBODY_READS_THE_ID_LIST = """
import sys
sys.path.insert(0, sys.argv[2])
from napari_deeplab.cihp import DatasetError
from napari_deeplab.training import locate_dataset
try:
    locate_dataset(sys.argv[1], "Training")
except DatasetError as error:
    print(error)
"""


@pytest.mark.one_backend
def test_an_id_list_that_is_a_folder_or_unreadable_is_one_line(cihp_samples, tmp_path, capsys):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="napari-deeplab-ids-", dir="/tmp"))
    try:
        split = _copy_split(cihp_samples, root)
        (split / "train_id.txt").unlink()
        (split / "train_id.txt").mkdir()
        assert main(["evaluate", str(root), "--split", "Training", "--model", "unused"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "train_id.txt" in err[0] and "readable text file" in err[0], err
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            return  # root reads any file: the unreadable case needs another user
        (split / "train_id.txt").rmdir()
        (split / "train_id.txt").write_text("0002190\n")
        (split / "train_id.txt").chmod(0o600)
        for folder in (root, split):
            folder.chmod(0o777)  # the split's lock file may be made by anyone
        run = run_as_nobody(
            NOBODY_READS_THE_ID_LIST,
            root,
            REPO / "src",
            timeout=120,
            cwd="/",
            env={**os.environ, "HOME": "/tmp", "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "train_id.txt" in run.stdout and "Permission denied" in run.stdout, run.stdout
    finally:
        shutil.rmtree(root)
