"""Datasets written by every writer, read by the seed's own loader (:mod:`tests.seed_loader`:
``sorted(glob(Images/*))`` zipped with ``sorted(glob(Category_ids/*))``, each decoded with
``tf.image.decode_png``): every pair must be the same id, decodable, and of one H x W.

Each writer writes the same kinds of input into one split: plain CIHP ids, ids that extend
each other with a dot (``frame``, ``frame.left``, ``frame.orig``), an id that sorts before
``frame`` only by file name (``frame-bmp``), BMP, TIFF, WebP, PNG and upper-case ``.JPEG``
photos; then what must be refused (a mask without any photo, a mask of another size than
the stored photo) is tried, and the split read again."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp, photos
from napari_deeplab.cli import main
from napari_deeplab.review import ReviewQueue
from tests.engine.commands import predict_command
from tests.seed_loader import pairing_problems, read_image

REPO = Path(__file__).resolve().parents[2]

KINDS = {
    # input file -> (the CIHP photo it is made of, format written with Pillow)
    "0002190.jpg": ("0002190.jpg", None),  # plain ids: the CIHP photos themselves
    "0005008.jpg": ("0005008.jpg", None),
    "0026375.jpg": ("0026375.jpg", None),
    "frame.jpg": ("0002190.jpg", None),  # dotted ids (three sizes)
    "frame.left.jpg": ("0005008.jpg", None),
    "frame.orig.jpg": ("0026375.jpg", None),
    "frame-bmp.bmp": ("0005008.jpg", "BMP"),
    "scan.tif": ("0026375.jpg", "TIFF"),
    "web.webp": ("0002190.jpg", "WEBP"),
    "shot.png": ("0005008.jpg", "PNG"),
    "camera.JPEG": ("0026375.jpg", None),  # a JPEG under another suffix
}
IDS = {name: cihp.sample_id_of_file(name) for name in KINDS}
CONVERTED = ("frame-bmp.bmp", "scan.tif", "web.webp")


@pytest.fixture
def inputs(tmp_path, cihp_samples) -> Path:
    """The photos of :data:`KINDS` in one folder."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, (source, kind) in KINDS.items():
        if kind is None:
            shutil.copy(cihp_samples / "Images" / source, folder / name)
        else:
            options = {"lossless": True} if kind == "WEBP" else {}
            Image.open(cihp_samples / "Images" / source).save(folder / name, kind, **options)
    return folder


def _masks(folder: Path) -> dict[str, np.ndarray]:
    """A mask of each photo's size (H x W uint8, value = position + 1), by input name."""
    return {
        name: np.full(photos.read_photo(folder / name).shape[:2], i + 1, np.uint8)
        for i, name in enumerate(KINDS)
    }


def _assert_read_right(root: Path, expected_ids) -> list[str]:
    """The seed's loader pairs every listed sample of ``root``/Training right, and those are
    ``expected_ids``; returns the id list."""
    split = root / "Training"
    listed = cihp.read_id_list(root, "Training")
    assert sorted(listed) == sorted(expected_ids)
    assert pairing_problems(split, listed) == []
    stored = sorted(p.suffix for p in (split / "Images").iterdir() if not p.name.startswith("."))
    assert set(stored) <= {".jpg", ".png"}
    return listed


def _assert_converted(root: Path, inputs: Path) -> None:
    """Photos of JPEG and PNG bytes are kept byte for byte; the others are their decoded
    pixels as a PNG."""
    images = root / "Training" / "Images"
    for name in KINDS:
        sample_id = IDS[name]
        if name in CONVERTED:
            stored = images / f"{sample_id}.png"
            np.testing.assert_array_equal(
                photos.read_photo(stored), photos.read_photo(inputs / name)
            )
        else:
            suffix = ".png" if name.endswith(".png") else ".jpg"
            assert (images / f"{sample_id}{suffix}").read_bytes() == (inputs / name).read_bytes()


