"""The Fine-tune widget, opened from the Plugins menu and driven through its fields and buttons,
trains in its own process on the real CIHP samples."""

import sys
import time

import numpy as np
from qtpy.QtGui import QColor

from napari_deeplab._napari.recent_datasets import recent_datasets

from .conftest import JOB_TIMEOUT_MS


def _fill(widget, root, model, out, epochs):
    widget.dataset.folder = str(root)
    widget.model.source = model
    widget.out.value = str(out)
    widget.epochs.value = epochs
    widget.batch_size.value = 2
    widget.image_size.value = 64
    widget.learning_rate.value = 1e-3


def test_training_plots_saves_and_offers_the_model(
    make_napari_viewer, dock_plugin, run_job, cihp_samples, model_file, tmp_path
):
    viewer = make_napari_viewer()
    _, prelabel = dock_plugin(viewer, "Human parts")
    _, widget = dock_plugin(viewer, "Fine-tune")
    out = tmp_path / "tuned.keras"
    _fill(widget, cihp_samples, model_file, out, epochs=2)
    assert run_job(widget.runner, timeout_ms=300_000).startswith("Saved")
    assert out.exists()
    assert [epoch for epoch, _ in widget.plot.miou] == [0, 1, 2]
    assert [epoch for epoch, _ in widget.plot.loss] == [1, 2]
    assert str(out) in prelabel.model.combo.choices  # offered for pre-labelling at once
    assert str(cihp_samples) in recent_datasets()  # and the dataset next time
    assert str(cihp_samples) in widget.dataset.combo.choices
    assert "tensorflow" not in sys.modules


def test_the_dataset_field_offers_the_recent_datasets(
    make_napari_viewer, dock_plugin, cihp_samples, tmp_path
):
    """Requirement 3: the Review queue remembers the dataset it opens; Fine-tune offers it."""
    from napari_deeplab._napari.recent_datasets import remember_dataset

    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Fine-tune")
    remember_dataset(tmp_path)  # what the Review queue does when a queue is opened
    assert str(tmp_path) in widget.dataset.combo.choices
    widget.dataset.combo.value = str(tmp_path)
    assert widget.dataset.folder == str(tmp_path)
    _, another = dock_plugin(make_napari_viewer(), "Fine-tune")
    assert another.dataset.folder == str(tmp_path)  # the most recent one comes first
    widget.out.value = ""
    assert widget.output_path().startswith(str(tmp_path / "models" / "finetuned-"))


def test_cancel_stops_training_at_once_and_the_next_run_plots_alone(
    make_napari_viewer, dock_plugin, run_job, qtbot, cihp_samples, model_file, tmp_path, capsys
):
    """Issue 9, item 3."""
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Fine-tune")
    out = tmp_path / "tuned.keras"
    _fill(widget, cihp_samples, model_file, out, epochs=50)
    widget.runner.run_button.native.click()
    qtbot.waitUntil(lambda: len(widget.plot.miou) >= 2, timeout=JOB_TIMEOUT_MS)  # epoch 1 done
    qtbot.waitUntil(out.exists, timeout=10_000)
    widget.runner.cancel_button.native.click()
    assert not widget.runner.running and widget.runner.run_button.enabled
    assert widget.runner.status.value == "Cancelled"
    written = out.stat().st_mtime_ns
    qtbot.wait(4000)
    assert out.stat().st_mtime_ns == written, "the cancelled training rewrote its output"

    widget.epochs.value = 1
    widget.runner.run_button.native.click()
    assert (
        widget.runner.status.value.startswith("Failed: ") and "exists" in widget.runner.status.value
    )
    widget.out.value = str(tmp_path / "second.keras")
    start = time.perf_counter()
    widget.runner.run_button.native.click()
    assert widget.runner.running and widget.plot.miou == []
    qtbot.waitUntil(lambda: len(widget.plot.miou) > 0, timeout=JOB_TIMEOUT_MS)
    first_report = time.perf_counter() - start
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=JOB_TIMEOUT_MS)
    with capsys.disabled():
        print(f"\n[measured] the next Train's first report {first_report:.1f} s after Train")
    assert widget.runner.status.value.startswith("Saved"), widget.runner.status.value
    assert [epoch for epoch, _ in widget.plot.miou] == [0, 1]  # the new run only
    assert [epoch for epoch, _ in widget.plot.loss] == [1]


