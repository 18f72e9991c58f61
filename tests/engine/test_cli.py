import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_deeplab.cihp import PALETTE, read_id_list
from napari_deeplab.cli import main
from napari_deeplab.photos import read_photo
from tests.conftest import SAMPLE_IDS
from tests.engine.commands import predict_command, quick_finetune_command


@pytest.fixture
def photos(tmp_path, cihp_samples):
    """The real CIHP photos plus a corrupt file, a grayscale PNG, a 16-bit TIFF, RGBA, a 1x1 and
    a decompression bomb."""
    folder = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", folder)
    (folder / "corrupt.jpg").write_bytes((folder / "0002190.jpg").read_bytes()[:200])
    rgb = np.asarray(Image.open(folder / "0026375.jpg"))
    Image.fromarray(rgb.mean(-1).astype(np.uint8)).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(
        folder / "rgba.png"
    )
    import tifffile

    tifffile.imwrite(folder / "deep.tif", rgb[..., 0].astype(np.uint16) * 257)
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(folder / "tiny.png")
    from tests.engine.test_photos import _png_header_only

    _png_header_only(folder / "bomb.png", 40_000, 40_000)  # 1.6 gigapixels in a few bytes
    return folder


@pytest.mark.one_backend
def test_predict_writes_the_cihp_layout_and_reports_bad_files(
    photos, seed_checkpoint, tmp_path, capsys
):
    out = tmp_path / "prelabels"
    code = main(
        predict_command(
            photos, model=seed_checkpoint, out=out, options=["--batch-size", "3", "--workers", "3"]
        )
    )
    assert code == 1  # the corrupt file
    err = capsys.readouterr().err
    assert "corrupt.jpg: failed: cannot read this file as an image" in err
    bomb = [line for line in err.splitlines() if "bomb.png: failed" in line]
    assert len(bomb) == 1 and "40000 x 40000 pixels is over the limit of 178,956,970" in bomb[0]
    assert "NAPARI_DEEPLAB_MAX_PIXELS" in bomb[0]
    assert "Traceback" not in err
    written = sorted(SAMPLE_IDS + ("deep", "gray", "rgba", "tiny"))
    assert read_id_list(out, "Training") == written
    train = out / "Training"
    for sample_id in written:
        source = next(photos.glob(f"{sample_id}.*"))
        if source.suffix == ".tif":  # Images/ holds JPEG or PNG: a TIFF is stored as its PNG
            stored = train / "Images" / f"{sample_id}.png"
            np.testing.assert_array_equal(read_photo(stored), read_photo(source))
        else:
            copied = train / "Images" / source.name
            assert copied.read_bytes() == source.read_bytes()
        mask = Image.open(train / "Category_ids" / f"{sample_id}.png")
        assert mask.mode == "L" and mask.size == Image.open(source).size
        ids = np.asarray(mask)
        assert ids.max() < 20
        np.testing.assert_array_equal(
            np.asarray(Image.open(train / "Categories" / f"{sample_id}.png")), PALETTE[ids]
        )
    assert not list(out.rglob("*.tmp"))


@pytest.mark.one_backend
def test_existing_outputs_are_kept_unless_overwrite(cihp_samples, seed_checkpoint, tmp_path):
    out = tmp_path / "out"
    photo = cihp_samples / "Images" / "0002190.jpg"
    args = predict_command(photo, model=seed_checkpoint, out=out)
    assert main(args) == 0
    mask = out / "Training" / "Category_ids" / "0002190.png"
    mask.write_bytes(b"hand-corrected")
    assert main(args) == 0
    assert mask.read_bytes() == b"hand-corrected"
    assert main(args + ["--overwrite"]) == 0
    assert np.asarray(Image.open(mask)).shape == (200, 300)


@pytest.mark.one_backend
def test_validation_split_and_globs(cihp_samples, seed_checkpoint, tmp_path):
    out = tmp_path / "out"
    pattern = str(cihp_samples / "Images" / "00*.jpg")
    assert (
        main(
            predict_command(
                pattern, model=seed_checkpoint, out=out, options=["--split", "Validation"]
            )
        )
        == 0
    )
    assert (out / "Validation" / "val_id.txt").read_text().split() == list(SAMPLE_IDS)


