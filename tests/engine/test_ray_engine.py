"""``predict --engine ray``: Ray Data on a local Ray cluster (one per module) against the local engine.

The model actors load the session's real model from a ``.keras`` file; the photos are the CIHP
samples at several sizes and kinds (JPEG as is, PNG, grayscale, RGBA) plus one corrupt file.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs ray[data]
from PIL import Image

from napari_deeplab import cihp
from napari_deeplab.prelabel import expand_inputs, prelabel_files
from napari_deeplab.ray_engine import (
    KILL_AT_ENV,
    RayEngineError,
    expand_ray_inputs,
    prelabel_with_ray,
)

CORRUPT = "corrupt_0000000"


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (starting one takes seconds): 4 logical CPUs, so that
    the model actor (fractional CPUs) and the read and write tasks run side by side."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    """The session's model as a .keras file, which every actor loads by path."""
    path = tmp_path_factory.mktemp("ray-model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def photos(cihp_samples, tmp_path_factory) -> list[Path]:
    """Thirteen inputs: each CIHP sample as its JPEG, scaled to 1/2 and 1/3 (PNG) and in
    grayscale or RGBA at 3/4, and one file that is no image."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for index, source in enumerate(sorted((cihp_samples / "Images").glob("*.jpg"))):
        shutil.copy(source, folder / source.name)
        photo = Image.open(source)
        for scale in (2, 3):
            photo.resize((photo.width // scale, photo.height // scale)).save(
                folder / f"{source.stem}_{scale}.png"
            )
        converted = photo.convert("L" if index % 2 else "RGBA")
        converted.resize((photo.width * 3 // 4, photo.height * 3 // 4)).save(
            folder / f"{source.stem}_{converted.mode.lower()}.png"
        )
    (folder / f"{CORRUPT}.jpg").write_bytes(b"\xff\xd8\xff\xe0 a truncated JPEG")
    paths, problems = expand_inputs([folder])
    assert not problems and len(paths) == 13
    return paths


@pytest.fixture(scope="module")
def local_dataset(model, photos, tmp_path_factory) -> Path:
    """The local engine's output on the same photos, the reference every Ray run must equal."""
    out = tmp_path_factory.mktemp("local") / "dataset"
    outcomes = list(prelabel_files(photos, model, out, batch_size=4))
    assert [o.status for o in outcomes].count("written") == 12
    return out


def folder_contents(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included, but not the lock file, which is
    empty) by relative path, with its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != cihp.LOCK_NAME
    }


NEAR_TIE_PIXELS = 16
"""Pixels of a redone photo's mask that may differ from the local engine's: on the CPU a
photo's float32 logits depend on its place in the model's batch (by about 6e-7, measured), so
where this random-weights model's top two classes tie that closely the label may flip. A photo
redone after a kill, or in a resumed job, meets other batch-mates than in the local run."""


def assert_same_dataset(out: Path, reference: Path, redone: bool = False) -> None:
    contents, expected = folder_contents(out), folder_contents(reference)
    assert sorted(contents) == sorted(expected)
    differing = [name for name in expected if contents[name] != expected[name]]
    if redone:
        differing = [
            name for name in differing if not _masks_agree_but_near_ties(out, reference, name)
        ]
    assert not differing, f"files that differ from the local engine's: {differing}"
    ids = cihp.read_id_list(out, "Training")
    assert ids == sorted(ids) and len(ids) == 12


def _masks_agree_but_near_ties(out: Path, reference: Path, name: str) -> bool:
    """Whether ``name`` is a mask (or its picture) that differs from the reference's in at most
    :data:`NEAR_TIE_PIXELS` pixels, and whose picture is still the palette colouring of its ids."""
    folder = Path(name).parent.name
    if folder not in ("Category_ids", "Categories"):
        return False
    ids = [
        np.asarray(Image.open(root / "Training" / "Category_ids" / Path(name).name))
        for root in (out, reference)
    ]
    picture = np.asarray(Image.open(out / "Training" / "Categories" / Path(name).name))
    return (ids[0] != ids[1]).sum() <= NEAR_TIE_PIXELS and np.array_equal(
        picture, cihp.colorize(ids[0])
    )


def run(photos, model_file, out, **options) -> list:
    return list(
        prelabel_with_ray(
            [str(path) for path in photos], model_file, out, batch_size=4, workers=1, **options
        )
    )


