"""The model process serves concurrent callers, cancels at once and fails clearly.

Models are small random-weight DeepLabV3+ ``.keras`` files (input size 64, so a photo takes
milliseconds) and photos are 64 x 96 crops of the CIHP samples. The children log into a
temporary XDG_STATE_HOME, never into the user's log folder.
"""

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from PIL import Image

from napari_deeplab import DEFAULT_MODEL
from napari_deeplab.inference import Segmentation
from napari_deeplab.model_source import check_model_source, looks_like_hub_id
from napari_deeplab.worker import ModelProcess, ModelProcessError, Waiting

ROUNDS = 20
TRAINING = dict(split="Training", val_split=None, image_size=64, batch_size=2, learning_rate=1e-3)


@pytest.fixture(scope="module", autouse=True)
def private_log_home(tmp_path_factory):
    """platformdirs' user log folder (on Linux under XDG_STATE_HOME) in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """Two random models, as ``.keras`` files."""
    import keras

    from napari_deeplab.model import build_model

    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        paths.append(str(folder / f"random{seed}.keras"))
        build_model(input_size=64).save(paths[-1])
    return tuple(paths)


@pytest.fixture(scope="module")
def photos(cihp_samples) -> list[np.ndarray]:
    """Nine different 64 x 96 photos."""
    crops = []
    for path in sorted((cihp_samples / "Images").glob("*.jpg")):
        image = np.asarray(Image.open(path))
        corners = ((0, 0), (64, 96), (120, 40))
        crops += [image[top : top + 64, left : left + 96] for top, left in corners]
    return crops


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, cihp_samples) -> Path:
    """A CIHP dataset of three 128 x 128 crops of the samples."""
    from napari_deeplab.cihp import write_sample

    root = tmp_path_factory.mktemp("dataset")
    for path in sorted((cihp_samples / "Images").glob("*.jpg")):
        image = np.asarray(Image.open(path))[:128, :128]
        mask = cihp_samples / "Category_ids" / f"{path.stem}.png"
        labels = np.asarray(Image.open(mask))[:128, :128]
        write_sample(root, path.stem, labels, image=image)
    return root


@pytest.fixture(scope="module")
def process():
    """One ModelProcess for the module: its child (TensorFlow and the models loaded) is reused."""
    model_process = ModelProcess()
    yield model_process
    model_process.close()


def _frames(results) -> list[tuple[int, np.ndarray, np.ndarray]]:
    return [(r.index, r.labels, r.confidence) for r in results if isinstance(r, Segmentation)]


def _frames_after(start: threading.Barrier, process: ModelProcess, job: tuple) -> list:
    start.wait()  # all threads send their jobs at the same moment
    return _frames(process.segment(*job))


def _assert_same_frames(actual, expected):
    assert [index for index, *_ in actual] == [index for index, *_ in expected]
    for (_, labels, confidence), (_, labels_wanted, confidence_wanted) in zip(
        actual, expected, strict=True
    ):
        np.testing.assert_array_equal(labels, labels_wanted)
        np.testing.assert_array_equal(confidence, confidence_wanted)


@pytest.fixture(scope="module")
def jobs(models, photos) -> list[tuple]:
    """Three segmentation jobs: (photos, model, batch size)."""
    return [(photos[0:3], models[0], 1), (photos[3:7], models[1], 2), (photos[6:9], models[0], 1)]


@pytest.fixture(scope="module")
def serial_results(process, jobs) -> list[list]:
    """The jobs' results, run one after another."""
    return [_frames(process.segment(*job)) for job in jobs]


@pytest.mark.keras
def test_concurrent_segment_jobs_get_exactly_their_own_results(process, jobs, serial_results):
    identical_rounds = 0
    with ThreadPoolExecutor(len(jobs)) as pool:
        for _ in range(ROUNDS):
            start = threading.Barrier(len(jobs))
            results = list(
                pool.map(lambda job, start=start: _frames_after(start, process, job), jobs)
            )
            for actual, expected in zip(results, serial_results, strict=True):
                _assert_same_frames(actual, expected)
            identical_rounds += 1
    assert identical_rounds == ROUNDS


@pytest.mark.keras
def test_a_cancelled_job_stops_soon_and_leaves_other_jobs_intact(
    process, models, photos, jobs, serial_results
):
    long_stack = photos * 30  # 270 photos: many seconds of work if the cancel were ignored

    def cancel_after_two():
        results = process.segment(long_stack, models[1])
        frames = 0
        for result in results:
            frames += isinstance(result, Segmentation)
            if frames == 2:
                results.close()
                return frames

    with ThreadPoolExecutor(2) as pool:
        cancelled = pool.submit(cancel_after_two)
        other = pool.submit(lambda: _frames(process.segment(*jobs[1])))
        assert cancelled.result() == 2
        _assert_same_frames(other.result(), serial_results[1])
    started = time.monotonic()
    _assert_same_frames(_frames(process.segment(*jobs[0])), serial_results[0])
    assert time.monotonic() - started < 5, "the child went on with the cancelled stack"


