"""The "Fine-tune" widget: train the model on the corrected masks of a CIHP-format folder.

Training runs in a process of its own (never in napari's), with progress in the activity
panel, a live plot of the loss and the validation mean IoU, and Cancel, which kills the
training at once. The saved model is offered in every model chooser (Human parts, Review
queue …); re-running it there keeps the annotator's edits.
"""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

from .job_runner import Job, JobRefused, JobRunner, model_process_for
from .model_chooser import ModelChooser, remember_model
from .recent_datasets import DatasetChooser, remember_dataset

LOSS_COLOUR, IOU_COLOUR = QColor(255, 140, 0), QColor(51, 170, 221)


class CurvePlot(QWidget):
    """The training loss (left axis) and the validation mean IoU (right axis, 0 to 1) against
    the epoch, with ticks and a legend."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(170)
        self.loss: list[tuple[int, float]] = []
        self.miou: list[tuple[int, float]] = []

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
        text = self.palette().windowText().color()
        line = painter.fontMetrics().height()
        area = QRectF(self.rect()).adjusted(6 + 4 * line, line * 1.6, -(6 + 2.5 * line), -2.2 * line)
        last_epoch = max([e for e, _ in self.miou] + [1])
        top_loss = max([v for _, v in self.loss] + [1e-6]) * 1.1

        def x(epoch):
            return area.left() + area.width() * epoch / last_epoch

        def y(value, top):
            return area.bottom() - area.height() * min(value / top, 1.0)

        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        left = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        right = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        for step in range(5):  # horizontal ticks: loss on the left, mean IoU on the right
            fraction = step / 4
            tick_y = area.bottom() - area.height() * fraction
            painter.drawLine(QPointF(area.left() - 3, tick_y), QPointF(area.left(), tick_y))
            painter.drawLine(QPointF(area.right(), tick_y), QPointF(area.right() + 3, tick_y))
            painter.drawText(QRectF(0, tick_y - line, area.left() - 5, 2 * line), left,
                             f"{top_loss * fraction:.3g}" if self.loss else "")
            painter.drawText(QRectF(area.right() + 5, tick_y - line, 3 * line, 2 * line), right,
                             f"{fraction:g}")
        epochs = range(0, last_epoch + 1, max(1, round(last_epoch / 8)))
        for epoch in epochs:
            painter.drawLine(QPointF(x(epoch), area.bottom()), QPointF(x(epoch), area.bottom() + 3))
            painter.drawText(QRectF(x(epoch) - 2 * line, area.bottom() + 3, 4 * line, line),
                             Qt.AlignmentFlag.AlignHCenter, str(epoch))
        painter.drawText(QRectF(area.left(), area.bottom() + line, area.width(), line * 1.2),
                         Qt.AlignmentFlag.AlignHCenter, "epoch")
        legend_x = area.left()
        for name, colour in (("loss (left)", LOSS_COLOUR), ("validation mean IoU (right)",
                                                            IOU_COLOUR)):
            painter.setPen(QPen(colour, 2))
            painter.drawLine(QPointF(legend_x, line * 0.7), QPointF(legend_x + 16, line * 0.7))
            painter.setPen(QPen(text, 1))
            painter.drawText(QPointF(legend_x + 20, line), name)
            legend_x += 30 + painter.fontMetrics().horizontalAdvance(name)
        for values, top, colour in ((self.loss, top_loss, LOSS_COLOUR), (self.miou, 1.0, IOU_COLOUR)):
            painter.setPen(QPen(colour, 2))
            points = [QPointF(x(e), y(v, top)) for e, v in values]
            for start, end in zip(points, points[1:]):
                painter.drawLine(start, end)
            for point in points:
                painter.drawEllipse(point, 2, 2)
        painter.end()


class FinetuneWidget(Container):
    """Fine-tune the model on a dataset folder (Plugins > napari-deeplab > Fine-tune)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.dataset = DatasetChooser()
        self.model = ModelChooser(label="Start from", tooltip="The model to start from")
        self.out = LineEdit(label="Save to", tooltip="The .keras file to write (the best model "
                                                     "by validation mean IoU)")
        self.out.native.setPlaceholderText("<dataset>/models/finetuned-<time>.keras")
        self.split = LineEdit(value="Training", label="Split", tooltip="The split to train on")
        self.val_split = LineEdit(value="Validation", label="Validation",
                                  tooltip="Validation split; without one a fifth of the "
                                          "training samples is held out")
        self.epochs = SpinBox(value=10, min=1, max=1000, label="Epochs")
        self.batch_size = SpinBox(value=4, min=1, max=256, label="Batch size")
        self.image_size = SpinBox(value=512, min=16, max=2048, step=16, label="Image size",
                                  tooltip="Photos are resized to this square (a multiple of 16)")
        self.learning_rate = FloatSpinBox(value=1e-4, min=1e-6, max=1.0, step=1e-5,
                                          label="Learning rate")
        self.learning_rate.native.setDecimals(6)
        self.runner = JobRunner(self._prepare, run_text="Train",
                                run_tooltip="Fine-tune in a training process; the best model by "
                                            "validation mean IoU is saved after each epoch",
                                cancel_tooltip="Stop training at once; the output file keeps "
                                               "the best model so far")
        super().__init__(widgets=[self.dataset, self.model, self.out, self.split, self.val_split,
                                  self.epochs, self.batch_size, self.image_size,
                                  self.learning_rate, self.runner])
        self.plot = CurvePlot()
        self.native.layout().addWidget(self.plot)
        self._process = model_process_for(self)

    def output_path(self) -> str:
        """The file to write: as typed, else a new one in the dataset's ``models`` folder."""
        typed = self.out.value.strip()
        if typed:
            return str(Path(typed).expanduser())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return str(Path(self.dataset.folder).expanduser() / "models" / f"finetuned-{stamp}.keras")

    def _prepare(self) -> Job:
        root = Path(self.dataset.folder).expanduser()
        if not self.dataset.folder or not root.is_dir():
            raise JobRefused("Choose the dataset folder to train on")
        if self.image_size.value % 16:
            raise JobRefused("The image size must be a multiple of 16")
        out = self.output_path()
        if not out.endswith(".keras"):
            raise JobRefused("The output file must end in .keras")
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        remember_dataset(root)
        epochs = self.epochs.value
        reports = self._process.finetune(
            root=str(root), split=self.split.value.strip(),
            val_split=self.val_split.value.strip() or None, source=source, out=out,
            epochs=epochs, batch_size=self.batch_size.value, image_size=self.image_size.value,
            learning_rate=self.learning_rate.value)
        self.plot.clear()

        def show_epoch(report: dict) -> None:
            self.plot.add(report["epoch"], report["loss"], report["val_miou"])
            loss = "start" if report["loss"] is None else f"loss {report['loss']:.3f}"
            self.runner.status.value = (
                f"Epoch {report['epoch']}/{report['epochs']}: {loss}, validation mean IoU "
                f"{report['val_miou']:.3f}{' (saved)' if report['saved'] else ''}")

        def done() -> str:
            if not Path(out).exists():
                raise ValueError(f"training ended without writing {out}")
            remember_model(out)
            return f"Saved {out}: choose it in Human parts to pre-label with it"

        return Job(reports, total=epochs + 1, description="Fine-tuning", on_result=show_epoch,
                   on_done=done, message=f"Training → {out}")