def test_closing_the_viewer_while_training_stops_it_without_a_word(
    make_napari_viewer,
    dock_plugin,
    qtbot,
    cihp_samples,
    model_file,
    tmp_path,
    monkeypatch,
    child_processes,
):
    """No traceback from a job ending after its widget is gone, no "Failed" notification, and
    the training process stops."""
    from napari_deeplab._napari import job_runner

    errors = []
    monkeypatch.setattr(job_runner, "show_error", errors.append)
    children = child_processes()
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Fine-tune")
    _fill(widget, cihp_samples, model_file, tmp_path / "x.keras", epochs=50)
    widget.runner.run_button.native.click()
    qtbot.waitUntil(lambda: bool(child_processes() - children), timeout=30_000)
    viewer.close()
    qtbot.waitUntil(lambda: not child_processes() - children, timeout=10_000)
    qtbot.wait(1000)  # the worker's end arrives after the widget is gone
    assert errors == []


def test_a_folder_without_samples_fails(
    make_napari_viewer, dock_plugin, run_job, model_file, tmp_path
):
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Fine-tune")
    _fill(widget, tmp_path, model_file, tmp_path / "x.keras", epochs=1)
    status = run_job(widget.runner, timeout_ms=300_000)
    assert status.startswith("Failed: ") and "no labelled samples" in status


def test_wrong_fields_are_refused_at_once(
    make_napari_viewer, dock_plugin, child_processes, cihp_samples, model_file, tmp_path
):
    viewer = make_napari_viewer()
    _, widget = dock_plugin(viewer, "Fine-tune")
    (tmp_path / "a file").write_text("")
    children = child_processes()
    for field, value, message in (
        ("dataset", tmp_path / "nowhere", "nowhere: no such folder; choose"),
        ("model", str(tmp_path / "no.keras"), "no such file"),
        ("out", str(tmp_path / "model.h5"), "must end in .keras"),
        (
            "out",
            str(tmp_path / "a file" / "x.keras"),
            "a file is a file); choose a file in a folder you can write",
        ),
    ):
        _fill(widget, cihp_samples, model_file, tmp_path / "x.keras", epochs=1)
        if field == "dataset":
            widget.dataset.folder = str(value)
        elif field == "model":
            widget.model.source = value
        else:
            widget.out.value = value
        widget.runner.run_button.native.click()
        assert not widget.runner.running
        assert widget.runner.status.value.startswith("Failed: ")
        assert message in widget.runner.status.value
    assert child_processes() <= children


def test_the_plot_has_axes_ticks_and_a_legend(make_napari_viewer, dock_plugin, qtbot):
    """Issue 9, item 9: labelled axes (epoch; loss left, mean IoU 0-1 right) and a legend."""
    viewer = make_napari_viewer(show=True)
    _, widget = dock_plugin(viewer, "Fine-tune")
    plot = widget.plot
    for epoch, loss, miou in ((0, None, 0.1), (1, 1.5, 0.3), (2, 0.9, 0.45), (3, 0.7, 0.5)):
        plot.add(epoch, loss, miou)
    qtbot.wait(50)
    image = plot.grab().toImage()
    pixels = np.array(
        [
            [QColor(image.pixel(x, y)).getRgb()[:3] for x in range(image.width())]
            for y in range(image.height())
        ]
    )
    background = np.median(pixels.reshape(-1, 3), axis=0)
    ink = np.abs(pixels - background).sum(axis=2) > 60
    area = plot.plot_area()
    left, right = ink[:, : int(area.left()) - 4], ink[:, int(area.right()) + 4 :]
    below = ink[int(area.bottom()) + 4 :, :]
    assert left.sum() > 50, "no loss tick labels on the left"
    assert right.sum() > 50, "no mean IoU tick labels on the right"
    assert below.sum() > 50, "no epoch ticks or axis label"
    assert plot.tick_labels() == {
        "loss": ["0", "0.5", "1", "1.5", "2"],
        "mean IoU": ["0", "0.25", "0.5", "0.75", "1"],
        "epoch": ["0", "1", "2", "3"],
    }
    assert plot.legend() == ["loss (left)", "validation mean IoU (right)"]