def test_same_stem_twice_is_an_error_before_writing(
    cihp_samples, seed_checkpoint, tmp_path, capsys
):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(cihp_samples / "Images" / "0002190.jpg", other / "0002190.png")
    out = tmp_path / "out"
    code = main(predict_command(cihp_samples / "Images", other, model=seed_checkpoint, out=out))
    assert code == 2
    assert "two inputs have the id '0002190'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.one_backend
def test_missing_inputs_are_reported_and_the_rest_goes_on(
    cihp_samples, seed_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    missing, photo = tmp_path / "nope.jpg", cihp_samples / "Images" / "0002190.jpg"
    code = main(predict_command(missing, photo, model=seed_checkpoint, out=out))
    assert code == 1
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    assert read_id_list(out, "Training") == ["0002190"]


@pytest.mark.one_backend
def test_console_script_offline_without_model_says_to_use_model_path(cihp_samples, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    script = shutil.which("napari-deeplab", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [script, "predict", str(cihp_samples / "Images"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model PATH" in lines[0]
    assert not (tmp_path / "o").exists()


def test_convert_writes_a_keras_file_that_predict_uses(seed_checkpoint, cihp_samples, tmp_path):
    model_file = tmp_path / "seed.keras"
    assert main(["convert", str(seed_checkpoint), "--out", str(model_file)]) == 0
    out = tmp_path / "out"
    assert (
        main(predict_command(cihp_samples / "Images" / "0005008.jpg", model=model_file, out=out))
        == 0
    )
    assert read_id_list(out, "Training") == ["0005008"]


@pytest.mark.one_backend
def test_a_model_of_another_class_count_is_refused_with_one_line(cihp_samples, tmp_path, capsys):
    from napari_deeplab.model import build_model

    for classes in (5, 30):
        path = tmp_path / f"m{classes}.keras"
        build_model(classes).save(path)
        out = tmp_path / f"out{classes}"
        for args in (
            ["predict", str(cihp_samples / "Images"), "--out", str(out)],
            ["evaluate", str(cihp_samples)],
        ):
            assert main([*args, "--model", str(path)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(path) in err[0] and f"{classes} classes" in err[0], err
        assert not out.exists()


@pytest.mark.one_backend
def test_convert_on_a_full_disk_is_one_line_and_sweeps_killed_temporaries(tmp_path, capsys):
    from napari_deeplab.files import temporary_path
    from napari_deeplab.model import build_model
    from tests.engine.filesystems import dead_pid, small_filesystem

    source = tmp_path / "source.keras"
    build_model(input_size=64).save(source)
    out = tmp_path / "converted.keras"
    killed = temporary_path(out)  # what a convert killed while writing leaves
    killed = killed.with_name(killed.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    killed.write_bytes(b"x" * 1000)
    assert main(["convert", str(source), "--out", str(out)]) == 0
    assert not killed.exists() and out.exists()
    with small_filesystem(tmp_path / "full") as full:
        assert main(["convert", str(source), "--out", str(full / "m.keras")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and "m.keras" in err[0], err
        assert list(full.iterdir()) == []  # the temporary removed


@pytest.mark.one_backend
def test_finetune_on_a_full_disk_is_one_line(cihp_samples, model_file, tmp_path, capsys):
    from tests.engine.filesystems import small_filesystem

    source = model_file  # the session's model: only read
    with small_filesystem(tmp_path / "full") as full:
        out = full / "tuned.keras"
        assert main(quick_finetune_command(cihp_samples, source, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0], err
        assert "as it was" in err[0] and list(full.iterdir()) == []


@pytest.mark.one_backend
def test_ctrl_c_while_the_command_starts_exits_130_with_one_line(cihp_samples, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    interrupted = 0
    for delay in (0.5, 3.0):  # importing Python, then TensorFlow
        process = (
            subprocess.Popen(  # SIGINT as a terminal delivers it (a background job ignores it)
                [
                    sys.executable,
                    "-m",
                    "napari_deeplab.cli",
                    "predict",
                    str(cihp_samples / "Images"),
                    "--out",
                    str(tmp_path / "o"),
                    "--model",
                    "no-such.keras",
                ],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=120)[1]
        if process.returncode == 2 and "no such file" in err:
            continue  # it got through its start-up before the signal (a fast machine)
        assert process.returncode == 130, (process.returncode, err[-2000:])  # was -2, a traceback
        lines = [line for line in err.strip().splitlines() if line.startswith("napari-deeplab")]
        assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[0], err
        interrupted += 1
    assert interrupted
