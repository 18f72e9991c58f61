"""File > Save Selected Layers with photos napari opened itself (their layers remember the
files, so the writer copies or converts the files), judged by the seed's own loader run in a
child process (TensorFlow never loads in napari's process): ``tests/seed_loader.py``."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from napari_deeplab import cihp
from napari_deeplab._napari.io import SaveRefused

REPO = Path(__file__).resolve().parents[2]

PHOTOS = {
    "frame.jpg": ("0002190.jpg", None),
    "frame.left.jpg": ("0005008.jpg", None),
    "frame.orig.jpg": ("0026375.jpg", None),
    "still.bmp": ("0005008.jpg", "BMP"),
    "scan.tif": ("0026375.jpg", "TIFF"),
    "web.webp": ("0002190.jpg", "WEBP"),
    "shot.png": ("0005008.jpg", "PNG"),
}


def _seed_loader_problems(root: Path) -> list[str]:
    split = root / "Training"
    done = subprocess.run(
        [sys.executable, "-m", "tests.seed_loader", str(split), str(split / "train_id.txt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_saved_samples_pair_right_in_the_seed_loader(make_napari_viewer, cihp_samples, tmp_path):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for name, (source, kind) in PHOTOS.items():
        if kind is None:
            shutil.copy(cihp_samples / "Images" / source, inputs / name)
        else:
            options = {"lossless": True} if kind == "WEBP" else {}
            PIL.Image.open(cihp_samples / "Images" / source).save(inputs / name, kind, **options)
    dataset = tmp_path / "dataset"
    viewer = make_napari_viewer()
    for position, name in enumerate(PHOTOS):
        viewer.layers.clear()
        (photo,) = viewer.open(str(inputs / name))  # napari's own reader
        assert photo.name == Path(name).stem
        parts = viewer.add_labels(
            np.full(photo.data.shape[:2], position + 1, np.uint8), name=f"{photo.name} parts"
        )
        viewer.layers.selection = {photo, parts}
        assert viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    ids = [cihp.sample_id_of_file(name) for name in PHOTOS]
    assert sorted(cihp.read_id_list(dataset, "Training")) == sorted(ids)
    images = dataset / "Training" / "Images"
    for name in ("frame.jpg", "frame.left.jpg", "shot.png"):  # kept byte for byte
        stored = next(images.glob(f"{cihp.sample_id_of_file(name)}.*"))
        assert stored.read_bytes() == (inputs / name).read_bytes()
    assert {p.suffix for p in images.iterdir() if not p.name.startswith(".")} == {".jpg", ".png"}

    # a parts layer alone: refused without a stored photo, or at another size than it
    for name, shape, refusal in (
        ("lonely", (4, 4), "no photo for 'lonely'"),
        ("shot", (200, 300), r"sample shot: mask shape \(200, 300\) differs"),
    ):
        viewer.layers.clear()
        alone = viewer.add_labels(np.ones(shape, np.uint8), name=f"{name} parts")
        viewer.layers.selection = {alone}
        with pytest.raises(SaveRefused, match=refusal):
            viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    assert sorted(cihp.read_id_list(dataset, "Training")) == sorted(ids)
    assert _seed_loader_problems(dataset) == []
