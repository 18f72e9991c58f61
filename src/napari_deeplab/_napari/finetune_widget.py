"""The "Fine-tune" widget: train the model on the corrected masks of a CIHP-format folder.

Training runs in a process of its own (never in napari's), with progress in the activity
panel, a live plot of the loss and the validation mean IoU, and Cancel, which kills the
training at once. The saved model is offered in every model chooser (Human parts, Review
queue …); re-running it there keeps the annotator's edits.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from magicgui.widgets import Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

from ..training import (
    IMAGE_SIZE_MULTIPLE,
    TRAINING_SPLIT,
    VALIDATION_SPLIT,
    FinetuneSettings,
)
from .job_runner import Job, JobRefused, JobRunner, model_process_for
from .model_chooser import ModelChooser, remember_model
from .recent_datasets import DatasetChooser, remember_dataset
from .shortcuts import on_removed

LOSS_COLOUR, IOU_COLOUR = QColor(255, 140, 0), QColor(51, 170, 221)

DEFAULTS = FinetuneSettings()
"""Where the fields start: the fine-tuning defaults."""

MAX_EPOCHS, MAX_BATCH_SIZE = 1000, 256
"""The fields' upper bounds, beyond any run that makes sense here."""

MAX_IMAGE_SIZE = 2048
"""The largest training square offered: 16 times the pixels of the seed's 512."""

MIN_LEARNING_RATE, MAX_LEARNING_RATE, LEARNING_RATE_STEP = 1e-6, 1.0, 1e-5
"""The learning rate field's range and step (fine-tuning's useful rates lie well inside)."""

LEARNING_RATE_DECIMALS = 6
"""Decimals the learning rate field shows: enough for :data:`MIN_LEARNING_RATE`."""