def assert_corrupt_reported(outcomes) -> None:
    failed = [o for o in outcomes if o.status == "failed"]
    assert [o.sample_id for o in failed] == [CORRUPT]
    assert str(failed[0].path).endswith(f"{CORRUPT}.jpg")
    assert "cannot read this file as an image" in failed[0].message


def test_output_is_the_local_engines_byte_for_byte(
    ray_cluster, photos, model_file, local_dataset, tmp_path, capsys
):
    """Through the command line: every file and the id list equal the local engine's; the
    corrupt photo is reported by name and the exit status says that one failed."""
    from napari_deeplab.cli import main

    out = tmp_path / "dataset"
    status = main(
        [
            "predict",
            str(photos[0].parent),
            "--out",
            str(out),
            "--engine",
            "ray",
            "--model",
            str(model_file),
            "--workers",
            "1",
            "--batch-size",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert f"{CORRUPT}.jpg: failed: cannot read this file as an image" in captured.err
    assert "12 written, 0 skipped, 1 failed" in captured.out
    assert_same_dataset(out, local_dataset)


@pytest.mark.one_backend
def test_a_worker_killed_mid_job_is_replaced_and_its_photos_redone(
    ray_cluster, photos, model_file, local_dataset, tmp_path, monkeypatch
):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_AT_ENV, f"2:{marker}")  # the actor dies on its second batch
    out = tmp_path / "dataset"
    outcomes = run(photos, model_file, out)
    assert marker.exists(), "the model actor was not killed: the test proves nothing"
    assert_corrupt_reported(outcomes)
    assert sorted(o.sample_id for o in outcomes if o.status == "written") == sorted(
        p.stem for p in photos if p.stem != CORRUPT
    )
    assert_same_dataset(out, local_dataset, redone=True)


@pytest.mark.one_backend
def test_an_interrupted_job_resumes_where_it_stopped(
    ray_cluster, photos, model_file, local_dataset, tmp_path
):
    out = tmp_path / "dataset"
    first = prelabel_with_ray(
        [str(path) for path in photos], model_file, out, batch_size=4, workers=1, commit_group=2
    )
    committed_before = [next(first).sample_id for _ in range(3)]
    first.close()  # as Ctrl+C does: the job stops; what is committed is complete
    listed = set(cihp.read_id_list(out, "Training"))
    assert set(committed_before) <= listed and len(listed) < 12
    # the re-run reads the photos as URIs (as it would s3://), listed from their folder's
    uris, problems = expand_ray_inputs([photos[0].parent.as_uri()])
    assert not problems and uris == [path.as_uri() for path in photos]
    outcomes = list(prelabel_with_ray(uris, model_file, out, batch_size=4, workers=1))
    skipped = {o.sample_id for o in outcomes if o.status == "skipped"}
    written = {o.sample_id for o in outcomes if o.status == "written"}
    assert listed <= skipped  # not read again
    assert skipped | written == {p.stem for p in photos} - {CORRUPT} and not skipped & written
    assert_corrupt_reported(outcomes)
    assert_same_dataset(out, local_dataset, redone=True)


@pytest.mark.one_backend
def test_a_job_that_cannot_progress_fails_with_a_clear_message(
    ray_cluster, photos, model_file, tmp_path
):
    """A model actor asking for a GPU that this cluster lacks can never start: the job is
    stopped after the no-progress timeout instead of hanging."""
    with pytest.raises(RayEngineError, match="made no progress for 3 s"):
        run(
            photos[:2], model_file, tmp_path / "dataset", gpus_per_worker=1, no_progress_timeout_s=3
        )
    assert not os.path.exists(tmp_path / "dataset" / "Training" / "train_id.txt")


@pytest.mark.keras
def test_photo_decoding_is_read_photos(photos):
    """The read stage decodes with read_photo's rules from bytes (no cluster needed)."""
    from napari_deeplab.prelabel import read_photo
    from napari_deeplab.ray_engine import _pixels, read_photos

    batch = {
        "location": np.array([str(photos[0]), str(photos[-1])]),
        "sample_id": np.array([photos[0].stem, photos[-1].stem]),
    }
    decoded = read_photos(batch)
    expected = read_photo(photos[0])
    np.testing.assert_array_equal(
        _pixels(decoded["pixels"][0], decoded["shape"][0], decoded["dtype"][0]), expected
    )
    assert decoded["message"][0] == "" and decoded["message"][1]
