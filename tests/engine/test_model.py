import shutil
import time

import keras
import numpy as np
import pytest

from napari_deeplab import DEFAULT_MODEL
from napari_deeplab.cihp import CLASS_NAMES
from napari_deeplab.model import (
    ModelError,
    build_model,
    cache_dir,
    convert_seed_checkpoint,
    fold_batch_norm,
    load_model,
    model_info,
    model_precision,
    with_precision,
)


@pytest.mark.keras
def test_architecture_has_the_seeds_parameter_count():
    model = build_model()
    assert model.count_params() == 11_857_236
    assert model_info(model).class_names == CLASS_NAMES


def test_same_weights_run_at_any_multiple_of_16(model):
    for height, width in ((256, 384), (512, 512), (96, 160)):
        logits = model.predict_on_batch(np.zeros((1, height, width, 3), np.float32))
        assert logits.shape == (1, height, width, 20)


def test_seed_conversion_reproduces_the_savedmodel_logits(model, seed_checkpoint, cihp_photo):
    """Compare with the SavedModel itself, run by Keras 2 as the seed's users ran it."""
    import tensorflow as tf

    from tests.seed_reference import load_seed_checkpoint

    seed = load_seed_checkpoint(seed_checkpoint)
    x = tf.image.resize(cihp_photo, (512, 512)).numpy()[None]
    expected = seed.predict(x / 127.5 - 1, verbose=0)
    ours = model.predict_on_batch(x)
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero outputs
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    # a mis-mapped weight shows: swapping two same-shaped ASPP branches changes the logits
    swapped = keras.models.clone_model(model)
    swapped.set_weights(model.get_weights())
    rate6, rate12 = swapped.get_layer("aspp_rate6_conv"), swapped.get_layer("aspp_rate12_conv")
    w6, w12 = rate6.get_weights(), rate12.get_weights()
    rate6.set_weights(w12)
    rate12.set_weights(w6)
    assert np.abs(swapped.predict_on_batch(x) - expected).max() > 1e-2


def test_conversion_is_cached_by_content(seed_checkpoint, model, tmp_path):
    cached = list((cache_dir() / "converted").glob("*.keras"))
    assert len(cached) == 1
    start = time.perf_counter()
    again = load_model(seed_checkpoint)
    assert time.perf_counter() - start < 30
    for a, b in zip(again.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # a copy of the same checkpoint elsewhere hits the same cache entry
    copy = shutil.copytree(seed_checkpoint, tmp_path / "copy")
    load_model(copy)
    assert list((cache_dir() / "converted").glob("*.keras")) == cached


def test_damaged_cache_entry_is_rebuilt(seed_checkpoint, model):
    (entry,) = (cache_dir() / "converted").glob("*.keras")
    entry.write_bytes(b"not a zip")
    reloaded = load_model(seed_checkpoint)
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])
    keras.saving.load_model(entry)  # rewritten whole


@pytest.mark.keras
def test_keras_file_round_trip_keeps_class_names(tmp_path):
    names = [f"part {i}" for i in range(5)]
    original = build_model(5, class_names=names, input_size=256)
    path = tmp_path / "ours.keras"
    original.save(path)
    loaded = load_model(path)
    assert model_info(loaded).class_names == tuple(names)
    assert model_info(loaded).input_size == 256
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), original.predict_on_batch(x), atol=1e-5)


def test_folded_batch_norm_computes_the_same_function(model, cihp_photo):
    import tensorflow as tf

    x = tf.image.resize(cihp_photo, (256, 256)).numpy()[None]
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-3)


@pytest.mark.keras
def test_offline_without_cache_names_the_model_option():
    with pytest.raises(ModelError, match=r"--model PATH") as error:
        load_model()
    assert DEFAULT_MODEL in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.keras
def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelError, match="not a model file"):
        load_model(tmp_path / "photo.jpg")


