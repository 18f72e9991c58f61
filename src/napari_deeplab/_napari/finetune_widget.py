"""The "Fine-tune" widget: train the model on the corrected masks of a CIHP-format folder.

Training runs in the shared model process (never in napari's), with progress in the activity
panel, a live plot of the loss and the validation mean IoU, and Cancel. When it finishes the
new model is added to the recent models, so the Human parts widget offers it; re-running it
there keeps the annotator's edits.
"""

from __future__ import annotations

import time
from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..model_process import Waiting
from .job_controls import JobControls
from .model_process import shared_model_process
from .recent_models import recent_models, remember_model


class CurvePlot(QWidget):
    """Two curves against the epoch: the training loss (left scale) and the validation mean IoU
    (0..1, right scale)."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(140)
        self.loss: list[tuple[int, float]] = []
        self.miou: list[tuple[int, float]] = []
        self.setToolTip("Orange: training loss; blue: validation mean IoU (0 to 1)")

    def add(self, epoch: int, loss: float | None, miou: float) -> None:
        if loss is not None:
            self.loss.append((epoch, loss))
        self.miou.append((epoch, miou))
        self.update()

    def clear(self) -> None:
        self.loss.clear()
        self.miou.clear()
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width, height, margin = self.width(), self.height(), 8
        painter.setPen(QPen(QColor(120, 120, 120)))
        painter.drawRect(margin, margin, width - 2 * margin, height - 2 * margin)
        last_epoch = max([e for e, _ in self.miou] + [1])
        top_loss = max([v for _, v in self.loss] + [1e-6])

        def point(epoch, value, top):
            x = margin + (width - 2 * margin) * epoch / last_epoch
            y = height - margin - (height - 2 * margin) * min(value / top, 1.0)
            return QPointF(x, y)

        for values, top, colour in ((self.loss, top_loss, QColor(255, 140, 0)),
                                    (self.miou, 1.0, QColor(51, 170, 221))):
            painter.setPen(QPen(colour, 2))
            points = [point(e, v, top) for e, v in values]
            for start, end in zip(points, points[1:]):
                painter.drawLine(start, end)
            for p in points:
                painter.drawEllipse(p, 2, 2)
        painter.end()


class FinetuneWidget(QWidget):
    """Fine-tune the model on a dataset folder (Plugins > napari-deeplab > Fine-tune)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancelled = False

        self.root = QLineEdit()
        self.root.setPlaceholderText("CIHP-format dataset folder (e.g. the review queue's)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        root_row = QHBoxLayout()
        root_row.addWidget(self.root, 1)
        root_row.addWidget(browse)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(recent_models())
        self.model_combo.setToolTip("The model to start from")
        self.out = QLineEdit()
        self.out.setPlaceholderText("<dataset>/models/finetuned-<time>.keras")
        self.split = QLineEdit("Training")
        self.val_split = QLineEdit("Validation")
        self.val_split.setToolTip("Validation split; without one a fifth of the training samples "
                                  "is held out")
        self.epochs = QSpinBox(minimum=1, maximum=1000, value=10)
        self.batch_size = QSpinBox(minimum=1, maximum=256, value=4)
        self.image_size = QSpinBox(minimum=16, maximum=2048, singleStep=16, value=512)
        self.learning_rate = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, singleStep=1e-5,
                                            value=1e-4)
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Fine-tune in the model process; the best model by validation "
                                     "mean IoU is saved after each epoch")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop; the output file keeps the best model so far")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        self.plot = CurvePlot()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job = JobControls(self.train_button, self.cancel_button, self.status)

        form = QFormLayout()
        form.addRow("Dataset", root_row)
        form.addRow("Start from", self.model_combo)
        form.addRow("Save to", self.out)
        form.addRow("Split", self.split)
        form.addRow("Validation", self.val_split)
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Image size", self.image_size)
        form.addRow("Learning rate", self.learning_rate)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder")
        if folder:
            self.root.setText(folder)

    def is_running(self) -> bool:
        return self._worker is not None

    def output_path(self) -> str:
        text = self.out.text().strip()
        if text:
            return text
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return str(Path(self.root.text().strip()) / "models" / f"finetuned-{stamp}.keras")

    def train(self) -> None:
        if self.is_running():
            return
        root = self.root.text().strip()
        if not root or not Path(root).is_dir():
            show_error("choose the dataset folder to train on")
            return
        if self.image_size.value() % 16:
            show_error("the image size must be a multiple of 16")
            return
        out = self.output_path()
        if not out.endswith(".keras"):
            show_error("the output file must end in .keras")
            return
        options = dict(root=root, split=self.split.text().strip(),
                       val_split=self.val_split.text().strip() or None,
                       source=self.model_combo.currentText().strip() or None, out=out,
                       epochs=self.epochs.value(), batch_size=self.batch_size.value(),
                       image_size=self.image_size.value(), learning_rate=self.learning_rate.value())
        self.plot.clear()
        self._cancelled = False
        process = shared_model_process()

        def job():
            reports = process.finetune(**options)
            try:
                for item in reports:
                    if not isinstance(item, Waiting):
                        yield item
            finally:
                reports.close()

        worker = create_worker(job, _ignore_errors=True)
        worker.yielded.connect(lambda report: self._on_epoch(report, out))
        worker.errored.connect(lambda error: self._on_error(error))
        worker.finished.connect(lambda: self._on_finished(worker, out))
        self._worker = worker
        self.job.begin(options["epochs"] + 1, "Fine-tuning", f"Training → {out}")
        worker.start()

    def cancel(self) -> None:
        if not self.is_running():
            return
        self._cancelled = True
        self._worker.quit()
        self._worker = None
        self.job.end("Cancelled; the output file keeps the best model so far")

    def _on_epoch(self, report: dict, out: str) -> None:
        if self._cancelled:
            return
        self.plot.add(report["epoch"], report["loss"], report["val_miou"])
        self.job.advance()
        loss = "start" if report["loss"] is None else f"loss {report['loss']:.3f}"
        self.status.setText(f"epoch {report['epoch']}/{report['epochs']}: {loss}, validation mean "
                            f"IoU {report['val_miou']:.3f}{' (saved)' if report['saved'] else ''}")
        if report["saved"]:
            remember_model(out)

    def _on_error(self, error: Exception) -> None:
        show_error(str(error))
        self.status.setText(str(error))

    def _on_finished(self, worker, out: str) -> None:
        if worker is not self._worker:
            return
        self._worker = None
        self.job.end()
        if Path(out).exists() and not self._cancelled:
            remember_model(out)
            show_info(f"Fine-tuned model saved: {out}; choose it in Human parts to pre-label with it")
