"""The pipelined prediction engine: the same bytes as the serial path, bounded read-ahead, Cancel
and Ctrl+C, bad photos and other writers (real photos, the real model, real threads)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp
from napari_deeplab.inference import segment_stack
from napari_deeplab.prelabel import prelabel_files
from tests.engine.test_commit import CORRECTION, _env, _temporaries

SIZES = [(200, 300), (313, 576), (498, 500), (90, 61), (257, 129), (33, 700), (401, 233)]


@pytest.fixture
def many_photos(tmp_path, cihp_samples):
    """Photos made from the three CIHP samples at the sizes of SIZES (JPEG and PNG), in name
    order, with a corrupt file fifth: batches of 4 are 4 and 3 photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = [
        Image.open(path).convert("RGB") for path in sorted((cihp_samples / "Images").glob("*.jpg"))
    ]
    paths = []
    for number, (height, width) in enumerate(SIZES):
        path = folder / f"p{number:02d}.{'png' if number % 3 == 2 else 'jpg'}"
        sources[number % 3].resize((width, height), Image.BILINEAR).save(path)
        paths.append(path)
    corrupt = folder / "p04-corrupt.jpg"
    corrupt.write_bytes(paths[0].read_bytes()[:300])
    return sorted(paths + [corrupt])


@pytest.fixture(scope="module")
def small_model():
    """DeepLabV3+ of the seed's architecture, random weights, at 128 x 128: the tests that are
    about the pipeline's flow, not the model's output, run 16 times fewer model FLOPs."""
    from napari_deeplab.model import build_model

    return build_model(input_size=128)


def _pipeline_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("napari-deeplab")]


def _files(root):
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != cihp.LOCK_NAME
    }


def test_pipelined_predict_writes_the_same_bytes_as_serial(many_photos, model, tmp_path):
    outcomes = {}
    for workers in (1, 3):
        out = tmp_path / f"out-{workers}"
        outcomes[workers] = [
            (o.path.name, o.status, o.message)
            for o in prelabel_files(many_photos, model, out, batch_size=4, workers=workers)
        ]
    assert outcomes[1] == outcomes[3]
    assert [name for name, _, _ in outcomes[3]] == [path.name for path in many_photos]
    failed = [(name, message) for name, status, message in outcomes[3] if status != "written"]
    assert len(failed) == 1 and failed[0][0] == "p04-corrupt.jpg"
    assert failed[0][1].startswith("cannot read this file as an image (corrupt, truncated")
    serial, pipelined = _files(tmp_path / "out-1"), _files(tmp_path / "out-3")
    assert len(serial) == 3 * len(SIZES) + 1  # photo, mask, picture per sample; the id list
    assert serial.keys() == pipelined.keys()
    for name in serial:
        assert serial[name] == pipelined[name], f"{name} differs"
    ids = [path.stem for path in many_photos if "corrupt" not in path.name]
    assert cihp.read_id_list(tmp_path / "out-3", "Training") == sorted(ids)
    for path in many_photos[:3]:  # the files read back as before: a gray mask, its RGB picture
        mask = Image.open(tmp_path / "out-3" / "Training" / "Category_ids" / f"{path.stem}.png")
        picture = Image.open(tmp_path / "out-3" / "Training" / "Categories" / f"{path.stem}.png")
        assert mask.mode == "L" and picture.mode == "RGB"
        assert mask.size == picture.size == Image.open(path).size
        np.testing.assert_array_equal(np.asarray(picture), cihp.PALETTE[np.asarray(mask)])
    assert not _pipeline_threads()


@pytest.mark.keras
def test_the_pipeline_reads_at_most_max_in_flight_photos_ahead(small_model, cihp_photo):
    pulled = []

    def photos():
        for number in range(7):
            pulled.append(number)
            yield cihp_photo[: 100 + 20 * number]

    received = 0
    for result in segment_stack(photos(), small_model, batch_size=2, workers=2, max_in_flight=4):
        assert result.index == received
        received += 1
        time.sleep(0.2)  # a slow consumer: the workers run ahead as far as they may
        assert len(pulled) <= received + 4
        assert result.labels.shape == (100 + 20 * result.index, cihp_photo.shape[1])
    assert received == 7
    assert not _pipeline_threads()


def _assert_complete(out, yielded):
    listed = cihp.list_samples(out, "Training")
    assert set(yielded) <= set(listed)
    for sample_id in listed:
        sample = cihp.read_sample(out, sample_id)
        assert sample.category_ids.shape == sample.image.shape[:2]
        picture = np.asarray(Image.open(out / "Training" / "Categories" / f"{sample_id}.png"))
        np.testing.assert_array_equal(picture, cihp.PALETTE[sample.category_ids])
    assert not _temporaries(out)
    assert not _pipeline_threads()
    return listed


@pytest.mark.keras
def test_closing_the_generator_stops_the_pipeline_and_keeps_committed_samples(
    many_photos, small_model, tmp_path
):
    out = tmp_path / "out"
    batch = prelabel_files(many_photos, small_model, out, batch_size=2, workers=3, max_in_flight=4)
    yielded = [next(batch).sample_id for _ in range(2)]
    batch.close()  # napari's Cancel
    listed = _assert_complete(out, yielded)
    assert len(listed) <= 2 + 4  # what was yielded and at most max_in_flight more


def test_ctrl_c_in_the_calling_thread_stops_the_pipeline(many_photos, model, tmp_path):
    out = tmp_path / "out"
    yielded = []
    # Python's own Ctrl+C handler, whatever a library imported earlier in this process set
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            contextlib.closing(
                prelabel_files(many_photos, model, out, batch_size=2, workers=3, max_in_flight=2)
            ) as batch,
        ):
            for outcome in batch:
                yielded.append(outcome.sample_id)
                if len(yielded) == 1:  # Ctrl+C, while the calling thread waits in the pipeline
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(5)  # (had the pipeline ended first, the interrupt still lands in here)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(yielded) < len(many_photos)
    _assert_complete(out, yielded)


@pytest.mark.one_backend
def test_a_sample_committed_by_another_writer_while_the_pipeline_runs_is_kept(
    many_photos, small_model, tmp_path
):
    photos = [path for path in many_photos if "corrupt" not in path.name][:5]
    out = tmp_path / "out"
    target = photos[4]
    correction = np.full(np.asarray(Image.open(target)).shape[:2], 5, np.uint8)
    batch = prelabel_files(photos, small_model, out, batch_size=1, workers=2, max_in_flight=2)
    assert next(batch).status == "written"
    # photos 0-2 at most are read by now (1 yielded + 2 in flight): the last is committed later
    subprocess.run(
        [sys.executable, "-c", CORRECTION, str(out), str(target)],
        env=_env(),
        check=True,
        timeout=60,
    )
    outcomes = {outcome.sample_id: outcome for outcome in batch}
    assert outcomes[target.stem].status == "skipped"
    assert "another writer" in outcomes[target.stem].message
    assert all(outcomes[path.stem].status == "written" for path in photos[1:4])
    np.testing.assert_array_equal(cihp.read_sample(out, target.stem).category_ids, correction)
    assert len(cihp.list_samples(out, "Training")) == 5
    assert not _temporaries(out) and not _pipeline_threads()