def test_truncated_checkpoint_gives_one_line(seed_checkpoint, tmp_path):
    broken = shutil.copytree(seed_checkpoint, tmp_path / "broken")
    data = next((broken / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(ModelError, match="truncated") as error:
        convert_seed_checkpoint(broken)
    assert "\n" not in str(error.value)
    (broken / "keras_metadata.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="keras_metadata.pb"):
        load_model(broken)


@pytest.mark.keras
def test_truncated_keras_file(tmp_path):
    path = tmp_path / "cut.keras"
    build_model(3).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        load_model(path)


@pytest.mark.keras
def test_precision_is_chosen_at_load_whatever_the_file_holds(tmp_path):
    path = tmp_path / "mixed.keras"
    with_precision(build_model(3), "bfloat16").save(path)  # plain Keras keeps the dtype policies
    assert (
        keras.saving.load_model(path).get_layer("conv1_conv").dtype_policy.name == "mixed_bfloat16"
    )
    assert model_precision(load_model(path)) == "float32"
    assert model_precision(load_model(path, precision="bfloat16")) == "bfloat16"
    with pytest.raises(ModelError, match="precision must be one of float32, bfloat16") as error:
        load_model(path, precision="float16")
    assert "\n" not in str(error.value)


@pytest.mark.keras
def test_a_model_of_another_class_count_is_refused_at_load(tmp_path):
    for classes in (5, 30):
        path = tmp_path / f"m{classes}.keras"
        build_model(classes).save(path)
        assert len(model_info(load_model(path)).class_names) == classes  # any, when not asked
        with pytest.raises(ModelError) as error:
            load_model(path, num_classes=len(CLASS_NAMES))
        message = str(error.value)
        assert str(path) in message and f"has {classes} classes" in message and "\n" not in message


@pytest.mark.keras
def test_a_truncated_keras_file_is_called_truncated_not_missing(tmp_path):
    path = tmp_path / "whole.keras"
    build_model(3).save(path)
    data = path.read_bytes()
    for share in (0.01, 0.5, 0.999):
        cut = tmp_path / f"cut{share}.keras"
        cut.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(ModelError) as error:
            load_model(cut)
        assert "truncated" in str(error.value) and "not found" not in str(error.value).lower()


@pytest.mark.one_backend
def test_an_unwritable_or_full_cache_is_one_line(seed_checkpoint, tmp_path, monkeypatch):
    from tests.engine.filesystems import small_filesystem

    with small_filesystem(tmp_path / "readonly", read_only=True) as readonly:
        monkeypatch.setenv("NAPARI_DEEPLAB_CACHE", str(readonly))
        with pytest.raises(ModelError) as error:
            load_model(seed_checkpoint)
        assert str(readonly / "converted") in str(error.value) and "NAPARI_DEEPLAB_CACHE" in str(
            error.value
        )
        assert "\n" not in str(error.value)
    with small_filesystem(tmp_path / "full") as full:  # the conversion's 48 MB do not fit
        monkeypatch.setenv("NAPARI_DEEPLAB_CACHE", str(full))
        with pytest.raises(ModelError, match="No space left on device"):
            load_model(seed_checkpoint)
        assert list((full / "converted").iterdir()) == []  # its scratch folder removed


@pytest.mark.one_backend
def test_scratch_folders_of_killed_conversions_are_swept(tmp_path):
    import os

    from napari_deeplab.model import remove_stale_conversions, scratch_prefix
    from tests.engine.filesystems import dead_pid

    mine = scratch_prefix()
    dead = tmp_path / (mine.replace(f"-{os.getpid()}-", f"-{dead_pid()}-") + "abc")
    live = tmp_path / (mine + "def")  # this process: alive
    old, recent = tmp_path / "tmpq1w2e3", tmp_path / "tmpr4t5y6"  # before writers were named
    for folder in (dead, live, old, recent):
        folder.mkdir()
        (folder / "deeplab.keras").write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    (tmp_path / "kept.keras").write_bytes(b"a cache entry")
    assert sorted(remove_stale_conversions(tmp_path)) == sorted([dead, old])
    assert live.exists() and recent.exists() and (tmp_path / "kept.keras").exists()
