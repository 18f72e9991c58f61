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

from napari_deeplab import cihp
from napari_deeplab.prelabel import read_photo

REPO = Path(__file__).resolve().parents[2]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` greyscale pixels in a few bytes (a bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_naming_the_limit(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 40_000, 40_000)
    for read in (read_photo, cihp.open_image):
        with pytest.raises(cihp.PhotoTooLargeError) as error:
            read(bomb)
        message = str(error.value)
        assert str(bomb) in message and f"{cihp.DEFAULT_MAX_PIXELS:,}" in message
        assert cihp.MAX_PIXELS_ENV in message and "\n" not in message


def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch, cihp_samples):
    photo = cihp_samples / "Images" / "0002190.jpg"  # 300 x 200
    monkeypatch.setenv(cihp.MAX_PIXELS_ENV, "59999")
    with pytest.raises(cihp.PhotoTooLargeError, match="300 x 200 pixels is over the limit of 59,999"):
        read_photo(photo)
    with pytest.raises(cihp.PhotoTooLargeError, match="0002190.jpg"):
        cihp.read_sample(cihp_samples, "0002190", None)
    monkeypatch.setenv(cihp.MAX_PIXELS_ENV, "60000")
    assert read_photo(photo).shape == (200, 300, 3)
    monkeypatch.setenv(cihp.MAX_PIXELS_ENV, "many")
    with pytest.raises(cihp.DatasetError, match=cihp.MAX_PIXELS_ENV):
        read_photo(photo)


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


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures memory with /proc (Linux)")
def test_prelabelling_a_large_photo_stays_within_the_stated_memory(tmp_path):
    side = 4000
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 251
    photo = tmp_path / "large.jpg"
    Image.fromarray(np.dstack([ramp, ramp.T, ramp[::-1]]).astype(np.uint8)).save(photo, quality=85)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", MEASURE, str(photo), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    grown = int(run.stdout.split()[-1])
    per_pixel = grown / side ** 2
    print(f"\npeak memory above the model: {grown / 1e6:.0f} MB for {side} x {side} "
          f"({per_pixel:.1f} bytes per pixel; bound {cihp.PHOTO_BYTES_PER_PIXEL})")
    assert per_pixel <= cihp.PHOTO_BYTES_PER_PIXEL