@pytest.mark.keras
def test_a_job_waiting_behind_another_yields_waiting(process, models, photos, jobs, serial_results):
    first_result = threading.Event()

    def long_job():
        frames = []
        for item in process.segment(photos * 5, models[1]):
            if isinstance(item, Segmentation):
                frames.append(item.index)
                first_result.set()
        return frames

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(long_job)
        assert first_result.wait(300)  # a cold model on a loaded machine
        items = list(process.segment(*jobs[0]))
        assert ahead.result() == list(range(45))
    waiting = [item for item in items if isinstance(item, Waiting)]
    assert waiting and waiting[0] == Waiting(0, 3)
    _assert_same_frames(_frames(items), serial_results[0])


@pytest.mark.one_backend
def test_finetune_cancel_kills_training_at_once_and_a_new_run_trains_alongside_segment_jobs(
    process, dataset, models, jobs, serial_results, tmp_path
):
    out = tmp_path / "tuned.keras"
    first = process.finetune(
        root=str(dataset), source=models[0], out=str(out), epochs=50, **TRAINING
    )
    report = next(item for item in first if not isinstance(item, Waiting))
    assert report["epoch"] == 0 and report["saved"]
    assert set(report) == {
        "epoch",
        "epochs",
        "loss",
        "val_miou",
        "saved",
        "val_size",
        "full_resolution_miou",
    }
    saved_at_epoch_0 = hashlib.sha256(out.read_bytes()).hexdigest()
    (trainer,) = process._trainers
    time.sleep(1.0)  # in the middle of epoch 1's training
    cancelled_at = time.monotonic()
    first.close()
    assert trainer.process.poll() is not None, "the training process outlived Cancel"
    assert time.monotonic() - cancelled_at < 2
    assert not process._trainers

    # the killed run left the file it had saved: complete, and the previous model
    assert hashlib.sha256(out.read_bytes()).hexdigest() == saved_at_epoch_0
    from napari_deeplab.model import load_model

    load_model(out)

    def second_run():
        started, reports, first_report_seconds = time.monotonic(), [], None
        for item in process.finetune(
            root=str(dataset),
            source=models[1],
            out=str(tmp_path / "second.keras"),
            epochs=1,
            seed=1,
            **TRAINING,
        ):  # seed: passed on to finetune
            if not isinstance(item, Waiting):
                first_report_seconds = first_report_seconds or time.monotonic() - started
                reports.append(item)
        return reports, first_report_seconds

    with ThreadPoolExecutor(1) as pool:
        training = pool.submit(second_run)
        segment_rounds = 0
        while not training.done() or segment_rounds == 0:
            for job, expected in zip(jobs, serial_results, strict=True):
                _assert_same_frames(_frames(process.segment(*job)), expected)
            segment_rounds += 1
            time.sleep(0.5)  # leave the training some of this machine's two cores
        reports, first_report_seconds = training.result()
    assert [(r["epoch"], r["epochs"]) for r in reports] == [(0, 1), (1, 1)], (
        "a report of the cancelled run reached the new one"
    )
    assert first_report_seconds < 30, "the new training waited for the cancelled one"
    assert segment_rounds > 1, "no segmentation ran while training"
    assert (tmp_path / "second.keras").is_file()


@pytest.mark.one_backend
def test_a_killed_child_names_the_log_and_the_next_job_starts_a_fresh_one(
    process, models, photos, jobs, serial_results
):
    results = process.segment(photos * 30, models[0])
    next(item for item in results if isinstance(item, Segmentation))
    killed_pid = process.pid
    os.kill(killed_pid, signal.SIGKILL)
    with pytest.raises(ModelProcessError) as error:
        list(results)
    message = str(error.value)
    assert "it was killed" in message and str(process.log_path) in message
    assert "\n" not in message
    assert not process.is_alive()
    _assert_same_frames(_frames(process.segment(*jobs[1])), serial_results[1])
    assert process.pid not in (None, killed_pid)


@pytest.mark.one_backend
def test_a_killed_training_process_names_the_log(process, dataset, models, tmp_path):
    reports = process.finetune(
        root=str(dataset), source=models[0], out=str(tmp_path / "k.keras"), epochs=1, **TRAINING
    )
    assert isinstance(next(reports), Waiting)  # the training process has started
    (trainer,) = process._trainers
    os.kill(trainer.process.pid, signal.SIGKILL)
    with pytest.raises(
        ModelProcessError, match="the training process stopped: it was killed"
    ) as error:
        list(reports)
    assert str(process.log_path) in str(error.value)
    assert not process._trainers


