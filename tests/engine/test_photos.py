"""Large photos and decompression bombs: refused with a message naming the limit, and the
memory of pre-labelling a large photo stays within the bound the README states."""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp, photos
from napari_deeplab.photos import read_photo
from tests.engine.commands import run_as_nobody

REPO = Path(__file__).resolve().parents[2]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` greyscale pixels in a few bytes (a bomb)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.keras
def test_a_decompression_bomb_is_refused_naming_the_limit(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 40_000, 40_000)
    for read in (read_photo, photos.open_image):
        with pytest.raises(photos.PhotoTooLargeError) as error:
            read(bomb)
        message = str(error.value)
        assert str(bomb) in message and f"{photos.DEFAULT_MAX_PIXELS:,}" in message
        assert photos.MAX_PIXELS_ENV in message and "\n" not in message


@pytest.mark.keras
def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch, cihp_samples):
    photo = cihp_samples / "Images" / "0002190.jpg"  # 300 x 200
    monkeypatch.setenv(photos.MAX_PIXELS_ENV, "59999")
    with pytest.raises(
        photos.PhotoTooLargeError, match="300 x 200 pixels is over the limit of 59,999"
    ):
        read_photo(photo)
    with pytest.raises(photos.PhotoTooLargeError, match="0002190.jpg"):
        cihp.read_sample(cihp_samples, "0002190", None)
    monkeypatch.setenv(photos.MAX_PIXELS_ENV, "60000")
    assert read_photo(photo).shape == (200, 300, 3)
    monkeypatch.setenv(photos.MAX_PIXELS_ENV, "many")
    with pytest.raises(cihp.DatasetError, match=photos.MAX_PIXELS_ENV):
        read_photo(photo)


@pytest.mark.keras
def test_a_raised_limit_also_lifts_pillows_own(tmp_path, monkeypatch, cihp_samples):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would call 60,000 pixels a bomb
    photo = cihp_samples / "Images" / "0002190.jpg"
    assert read_photo(photo).shape == (200, 300, 3)
    assert cihp.read_sample(cihp_samples, "0002190", None).image.shape == (200, 300, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


MEASURE = """
import os, sys, threading, time
from pathlib import Path
import numpy as np
from napari_deeplab.model import build_model
from napari_deeplab.inference import segment
from napari_deeplab.prelabel import prelabel_files

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

model = build_model()
segment(np.zeros((600, 800, 3), np.uint8), model)  # the model's own memory, warmed up
before, peak, done = resident(), [0], threading.Event()

def sample():  # the peak of resident memory while the photo is pre-labelled
    while not done.is_set():
        peak[0] = max(peak[0], resident())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
outcomes = list(prelabel_files([Path(sys.argv[1])], model, sys.argv[2]))
done.set()
sampler.join()
assert [o.status for o in outcomes] == ["written"], outcomes
print(peak[0] - before)
"""


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="measures memory with /proc (Linux)"
)
@pytest.mark.keras
def test_prelabelling_a_large_photo_stays_within_the_stated_memory(tmp_path):
    side = 4000
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 251
    photo = tmp_path / "large.jpg"
    Image.fromarray(np.dstack([ramp, ramp.T, ramp[::-1]]).astype(np.uint8)).save(photo, quality=85)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(photo), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    grown = int(run.stdout.split()[-1])
    per_pixel = grown / side**2
    print(
        f"\npeak memory above the model: {grown / 1e6:.0f} MB for {side} x {side} "
        f"({per_pixel:.1f} bytes per pixel; bound {photos.PHOTO_BYTES_PER_PIXEL})"
    )
    assert per_pixel <= photos.PHOTO_BYTES_PER_PIXEL


# --- one decoder for every mode, the same RGB everywhere ----------------------------------------


def _rgb(height=48, width=64, seed=0) -> np.ndarray:
    """A smooth photo-like RGB image (JPEG keeps it within a few levels)."""
    rows, cols = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.dstack([rows * 5, cols * 4, (rows + cols) * 2]) + rng.integers(
        0, 8, (height, width, 3)
    )
    return np.clip(base, 0, 255).astype(np.uint8)


def _photos_of_every_kind(folder: Path) -> dict[str, np.ndarray]:
    """Photos of each decoding rule, written by real encoders -> the RGB each must decode to."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rgb, grey = _rgb(), _rgb()[..., 0]
    low_bits = np.arange(grey.size).reshape(grey.shape) % 257
    sixteen = (grey.astype(np.uint16) * 257 + low_bits).astype(np.uint16)
    expected = {}
    Image.fromarray(rgb).convert("CMYK").save(
        folder / "cmyk.jpg", quality=95
    )  # Adobe APP14, inverted
    expected["cmyk.jpg"] = np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB"))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(folder / "palette.png")
    expected["palette.png"] = np.asarray(palette.convert("RGB"))
    Image.fromarray(np.dstack([grey, np.full_like(grey, 99)])).save(folder / "la.png")
    expected["la.png"] = np.dstack([grey] * 3)
    Image.fromarray(np.dstack([rgb, np.full_like(grey, 7)])).save(folder / "rgba.png")
    expected["rgba.png"] = rgb
    Image.fromarray(grey).save(folder / "grey.png")
    expected["grey.png"] = np.dstack([grey] * 3)
    Image.fromarray(sixteen).save(folder / "grey16.png")  # Pillow: I;16
    tifffile.imwrite(folder / "grey16.tif", sixteen)
    expected["grey16.png"] = expected["grey16.tif"] = np.dstack(
        [(sixteen >> 8).astype(np.uint8)] * 3
    )
    rgb16 = np.dstack([sixteen, sixteen[::-1], sixteen[:, ::-1]])
    tifffile.imwrite(folder / "rgb16.tif", rgb16)
    tifffile.imwrite(
        folder / "planar16.tif",
        np.moveaxis(rgb16, -1, 0),
        photometric="rgb",
        planarconfig="separate",
    )  # Pillow garbles this one
    expected["rgb16.tif"] = expected["planar16.tif"] = (rgb16 >> 8).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": pixels are read as stored
    Image.fromarray(rgb).save(folder / "exif_rotated.jpg", quality=95, exif=exif)
    expected["exif_rotated.jpg"] = np.asarray(Image.open(folder / "exif_rotated.jpg"))
    return expected


@pytest.mark.one_backend
def test_every_kind_of_photo_decodes_to_the_same_rgb_in_predict_and_in_training(tmp_path):
    from napari_deeplab import photos
    from napari_deeplab.training import SampleCache, locate_dataset

    split = tmp_path / "d" / "Training"
    expected = _photos_of_every_kind(split / "Images")
    ids = []
    for name in expected:  # a sample per photo, its mask the photo's stored grid
        sample_id = name.replace(".", "_")
        (split / "Images" / name).rename(split / "Images" / f"{sample_id}{Path(name).suffix}")
        ids.append(sample_id)
        (split / "Category_ids").mkdir(exist_ok=True)
        Image.fromarray(np.zeros(expected[name].shape[:2], np.uint8)).save(
            split / "Category_ids" / f"{sample_id}.png"
        )
    (split / "train_id.txt").write_text("".join(f"{i}\n" for i in ids))
    dataset = locate_dataset(split.parent, "Training")
    cache = SampleCache(dataset, 10_000)
    for index, (name, want) in enumerate(expected.items()):
        photo = split / "Images" / f"{ids[index]}{Path(name).suffix}"
        predicted = read_photo(photo)  # what predict and the review queue decode
        assert predicted.dtype == np.uint8 and predicted.shape == (48, 64, 3), name
        np.testing.assert_array_equal(predicted, want, err_msg=name)
        assert photos.photo_size(photo) == (64, 48), name
        np.testing.assert_array_equal(cihp.read_sample(split.parent, ids[index]).image, predicted)
        np.testing.assert_array_equal(cache[index][..., :3], predicted, err_msg=name)  # training
    # CMYK: Pillow's decoder undoes Adobe's inversion; the colours are the photo's, not C, M, Y
    cmyk = Image.open(split / "Images" / "cmyk_jpg.jpg")
    assert cmyk.mode == "CMYK" and "adobe" in cmyk.info
    original = _rgb().astype(int)
    assert np.abs(read_photo(split / "Images" / "cmyk_jpg.jpg").astype(int) - original).mean() < 4
    assert np.abs(np.asarray(cmyk)[..., :3].astype(int) - original).mean() > 60


@pytest.mark.one_backend
def test_multi_page_photos_are_refused_with_one_line(tmp_path):
    import tifffile

    tifffile.imwrite(
        tmp_path / "stack.tif", np.zeros((3, 20, 30), np.uint8), photometric="minisblack"
    )
    frames = [Image.fromarray(np.full((20, 30), v, np.uint8)) for v in (0, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("stack.tif", "anim.gif"):
        with pytest.raises(ValueError, match="into single photos") as error:
            read_photo(tmp_path / name)
        assert "\n" not in str(error.value)


@pytest.mark.one_backend
def test_a_truncated_photo_and_a_fifo_are_named_for_what_they_are(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(_rgb(400, 400)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_photo(cut)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file") as error:
        read_photo(fifo)  # without blocking on the FIFO
    assert "no such file" not in str(error.value)
    from napari_deeplab.prelabel import expand_inputs

    paths, problems = expand_inputs([fifo, whole])
    assert paths == [whole.resolve()] and len(problems) == 1
    assert "not a regular file" in problems[0] and "no such file" not in problems[0]


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
    reason="needs root and setpriv to read as another user",
)
@pytest.mark.one_backend
def test_an_unreadable_photo_is_called_unreadable_not_corrupt():
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="napari-deeplab-unreadable-", dir="/tmp"))
    folder.chmod(0o755)  # user nobody may look in the folder, not read the photo
    photo = folder / "private.jpg"
    Image.fromarray(_rgb()).save(photo)
    photo.chmod(0o600)
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from napari_deeplab.photos import "
        "read_photo\ntry:\n    read_photo(sys.argv[1])\nexcept ValueError as e:\n    print(e)"
    )
    run = run_as_nobody(script, photo, REPO / "src", timeout=60, cwd="/")
    shutil.rmtree(folder)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "this user cannot read the file" in run.stdout and "corrupt" not in run.stdout


BOMB_PEAK = """
import resource, sys
from napari_deeplab import photos
from napari_deeplab.photos import read_photo
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_photo(sys.argv[1])
    outcome = "decoded"
except photos.PhotoTooLargeError as error:
    outcome = "refused: " + str(error)
except Exception as error:
    outcome = "failed: " + str(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
print(outcome)
"""


@pytest.mark.one_backend
def test_a_tiff_bomb_that_pillow_cannot_open_is_refused_from_its_header(tmp_path):
    import tifffile

    bomb = tmp_path / "bomb.tif"  # 16,384^2 float64: 2.1 GB of pixels in about 2 MB
    tifffile.imwrite(bomb, np.zeros((16384, 16384)), compression="zlib", tile=(1024, 1024))
    assert bomb.stat().st_size < 4_000_000
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(
        [sys.executable, "-c", BOMB_PEAK, str(bomb)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    grown, outcome = run.stdout.strip().splitlines()[-2:]
    print(f"\npeak memory of refusing the 16,384^2 float64 TIFF: {int(grown) / 1e6:.0f} MB")
    assert outcome.startswith("refused: ") and "16384 x 16384 pixels" in outcome
    assert int(grown) < 100_000_000
