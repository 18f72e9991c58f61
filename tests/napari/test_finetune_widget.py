"""The Fine-tune widget trains in the model process on real CIHP samples."""

from pathlib import Path

from napari_deeplab._napari.finetune_widget import FinetuneWidget
from napari_deeplab._napari.prelabel_widget import PrelabelWidget

TIMEOUT_MS = 300_000


def _widget(viewer, root, model, out, epochs):
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.root.setText(str(root))
    widget.model_combo.setCurrentText(model)
    widget.out.setText(str(out))
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(2)
    widget.image_size.setValue(64)
    widget.learning_rate.setValue(1e-3)
    return widget


def test_training_plots_saves_and_offers_the_model(make_napari_viewer, qtbot, cihp_samples,
                                                   model_file, tmp_path):
    viewer = make_napari_viewer()
    prelabel = PrelabelWidget(viewer)
    out = tmp_path / "tuned.keras"
    widget = _widget(viewer, cihp_samples, model_file, out, epochs=2)
    widget.train()
    assert widget.is_running()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=TIMEOUT_MS)
    assert out.exists(), widget.status.text()
    assert [epoch for epoch, _ in widget.plot.miou] == [0, 1, 2]
    assert [epoch for epoch, _ in widget.plot.loss] == [1, 2]
    texts = [prelabel.model_combo.itemText(i) for i in range(prelabel.model_combo.count())]
    assert str(out) in texts  # the new model is offered for pre-labelling
    assert "tensorflow" not in __import__("sys").modules


def test_cancel_stops_at_once_and_keeps_the_best_model(make_napari_viewer, qtbot, cihp_samples,
                                                       model_file, tmp_path):
    viewer = make_napari_viewer()
    out = tmp_path / "tuned.keras"
    widget = _widget(viewer, cihp_samples, model_file, out, epochs=50)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.miou) >= 2, timeout=TIMEOUT_MS)
    widget.cancel()
    assert not widget.is_running() and widget.train_button.isEnabled()
    assert Path(out).exists()  # the best model so far
    qtbot.wait(500)


def test_a_folder_without_samples_is_reported(make_napari_viewer, qtbot, model_file, tmp_path):
    viewer = make_napari_viewer()
    widget = _widget(viewer, tmp_path, model_file, tmp_path / "x.keras", epochs=1)
    widget.train()
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=TIMEOUT_MS)
    assert "no labelled samples" in widget.status.text()
