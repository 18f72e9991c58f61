"""The "Human parts" widget: run the model on an image layer and get an editable parts layer.

The model runs in the shared model process (TensorFlow never loads in napari's); this widget
only collects the frames, drives the job from a napari worker thread, and writes each result
into the parts layer with ``data_setitem`` (one undo step per frame), keeping the pixels the
annotator edited unless "Discard my edits" is ticked.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QListWidget, QListWidgetItem, QPushButton, QRadioButton, QVBoxLayout,
                            QWidget)

from ..cihp import CLASS_NAMES, PALETTE
from ..model_process import FrameResult, ModelProcessError
from .job_controls import JobControls
from .model_process import shared_model_process
from .parts_layer import (CONFIDENCE_SUFFIX, PARTS_SUFFIX, apply_prediction, edit_tracker,
                          parts_colormap, parts_features)
from .recent_models import events as recent_model_events
from .recent_models import recent_models, remember_model

RUN_KEY = "Shift-R"
NEXT_CLASS_KEY = "Shift-Down"
PREVIOUS_CLASS_KEY = "Shift-Up"


def frame_count(layer: Image) -> int | None:
    """Frames of a stack (N x H x W [x 3|4]), or None for a single photo."""
    spatial = layer.data.ndim - (1 if layer.rgb else 0)
    if spatial == 2:
        return None
    if spatial == 3:
        return layer.data.shape[0]
    raise ValueError(f"{layer.name}: expected a photo or a stack of photos, got "
                     f"{layer.data.ndim}-D data")


def _stop_model_process(*_) -> None:
    shared_model_process().close()


class PrelabelWidget(QWidget):
    """Pre-label human parts in the selected image layer (Plugins > napari-deeplab > Human parts)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._process = shared_model_process()
        self._worker = None
        self._cancel = threading.Event()
        self._hidden: set[int] = set()
        self._pending_confidence: list = []
        self._confidence_timer = QTimer(self)
        self._confidence_timer.setSingleShot(True)
        self._confidence_timer.setInterval(0)
        self._confidence_timer.timeout.connect(self._write_pending_confidence)

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The photo (or stack of frames) to pre-label")
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(recent_models())
        self.model_combo.setToolTip("A Hugging Face hub id, a SavedModel folder or a .keras file; "
                                    "the models used recently are listed")
        browse_file = QPushButton("File…")
        browse_file.setToolTip("Choose a .keras model file")
        browse_file.clicked.connect(self._browse_model_file)
        browse_folder = QPushButton("Folder…")
        browse_folder.setToolTip("Choose a SavedModel folder (e.g. a local copy of the seed model)")
        browse_folder.clicked.connect(self._browse_model_folder)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(browse_file)
        model_row.addWidget(browse_folder)

        self.current_frame = QRadioButton("Current frame")
        self.all_frames = QRadioButton("All frames")
        self.current_frame.setChecked(True)
        frames_row = QHBoxLayout()
        frames_row.addWidget(self.current_frame)
        frames_row.addWidget(self.all_frames)
        self.discard_edits = QCheckBox("Discard my edits")
        self.discard_edits.setToolTip("Unticked (default): pixels you painted, filled, erased or "
                                      "refined keep their value when the model runs again")

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip(f"Pre-label the image ({RUN_KEY})")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running prediction; finished frames are kept")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job = JobControls(self.run_button, self.cancel_button, self.status)

        self.legend = QListWidget()
        self.legend.setToolTip(f"Click a class to paint with it ({PREVIOUS_CLASS_KEY} / "
                               f"{NEXT_CLASS_KEY} cycle); untick to hide it")
        for value, name in enumerate(CLASS_NAMES):
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(*PALETTE[value]))
            item = QListWidgetItem(QIcon(swatch), f"{value:2d}  {name}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.legend.addItem(item)
        self.legend.currentRowChanged.connect(self._select_paint_class)
        self.legend.itemChanged.connect(self._toggle_class)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", model_row)
        form.addRow("Frames", frames_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.discard_edits)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Classes"))
        layout.addWidget(self.legend, 1)

        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered):
            event.connect(self._refresh_images)
        self.viewer.layers.selection.events.active.connect(self._refresh_images)
        self.image_combo.currentIndexChanged.connect(self._update_frames_choice)
        self._refresh_images()
        refresh = self._refresh_models
        recent_model_events.changed.connect(refresh)
        self.destroyed.connect(lambda *_: recent_model_events.changed.disconnect(refresh))
        self.destroyed.connect(_stop_model_process)  # the viewer closed
        self.viewer.bind_key(RUN_KEY, lambda viewer: self.run(), overwrite=True)
        self.viewer.bind_key(NEXT_CLASS_KEY, lambda viewer: self.cycle_class(1), overwrite=True)
        self.viewer.bind_key(PREVIOUS_CLASS_KEY, lambda viewer: self.cycle_class(-1), overwrite=True)

    # --- layers ------------------------------------------------------------------------------

    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)
                and not layer.name.endswith(CONFIDENCE_SUFFIX)]

    def _refresh_images(self, event=None) -> None:
        images = self._image_layers()
        names = [layer.name for layer in images]
        active = self.viewer.layers.selection.active
        wanted = active.name if isinstance(active, Image) and active.name in names \
            else self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if wanted in names:
            self.image_combo.setCurrentText(wanted)
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)
        self.image_combo.blockSignals(False)
        self._update_frames_choice()

    def _update_frames_choice(self, *_) -> None:
        image = self.image_layer()
        try:
            is_stack = image is not None and frame_count(image) is not None
        except ValueError:
            is_stack = False
        self.current_frame.setEnabled(is_stack)
        self.all_frames.setEnabled(is_stack)

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def parts_layer(self, image: Image | None = None) -> Labels | None:
        image = image or self.image_layer()
        if image is None:
            return None
        name = image.name + PARTS_SUFFIX
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Labels) else None

    # --- model choice ------------------------------------------------------------------------

    def _refresh_models(self) -> None:
        """List the recent models (a fine-tuned one appears here), keeping the current choice."""
        current = self.model_combo.currentText()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(recent_models())
        self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)

    def _browse_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", "Keras models (*.keras)")
        if path:
            self.model_combo.setCurrentText(path)

    def _browse_model_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "SavedModel folder")
        if path:
            self.model_combo.setCurrentText(path)

    # --- running -----------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._worker is not None

    def run(self) -> None:
        """Start predicting the chosen image (or frames) in the model process."""
        if self.is_running():
            return
        image = self.image_layer()
        if image is None:
            show_info("Open a photo first (File > Open, or File > Open Sample > napari-deeplab)")
            return
        try:
            frames = frame_count(image)
        except ValueError as error:
            show_error(str(error))
            return
        if frames is None:
            indices, photos = [None], [np.asarray(image.data)]
        else:
            indices = list(range(frames)) if self.all_frames.isChecked() \
                else [self.viewer.dims.current_step[0]]
            photos = [np.asarray(image.data[i]) for i in indices]
        source = self.model_combo.currentText().strip() or None

        self._cancel.clear()
        self.job.begin(len(photos), f"Pre-labelling {image.name}", f"Running on {len(photos)} frame(s)…")
        worker = create_worker(self._job, photos, source, self._cancel, _ignore_errors=True)
        worker.yielded.connect(lambda item: self._on_result(item, image, indices, source))
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        worker.start()

    def _job(self, photos, source, cancel):
        results = self._process.segment(photos, source)
        try:
            for item in results:
                if cancel.is_set():
                    return
                if isinstance(item, FrameResult):
                    yield item
        finally:
            results.close()

    def cancel(self) -> None:
        """Stop the running job at once; frames already written stay."""
        if not self.is_running():
            return
        self._cancel.set()
        self._worker.quit()
        self.job.end("Cancelled")
        self._worker = None

    def _on_result(self, result: FrameResult, image: Image, indices: list, source) -> None:
        if self._cancel.is_set():
            return
        frame = indices[result.index]
        self.job.advance()  # first: napari's progress bar processes pending events
        self._write_result(image, frame, result)
        if source:
            remember_model(source)

    def _write_result(self, image: Image, frame: int | None, result: FrameResult) -> None:
        parts = self.parts_layer(image)
        expected = image.data.shape[: image.data.ndim - (1 if image.rgb else 0)]
        if parts is not None and parts.data.shape != expected:
            show_error(f"{parts.name} has shape {parts.data.shape}, not the image's {expected}; "
                       "rename or remove it and run again")
            self.cancel()
            return
        created = parts is None
        if created:
            # a new layer takes the prediction as its data: nothing to undo or merge, and a
            # 12-megapixel data_setitem would freeze the viewer for seconds
            data = result.labels if frame is None else np.zeros(expected, np.uint8)
            parts = self.viewer.add_labels(
                data, name=image.name + PARTS_SUFFIX, colormap=parts_colormap(self._hidden),
                features=parts_features(), scale=image.scale, translate=image.translate, opacity=0.6)
            edit_tracker(parts)
            self.viewer.layers.selection.active = parts
            self._select_paint_class(max(self.legend.currentRow(), 1))
        if frame is not None or not created:
            apply_prediction(parts, result.labels, frame,
                             keep_edits=not self.discard_edits.isChecked())
        # the confidence layer in a later turn of the event loop, so that no turn does both
        self._pending_confidence.append((image, frame, result.confidence, expected))
        self._confidence_timer.start()

    def _write_pending_confidence(self) -> None:
        if getattr(self.viewer.window, "_qt_window", None) is None:
            return  # the viewer was closed in between (napari deletes _qt_window on close)
        while self._pending_confidence:
            self._write_confidence(*self._pending_confidence.pop(0))

    def _write_confidence(self, image: Image, frame, confidence: np.ndarray, shape) -> None:
        if image not in self.viewer.layers:
            return
        layer = self._confidence_layer(image, shape)
        if frame is None:
            layer.data = confidence
        else:
            layer.data[frame] = confidence
            layer.refresh()

    def _confidence_layer(self, image: Image, shape) -> Image:
        """The image's confidence layer (hidden at first), made or remade to ``shape``."""
        name = image.name + CONFIDENCE_SUFFIX
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or layer.data.shape != tuple(shape):
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(np.zeros(shape, np.float32), name=name, colormap="inferno",
                                          contrast_limits=(0, 1), visible=False, scale=image.scale,
                                          translate=image.translate)
            self.viewer.layers.move(self.viewer.layers.index(layer),
                                    self.viewer.layers.index(image.name) + 1)
            parts = self.parts_layer(image)
            if parts is not None:
                self.viewer.layers.selection.active = parts  # keep painting where you were
        return layer

    def _on_error(self, error: Exception) -> None:
        message = str(error) if isinstance(error, ModelProcessError) else \
            f"pre-labelling failed: {type(error).__name__}: {error}"
        show_error(message)
        self.status.setText(message)

    def _on_finished(self, worker) -> None:
        if worker is not self._worker:
            return  # a cancelled job winding down
        self._worker = None
        if not self.status.text().startswith(("the model process", "pre-labelling failed")) \
                and not self._cancel.is_set():
            self.job.end("Done: correct the parts layer, every step undoable (Ctrl+Z)")
        else:
            self.job.end()

    # --- legend ------------------------------------------------------------------------------

    def cycle_class(self, step: int) -> None:
        """Select the next (``step`` = 1) or previous (-1) class as the paint label."""
        current = max(self.legend.currentRow(), 0)
        self.legend.setCurrentRow((current + step) % len(CLASS_NAMES))

    def _select_paint_class(self, value: int) -> None:
        if value < 0:
            return
        if self.legend.currentRow() != value:
            self.legend.setCurrentRow(value)
            return
        parts = self.parts_layer()
        if parts is not None:
            parts.selected_label = value

    def _toggle_class(self, item: QListWidgetItem) -> None:
        value = self.legend.row(item)
        if item.checkState() == Qt.CheckState.Checked:
            self._hidden.discard(value)
        else:
            self._hidden.add(value)
        parts = self.parts_layer()
        if parts is not None:
            parts.colormap = parts_colormap(self._hidden)