class CurvePlot(QWidget):
    """The training loss (left axis) and the validation mean IoU (right axis, 0 to 1) against
    the epoch, with ticks and a legend."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(200)
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

    def plot_area(self) -> QRectF:
        """Where the curves go: room for the legend above, ticks on three sides."""
        line = self.fontMetrics().height()
        return QRectF(self.rect()).adjusted(
            6 + 4 * line, 1.6 * line, -(6 + 2.5 * line), -2.2 * line
        )

    def _top_loss(self) -> float:
        """The loss axis' top: a round number above the highest loss, so ticks are round."""
        highest = max([v for _, v in self.loss] + [1e-6]) * 1.05
        magnitude = 10 ** math.floor(math.log10(highest))
        return next(m * magnitude for m in (1, 2, 4, 6, 8, 10) if m * magnitude >= highest)

    def _epochs(self) -> range:
        last = max([e for e, _ in self.miou] + [1])
        return range(0, last + 1, max(1, round(last / 8)))

    def tick_labels(self) -> dict[str, list[str]]:
        """The labels of the loss (left), mean IoU (right) and epoch (bottom) ticks."""
        fractions = [step / 4 for step in range(5)]
        return {
            "loss": [f"{self._top_loss() * f:.3g}" for f in fractions] if self.loss else [],
            "mean IoU": [f"{f:g}" for f in fractions],
            "epoch": [str(e) for e in self._epochs()],
        }

    def legend(self) -> list[str]:
        return [name for name, _ in self.CURVES]

    CURVES = (("loss (left)", LOSS_COLOUR), ("validation mean IoU (right)", IOU_COLOUR))

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        ink = QPen(self.palette().windowText().color(), 1)
        line = painter.fontMetrics().height()
        area = self.plot_area()
        last_epoch, top_loss, labels = max(self._epochs()), self._top_loss(), self.tick_labels()

        def x(epoch):
            return area.left() + area.width() * epoch / last_epoch

        def y(value, top):
            return area.bottom() - area.height() * min(value / top, 1.0)

        painter.setPen(ink)
        painter.drawRect(area)
        for step, iou_label in enumerate(labels["mean IoU"]):
            tick_y = y(step / 4, 1.0)
            painter.drawLine(QPointF(area.left() - 3, tick_y), QPointF(area.left(), tick_y))
            painter.drawLine(QPointF(area.right(), tick_y), QPointF(area.right() + 3, tick_y))
            if labels["loss"]:
                painter.drawText(
                    QRectF(0, tick_y - line, area.left() - 5, 2 * line),
                    Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                    labels["loss"][step],
                )
            painter.drawText(
                QRectF(area.right() + 5, tick_y - line, 3 * line, 2 * line),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                iou_label,
            )
        for epoch in self._epochs():
            painter.drawLine(QPointF(x(epoch), area.bottom()), QPointF(x(epoch), area.bottom() + 3))
            painter.drawText(
                QRectF(x(epoch) - 2 * line, area.bottom() + 3, 4 * line, line),
                Qt.AlignmentFlag.AlignHCenter,
                str(epoch),
            )
        painter.drawText(
            QRectF(area.left(), area.bottom() + line, area.width(), 1.2 * line),
            Qt.AlignmentFlag.AlignHCenter,
            "epoch",
        )
        legend_x = area.left()
        for name, colour in self.CURVES:
            painter.setPen(QPen(colour, 2))
            painter.drawLine(QPointF(legend_x, 0.7 * line), QPointF(legend_x + 16, 0.7 * line))
            painter.setPen(ink)
            painter.drawText(QPointF(legend_x + 20, line), name)
            legend_x += 30 + painter.fontMetrics().horizontalAdvance(name)
        for values, top, colour in (
            (self.loss, top_loss, LOSS_COLOUR),
            (self.miou, 1.0, IOU_COLOUR),
        ):
            painter.setPen(QPen(colour, 2))
            points = [QPointF(x(e), y(v, top)) for e, v in values]
            for start, end in zip(points, points[1:], strict=False):
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
        self.out = LineEdit(
            label="Save to",
            tooltip="The .keras file to write (the best model by validation mean IoU)",
        )
        self.out.native.setPlaceholderText("<dataset>/models/finetuned-<time>.keras")
        self.split = LineEdit(value=TRAINING_SPLIT, label="Split", tooltip="The split to train on")
        self.val_split = LineEdit(
            value=VALIDATION_SPLIT,
            label="Validation",
            tooltip="Validation split; without one a fifth of the training samples is held out",
        )
        self.epochs = SpinBox(value=DEFAULTS.epochs, min=1, max=MAX_EPOCHS, label="Epochs")
        self.batch_size = SpinBox(
            value=DEFAULTS.batch_size, min=1, max=MAX_BATCH_SIZE, label="Batch size"
        )
        self.image_size = SpinBox(
            value=DEFAULTS.image_size,
            min=IMAGE_SIZE_MULTIPLE,
            max=MAX_IMAGE_SIZE,
            step=IMAGE_SIZE_MULTIPLE,
            label="Image size",
            tooltip=f"Photos are resized to this square (a multiple of {IMAGE_SIZE_MULTIPLE})",
        )
        self.learning_rate = FloatSpinBox(
            value=DEFAULTS.learning_rate,
            min=MIN_LEARNING_RATE,
            max=MAX_LEARNING_RATE,
            step=LEARNING_RATE_STEP,
            label="Learning rate",
        )
        self.learning_rate.native.setDecimals(LEARNING_RATE_DECIMALS)
        self.runner = JobRunner(
            self._prepare,
            run_text="Train",
            run_tooltip="Fine-tune in a training process; the best model by "
            "validation mean IoU is saved after each epoch",
            cancel_tooltip="Stop training at once; the output file keeps the best model so far",
        )
        super().__init__(
            widgets=[
                self.dataset,
                self.model,
                self.out,
                self.split,
                self.val_split,
                self.epochs,
                self.batch_size,
                self.image_size,
                self.learning_rate,
                self.runner,
            ]
        )
        self.plot = CurvePlot()
        self.native.layout().addWidget(self.plot)
        self._process = model_process_for(self)
        on_removed(self, self.runner.cancel)  # a closed viewer hears nothing more of the job

    def output_path(self) -> str:
        """The file to write: as typed, else a new one in the dataset's ``models`` folder."""
        typed = self.out.value.strip()
        if typed:
            return str(Path(typed).expanduser())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return str(Path(self.dataset.folder).expanduser() / "models" / f"finetuned-{stamp}.keras")

    def _prepare(self) -> Job:
        root = Path(self.dataset.folder).expanduser()
        if not self.dataset.folder:
            raise JobRefused("Choose the dataset folder to train on")
        if not root.is_dir():
            raise JobRefused(f"{root}: no such folder; choose the dataset folder to train on")
        if self.image_size.value % IMAGE_SIZE_MULTIPLE:
            raise JobRefused(f"The image size must be a multiple of {IMAGE_SIZE_MULTIPLE}")
        out = self.output_path()
        if not out.endswith(".keras"):
            raise JobRefused("The output file must end in .keras")
        if Path(out).exists():
            raise JobRefused(
                f"{out} exists; choose another file to save to, or clear the field for a new one"
            )
        folder = Path(out).parent
        try:  # refused now, not after the training
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as error:
            reason = f"{folder} is a file" if folder.is_file() else error.strerror
            raise JobRefused(
                f"Cannot save to {out} ({reason}); choose a file in a folder you can write to"
            ) from None
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        remember_dataset(root)
        settings = FinetuneSettings(
            epochs=self.epochs.value,
            batch_size=self.batch_size.value,
            image_size=self.image_size.value,
            learning_rate=self.learning_rate.value,
        )
        reports = self._process.finetune(
            root=str(root),
            split=self.split.value.strip(),
            val_split=self.val_split.value.strip() or None,
            source=source,
            out=out,
            settings=settings,
        )
        self.plot.clear()

        def show_epoch(report: dict) -> None:
            self.plot.add(report["epoch"], report["loss"], report["val_miou"])
            loss = "start" if report["loss"] is None else f"loss {report['loss']:.3f}"
            self.runner.status.value = (
                f"Epoch {report['epoch']}/{report['epochs']}: {loss}, validation mean IoU "
                f"{report['val_miou']:.3f}{' (saved)' if report['saved'] else ''}"
            )

        def done() -> str:
            if not Path(out).exists():
                raise ValueError(f"training ended without writing {out}")
            remember_model(out)
            return f"Saved {out}: choose it in Human parts to pre-label with it"

        return Job(
            reports,
            total=settings.epochs + 1,
            description="Fine-tuning",
            on_result=show_epoch,
            on_done=done,
            message=f"Training → {out}",
        )