def test_the_seed_loader_is_the_judge(tmp_path, cihp_samples, inputs):
    """The loader as used here misreads what it should: the dotted ids copied as they are
    pair wrongly, BMP and TIFF do not decode, WebP decodes to another rank."""
    split = tmp_path / "raw" / "Training"
    (split / "Images").mkdir(parents=True)
    (split / "Category_ids").mkdir()
    for name in ("frame.jpg", "frame.left.jpg", "frame.orig.jpg"):
        shutil.copy(inputs / name, split / "Images" / name)
        mask = np.zeros(photos.read_photo(inputs / name).shape[:2], np.uint8)
        cihp.save_label_png(mask, split / "Category_ids" / f"{Path(name).stem}.png")
    problems = pairing_problems(split, ["frame", "frame.left", "frame.orig"])
    assert sum("for the listed id" in line for line in problems) == 3
    for name in ("frame-bmp.bmp", "scan.tif", "web.webp"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - TensorFlow's own errors
            read_image(str(inputs / name))
    assert read_image(str(inputs / "camera.JPEG")) == (498, 500)
    assert read_image(str(cihp_samples / "Category_ids" / "0026375.png"), mask=True) == (498, 500)


def test_the_python_api_writes_what_the_seed_loader_reads(tmp_path, inputs):
    root = tmp_path / "dataset"
    masks = _masks(inputs)
    for name in KINDS:
        cihp.write_sample(root, IDS[name], masks[name], image_path=inputs / name)
    with pytest.raises(cihp.DatasetError, match=r"may not contain '\.'.*'frame_left'"):
        cihp.write_sample(root, "frame.left", masks["frame.left.jpg"], overwrite=True)
    with pytest.raises(cihp.DatasetError, match="no photo given and none stored"):
        cihp.write_sample(root, "lonely", np.zeros((4, 4), np.uint8))
    with pytest.raises(cihp.DatasetError, match="mask is 200 x 300 but its stored photo shot.png"):
        cihp.write_sample(root, "shot", masks["frame.jpg"], overwrite=True)
    cihp.write_sample(root, "shot", masks["shot.png"] * 0, overwrite=True)  # its size: fine
    listed = _assert_read_right(root, IDS.values())
    assert listed == cihp.list_samples(root, "Training")
    assert listed.index("frame-bmp") < listed.index("frame")  # file-name order: '-' < '.'
    _assert_converted(root, inputs)
    note = cihp.stage_sample(root, "again", masks["scan.tif"], image_path=inputs / "scan.tif")
    note.discard()
    assert note.note.startswith("photo converted losslessly from TIFF to PNG")


@pytest.mark.one_backend
def test_predict_writes_what_the_seed_loader_reads(tmp_path, inputs, seed_checkpoint, capsys):
    root = tmp_path / "dataset"
    (inputs / "broken.jpg").write_bytes((inputs / "frame.jpg").read_bytes()[:300])  # no photo
    assert main(predict_command(inputs, model=seed_checkpoint, out=root)) == 1
    captured = capsys.readouterr()
    assert "broken.jpg: failed" in captured.err
    assert "scan.tif: written: photo converted losslessly from TIFF to PNG" in captured.err
    assert f"{len(KINDS)} written (3 photos converted losslessly to PNG" in captured.out
    _assert_read_right(root, IDS.values())
    _assert_converted(root, inputs)
    # an overwrite with a photo of another size replaces photo and mask together
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(inputs / "frame.jpg", other / "shot.png")
    options = ["--overwrite"]
    assert (
        main(predict_command(other / "shot.png", model=seed_checkpoint, out=root, options=options))
        == 0
    )
    _assert_read_right(root, IDS.values())
    assert photos.photo_size(root / "Training" / "Images" / "shot.jpg") == (300, 200)
    assert not (root / "Training" / "Images" / "shot.png").exists()
    # two inputs that map to one id are refused before anything is read
    shutil.copy(inputs / "frame.left.jpg", inputs / "frame_left.png")
    capsys.readouterr()
    assert main(predict_command(inputs, model=seed_checkpoint, out=tmp_path / "refused")) == 2
    assert "two inputs have the id 'frame_left'" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_the_review_queue_accepts_what_the_seed_loader_reads(tmp_path, inputs):
    root = tmp_path / "dataset"
    queue = ReviewQueue(inputs, root)
    assert sorted(item.sample_id for item in queue.items) == sorted(IDS.values())
    masks = {IDS[name]: mask for name, mask in _masks(inputs).items()}
    with pytest.raises(cihp.DatasetError, match="mask shape .* differs from image shape"):
        queue.accept("shot", masks["frame"])
    (inputs / "web.webp").rename(tmp_path / "gone.webp")  # its photo vanished from the queue
    with pytest.raises((OSError, cihp.DatasetError)):
        queue.accept("web", masks["web"])
    (tmp_path / "gone.webp").rename(inputs / "web.webp")
    assert cihp.read_id_list(root, "Training") == []
    for item in queue.items:
        queue.accept(item.sample_id, masks[item.sample_id])
    _assert_read_right(root, IDS.values())
    _assert_converted(root, inputs)


NAPARI_WRITER = """
import json, sys
from pathlib import Path
import numpy as np
from napari_deeplab import photos
from napari_deeplab._napari.io import SaveRefused, write_cihp

inputs, root = Path(sys.argv[1]), sys.argv[2]
results = {}
for position, path in enumerate(sorted(inputs.iterdir())):
    pixels = photos.read_photo(path)  # what napari's reader gives
    labels = np.full(pixels.shape[:2], position + 1, np.uint8)
    name = path.stem  # napari names a photo's layer by its file stem
    layers = [(pixels, {"name": name}, "image"), (labels, {"name": name + " parts"}, "labels")]
    results[path.name] = write_cihp(root, layers)
for name, shape in (("lonely", (4, 4)), ("shot", (200, 300))):  # a parts layer alone
    try:
        write_cihp(root, [(np.zeros(shape, np.uint8), {"name": name + " parts"}, "labels")])
        results[name] = "written"
    except SaveRefused as error:
        results[name] = "refused: " + str(error)
print(json.dumps(results))
"""


def test_napari_s_writer_writes_what_the_seed_loader_reads(tmp_path, inputs):
    """The writer hook as napari calls it (``write_cihp(path, layer data)``), in a process
    without TensorFlow as napari's is; no viewer, so photos come as their pixels."""
    root = tmp_path / "dataset"
    done = subprocess.run(
        [sys.executable, "-c", NAPARI_WRITER, str(inputs), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["lonely"].startswith("refused: no photo for 'lonely'")
    assert results["shot"].startswith("refused: sample shot: mask shape (200, 300) differs")
    _assert_read_right(root, IDS.values())
