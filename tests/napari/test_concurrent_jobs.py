"""Three widgets using the model process at once, as an annotator does: the Review queue
pre-labels ahead while Human parts runs and Fine-tune trains. Twenty rounds, every result
checked against the same jobs run one after another."""

import numpy as np
from PIL import Image

from napari_deeplab import cihp
from napari_deeplab.inference import Segmentation
from napari_deeplab.worker import ModelProcess

from .conftest import JOB_TIMEOUT_MS

ROUNDS = 20
TRAINING = dict(
    split="Training", val_split=None, epochs=1, batch_size=2, image_size=32, learning_rate=1e-3
)


def _photos(cihp_samples, count: int) -> dict[str, np.ndarray]:
    """``count`` small distinct photos cut from the real CIHP photos: {id: H x W x 3 uint8}."""
    sources = [np.asarray(Image.open(path)) for path in sorted((cihp_samples / "Images").glob("*"))]
    photos = {}
    for index in range(count):
        source = sources[index % len(sources)]
        top, left = 7 * index % (source.shape[0] - 96), 11 * index % (source.shape[1] - 80)
        photos[f"p{index:02d}"] = np.ascontiguousarray(source[top : top + 96, left : left + 80])
    return photos


def _serial_results(
    photos: dict[str, np.ndarray], model: str, root, out
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The jobs run one after another in one model process of the test's own: ({id: labels}
    of each photo, then the training's reports)."""
    process = ModelProcess()
    try:
        labels = {
            sample_id: next(
                r for r in process.segment([photo], model) if isinstance(r, Segmentation)
            ).labels
            for sample_id, photo in photos.items()
        }
        return labels, [
            r
            for r in process.finetune(root=str(root), source=model, out=str(out), **TRAINING)
            if isinstance(r, dict)
        ]
    finally:
        process.close()


def test_review_queue_human_parts_and_fine_tune_at_once(
    make_napari_viewer, dock_plugin, qtbot, cihp_samples, model_file, tmp_path
):
    photos = _photos(cihp_samples, ROUNDS + 2)
    folder = tmp_path / "photos"
    folder.mkdir()
    for sample_id, photo in photos.items():
        Image.fromarray(photo).save(folder / f"{sample_id}.png")
    training_root = tmp_path / "training"
    for sample_id in ("0002190", "0005008", "0026375"):
        sample = cihp.read_sample(cihp_samples, sample_id, split=None)
        cihp.write_sample(
            training_root, sample_id, sample.category_ids, image_path=sample.image_path
        )
    expected, expected_training = _serial_results(
        photos, model_file, training_root, tmp_path / "serial.keras"
    )
    assert [r["epoch"] for r in expected_training] == [0, 1]

    viewer = make_napari_viewer()
    _, review = dock_plugin(viewer, "Review queue")
    _, parts = dock_plugin(viewer, "Human parts")
    _, finetune = dock_plugin(viewer, "Fine-tune")
    parts.model.source = finetune.model.source = model_file
    finetune.dataset.folder = str(training_root)
    for name, value in TRAINING.items():
        if name != "val_split":
            getattr(finetune, name).value = value
    finetune.val_split.value = ""
    trainings = []  # (output file, the epochs and mean IoUs its plot received)

    def check_last_training():
        out, plotted = trainings[-1]
        assert finetune.runner.status.value.startswith("Saved"), finetune.runner.status.value
        assert out.exists()
        assert [epoch for epoch, _ in plotted] == [r["epoch"] for r in expected_training]
        np.testing.assert_allclose(
            [miou for _, miou in plotted], [r["val_miou"] for r in expected_training], atol=1e-4
        )

    def keep_training():
        if finetune.runner.running:
            return
        if trainings:
            check_last_training()
        out = tmp_path / f"tuned{len(trainings)}.keras"
        finetune.out.value = str(out)
        finetune.runner.run_button.native.click()
        assert finetune.runner.running, finetune.runner.status.value
        trainings.append((out, finetune.plot.miou))

    review.photos.value = folder
    review.dataset.value = tmp_path / "dataset"
    review.model.source = model_file
    for round_ in range(ROUNDS):
        name = f"round {round_}"
        viewer.add_image(photos[f"p{round_:02d}"], name=name)
        parts.image.value = viewer.layers[name]
        if round_ == 0:
            review.open_button.native.click()  # the queue pre-labels p00 and p01
        else:
            review.next_button.native.click()  # ... then each next photo
        parts.runner.run_button.native.click()
        keep_training()  # a run that ended meanwhile is checked and the next one starts
        assert parts.runner.running and finetune.runner.running
        qtbot.waitUntil(
            lambda: not parts.runner.running and not review.prelabelling, timeout=JOB_TIMEOUT_MS
        )
        assert parts.runner.status.value.startswith("Done"), parts.runner.status.value
        np.testing.assert_array_equal(
            viewer.layers[f"{name} parts"].data, expected[f"p{round_:02d}"], err_msg=name
        )
        for sample_id in (f"p{round_:02d}", f"p{round_ + 1:02d}"):
            draft = review.queue.load_draft(sample_id)
            assert draft is not None, f"{name}: no draft of {sample_id}"
            np.testing.assert_array_equal(
                draft, expected[sample_id], err_msg=f"{name}: {sample_id}"
            )
    qtbot.waitUntil(lambda: not finetune.runner.running, timeout=JOB_TIMEOUT_MS)
    check_last_training()
    assert len(trainings) >= 2