@pytest.mark.keras
def test_a_source_that_cannot_exist_is_refused_at_once(tmp_path, photos):
    process = ModelProcess()
    missing = tmp_path / "missing.keras"
    started = time.monotonic()
    with pytest.raises(ModelProcessError, match="missing.keras: no such file or folder; give a"):
        process.segment([photos[0]], str(missing))
    with pytest.raises(ModelProcessError, match="no such file"):
        process.finetune(
            root=str(tmp_path),
            source=str(missing),
            out=str(tmp_path / "o.keras"),
            epochs=1,
            **TRAINING,
        )
    photo_file = tmp_path / "photo.jpg"
    photo_file.write_bytes(b"x")
    with pytest.raises(ModelProcessError, match="not a model file"):
        process.segment([photos[0]], str(photo_file))
    assert time.monotonic() - started < 0.5
    assert process.pid is None and not process._trainers


def test_check_model_source(tmp_path):
    assert check_model_source(None) == check_model_source("") == DEFAULT_MODEL
    assert check_model_source("someone/their-model.v2") == "someone/their-model.v2"
    assert check_model_source(tmp_path) == str(tmp_path)
    (tmp_path / "m.keras").write_bytes(b"")
    assert check_model_source(str(tmp_path / "m.keras")) == str(tmp_path / "m.keras")
    for refused in (
        "./models/seed",
        "~/nope",
        "models/seed.keras",
        "a/b/c",
        "one word/x",
        str(tmp_path / "nope"),
    ):
        with pytest.raises(ValueError, match="no such file or folder") as error:
            check_model_source(refused)
        assert refused in str(error.value) and "\n" not in str(error.value)
    assert looks_like_hub_id(DEFAULT_MODEL) and not looks_like_hub_id("C:/models")


@pytest.mark.keras
def test_the_log_is_private_and_a_planted_link_is_never_followed(tmp_path, monkeypatch):
    process = ModelProcess()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    old_log = Path(tempfile.gettempdir()) / f"napari-deeplab-model-{os.getpid()}.log"
    if old_log.exists() or old_log.is_symlink():
        old_log.unlink()
    old_log.symlink_to(victim)
    try:
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # inherited by the child, never overridden
        process.start()
        assert _eventually(
            lambda: (
                f"process {process.pid} started; KERAS_BACKEND=jax" in process.log_path.read_text()
            )
        )
    finally:
        old_log.unlink()
    assert victim.read_text() == "precious\n"
    folder = process.log_path.parent
    assert folder == Path(platformdirs.user_log_dir("napari-deeplab"))
    assert folder.is_relative_to(os.environ["XDG_STATE_HOME"]) or sys.platform != "linux"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert process.log_path.stat().st_mode & 0o077 == 0
    if Path(f"/proc/{process.pid}/cmdline").exists():  # the key is not on the command line
        arguments = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1:-1]
        assert arguments == [b"-m", b"napari_deeplab.worker.child"]
    process.close()

    # a link planted at the new name is not followed either
    process.log_path.unlink()
    process.log_path.symlink_to(victim)
    with pytest.raises(ModelProcessError, match="cannot start the model process"):
        process.start()
    assert victim.read_text() == "precious\n"
    process.log_path.unlink()


PARENT = """
from napari_deeplab.worker import ModelProcess
process = ModelProcess()
process.start()
print(process.pid, flush=True)
input()
"""


@pytest.mark.keras
def test_the_child_exits_when_its_parent_dies():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert _pid_alive(child_pid)
        parent.kill()
        parent.wait()
        assert _eventually(lambda: not _pid_alive(child_pid), seconds=5)
    finally:
        parent.kill()
        parent.wait()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _eventually(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.keras
def test_a_cold_start_and_a_fine_tuning_report_their_stages(models, photos, dataset, tmp_path):
    """Issue 17, item 7: a wait over a second says what it waits for, from the child."""
    process = ModelProcess()
    try:
        stages = [
            item.stage
            for item in process.segment(photos[:1], models[0])
            if isinstance(item, Waiting) and item.stage
        ]
        assert stages[0] == "starting the model process"
        assert any(stage.startswith("loading ") and "first run only" in stage for stage in stages)
        assert "building the model from random0.keras" in stages
        assert stages[-1] == "loaded; running the model"
        again = [
            item.stage
            for item in process.segment(photos[:1], models[0])
            if isinstance(item, Waiting) and item.stage
        ]
        assert again == []  # warm: nothing to wait for

        steps = [
            item.stage
            for item in process.finetune(
                root=str(dataset),
                source=models[0],
                out=str(tmp_path / "tuned.keras"),
                epochs=1,
                **TRAINING,
            )
            if isinstance(item, Waiting) and item.stage
        ]
        assert steps[0] == "starting the training process"
        assert "validating the start model" in steps
        assert any(stage.startswith("epoch 1 of 1: step 1 of ") for stage in steps), steps
    finally:
        process.close()
