"""The "Refine parts" widget: fix a pre-label with one action per typical model mistake.

Each operation of :mod:`napari_deeplab.refine` applies to the whole parts layer (the current
frame of a stack), to the shapes of a selection Shapes layer, or to the connected region last
clicked; it runs off the GUI thread and lands as one ``data_setitem``: one undo step, and
pixels the next model run will keep (they count as the annotator's edits).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QLabel,
                            QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget)
from skimage import measure
from skimage.segmentation import flood

from .. import refine
from ..cihp import CLASS_NAMES
from .parts_layer import CONFIDENCE_SUFFIX, PARTS_SUFFIX, parts_colormap, parts_features

SELECTION_SUFFIX = " selection"
SCRIBBLES_SUFFIX = " scribbles"
SHORTCUTS = {
    "remove_small_regions": "Shift-1", "fill_holes": "Shift-2", "smooth": "Shift-3",
    "snap_to_image": "Shift-4", "swap_left_right": "Shift-5", "relabel": "Shift-6",
    "refine_with_scribbles": "Shift-7", "next_low_confidence": "Shift-N",
}


class RefineWidget(QWidget):
    """Refinement tools for a parts layer (Plugins > napari-deeplab > Refine parts)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._clicked: tuple | None = None  # (frame or None, row, col) of the last click
        self._review_queue: list = []

        self.parts_combo = QComboBox()
        self.parts_combo.setToolTip("The parts layer to correct")
        self.whole = QRadioButton("Whole layer")
        self.shapes = QRadioButton("Shapes selection")
        self.region = QRadioButton("Clicked region")
        self.whole.setChecked(True)
        self.whole.setToolTip("Apply to every pixel (the current frame of a stack)")
        self.shapes.setToolTip("Apply inside the rectangles and polygons of the "
                               "'<parts> selection' Shapes layer")
        self.region.setToolTip("Apply to the connected region of one class under your last "
                               "click on the parts layer")
        new_selection = QPushButton("Draw selection")
        new_selection.setToolTip("Add (or pick) the selection Shapes layer, in rectangle mode")
        new_selection.clicked.connect(self.selection_layer)

        self.min_size = QSpinBox(minimum=1, maximum=10**6, value=40)
        self.min_size.setToolTip("Remove pieces smaller than this many pixels")
        self.max_hole = QSpinBox(minimum=1, maximum=10**7, value=200)
        self.max_hole.setToolTip("Fill holes up to this many pixels")
        self.radius = QSpinBox(minimum=1, maximum=10, value=1)
        self.radius.setToolTip("Smoothing window radius in pixels")
        self.source_class = QComboBox()
        self.target_class = QComboBox()
        for combo in (self.source_class, self.target_class):
            combo.addItems([f"{i} {name}" for i, name in enumerate(CLASS_NAMES)])
        self.source_class.setCurrentIndex(5)
        self.target_class.setCurrentIndex(7)
        self.threshold = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=0.5)
        self.threshold.setToolTip("Confidence below which a region is worth reviewing")

        buttons = QGridLayout()
        actions = [
            ("Remove small regions", "remove_small_regions", "specks smaller than the minimum size "
             "take the class around them"),
            ("Fill holes", "fill_holes", "holes inside a part or the person take the class around them"),
            ("Smooth", "smooth", "straighten jagged edges (majority filter), keeping thin parts"),
            ("Snap to image", "snap_to_image", "move boundaries onto the photo's edges"),
            ("Swap left/right", "swap_left_right", "left arm <-> right arm, legs, shoes"),
            ("Relabel", "relabel", "one class becomes another"),
            ("Apply scribbles", "refine_with_scribbles", "relabel the regions your strokes in the "
             "scribbles layer lie in, fitted to the photo's edges"),
            ("Next low-confidence region", "next_low_confidence", "show the largest region the "
             "model was least sure about"),
        ]
        self.buttons = {}
        for index, (text, name, help_text) in enumerate(actions):
            button = QPushButton(text)
            button.setToolTip(f"{help_text[0].upper()}{help_text[1:]} ({SHORTCUTS[name]})")
            button.clicked.connect(lambda _=False, n=name: self.apply(n))
            buttons.addWidget(button, index // 2, index % 2)
            self.buttons[name] = button
            self.viewer.bind_key(SHORTCUTS[name], lambda viewer, n=name: self.apply(n), overwrite=True)
        scribbles = QPushButton("Scribbles layer")
        scribbles.setToolTip("Add (or pick) the scribbles Labels layer: paint strokes of the "
                             "right class on wrongly labelled regions, then Apply scribbles")
        scribbles.clicked.connect(self.scribbles_layer)
        buttons.addWidget(scribbles, len(actions) // 2, 0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Parts layer", self.parts_combo)
        form.addRow("Apply to", self.whole)
        form.addRow("", self.shapes)
        form.addRow("", self.region)
        form.addRow("", new_selection)
        form.addRow("Minimum size", self.min_size)
        form.addRow("Largest hole", self.max_hole)
        form.addRow("Smoothing radius", self.radius)
        form.addRow("Relabel from", self.source_class)
        form.addRow("Relabel to", self.target_class)
        form.addRow("Review below", self.threshold)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch(1)

        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # --- layers ------------------------------------------------------------------------------

    def _refresh_layers(self, event=None) -> None:
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)
                 and not layer.name.endswith(SCRIBBLES_SUFFIX)]
        current = self.parts_combo.currentText()
        self.parts_combo.clear()
        self.parts_combo.addItems(names)
        preferred = [n for n in names if n.endswith(PARTS_SUFFIX)]
        if current in names:
            self.parts_combo.setCurrentText(current)
        elif preferred:
            self.parts_combo.setCurrentText(preferred[-1])
        for name in names:
            layer = self.viewer.layers[name]
            if self._remember_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._remember_click)

    def parts_layer(self) -> Labels | None:
        name = self.parts_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _companion(self, suffix: str):
        parts = self.parts_layer()
        name = parts.name + suffix
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def image_layer(self) -> Image | None:
        parts = self.parts_layer()
        name = parts.name[: -len(PARTS_SUFFIX)] if parts.name.endswith(PARTS_SUFFIX) else None
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    def selection_layer(self) -> Shapes:
        layer = self._companion(SELECTION_SUFFIX)
        if layer is None:
            parts = self.parts_layer()
            layer = self.viewer.add_shapes(name=parts.name + SELECTION_SUFFIX, ndim=2,
                                           scale=parts.scale[-2:], translate=parts.translate[-2:],
                                           face_color=[1, 1, 1, 0.1], edge_color="yellow")
        layer.mode = "add_rectangle"
        self.shapes.setChecked(True)
        self.viewer.layers.selection.active = layer
        return layer

    def scribbles_layer(self) -> Labels:
        layer = self._companion(SCRIBBLES_SUFFIX)
        if layer is None:
            parts = self.parts_layer()
            layer = self.viewer.add_labels(
                np.zeros(parts.data.shape[-2:], np.uint8), name=parts.name + SCRIBBLES_SUFFIX,
                colormap=parts_colormap(), features=parts_features(),
                scale=parts.scale[-2:], translate=parts.translate[-2:])
            layer.brush_size = 5
            layer.selected_label = parts.selected_label
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        return layer

    def _remember_click(self, layer, event):
        position = np.round(layer.world_to_data(event.position)).astype(int)
        self._clicked = (tuple(position[:-2]), int(position[-2]), int(position[-1]))

    # --- applying ----------------------------------------------------------------------------

    def _frame_key(self, parts: Labels) -> tuple:
        extra = parts.data.ndim - 2
        return tuple(self.viewer.dims.current_step[:extra])

    def _scope_mask(self, parts: Labels, labels: np.ndarray) -> np.ndarray | None:
        if self.whole.isChecked():
            return None
        if self.shapes.isChecked():
            shapes = self._companion(SELECTION_SUFFIX)
            if shapes is None or not len(shapes.data):
                raise ValueError("draw a rectangle or polygon in the selection layer first "
                                 "(Draw selection)")
            return shapes.to_masks(labels.shape).any(axis=0)
        if self._clicked is None:
            raise ValueError("click a region of the parts layer first")
        _, row, col = self._clicked
        if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
            raise ValueError("the last click was outside the layer; click a region")
        return flood(labels, (row, col), connectivity=1)

    def apply(self, name: str) -> None:
        """Run one operation (or the review step) on the chosen scope; one undo step."""
        if name == "next_low_confidence":
            self.next_low_confidence()
            return
        if self._worker is not None:
            return
        parts = self.parts_layer()
        if parts is None:
            show_info("Run Human parts first, or pick a Labels layer to refine")
            return
        key = self._frame_key(parts)
        labels = np.asarray(parts.data[key])
        try:
            mask = self._scope_mask(parts, labels)
            operation = self._operation(name, labels, key)
        except ValueError as error:
            show_error(str(error))
            return
        self.status.setText(f"{name.replace('_', ' ')}…")
        worker = create_worker(operation, mask, _ignore_errors=True)
        worker.returned.connect(lambda new: self._land(parts, key, labels, new, name))
        worker.errored.connect(lambda error: show_error(f"{name}: {error}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _operation(self, name: str, labels: np.ndarray, key: tuple):
        if name in ("snap_to_image", "refine_with_scribbles"):
            image = self.image_layer()
            if image is None:
                raise ValueError(f"no photo layer named like the parts layer for {name}")
            photo = np.asarray(image.data[key] if key else image.data)
        if name == "remove_small_regions":
            size = self.min_size.value()
            return lambda mask: refine.remove_small_regions(labels, size, mask)
        if name == "fill_holes":
            size = self.max_hole.value()
            return lambda mask: refine.fill_holes(labels, size, mask)
        if name == "smooth":
            radius = self.radius.value()
            return lambda mask: refine.smooth(labels, radius, mask)
        if name == "snap_to_image":
            return lambda mask: refine.snap_to_image(labels, photo, mask)
        if name == "swap_left_right":
            return lambda mask: refine.swap_left_right(labels, mask)
        if name == "relabel":
            source, target = self.source_class.currentIndex(), self.target_class.currentIndex()
            return lambda mask: refine.relabel(labels, source, target, mask)
        if name == "refine_with_scribbles":
            layer = self._companion(SCRIBBLES_SUFFIX)
            if layer is None or not np.asarray(layer.data).any():
                raise ValueError("paint strokes in the scribbles layer first (Scribbles layer)")
            strokes = np.asarray(layer.data)
            return lambda mask: refine.refine_with_scribbles(labels, photo, strokes, mask)
        raise ValueError(f"unknown operation {name}")

    def _land(self, parts: Labels, key: tuple, before: np.ndarray, after: np.ndarray, name: str):
        changed = np.nonzero(after != before)
        if changed[0].size:
            positions = tuple(np.full(changed[0].shape, k, np.intp) for k in key) + changed
            parts.data_setitem(positions, after[changed])
        if name == "refine_with_scribbles" and changed[0].size:
            strokes = self._companion(SCRIBBLES_SUFFIX)
            strokes.data = np.zeros_like(strokes.data)  # used up; the parts layer holds the result
        self.status.setText(f"{name.replace('_', ' ')}: {changed[0].size} pixels changed "
                            "(Ctrl+Z undoes)")

    def _finished(self) -> None:
        self._worker = None

    # --- review ------------------------------------------------------------------------------

    def next_low_confidence(self) -> None:
        """Centre the view on the next largest region with confidence below the threshold."""
        parts = self.parts_layer()
        image = self.image_layer()
        name = (image.name if image is not None else "") + CONFIDENCE_SUFFIX
        if parts is None or name not in self.viewer.layers:
            show_info("No confidence layer: run Human parts on the photo first")
            return
        key = self._frame_key(parts)
        confidence = np.asarray(self.viewer.layers[name].data[key])
        if not self._review_queue:
            regions = measure.label(confidence < self.threshold.value(), connectivity=2)
            found = sorted(measure.regionprops(regions), key=lambda r: r.area, reverse=True)
            self._review_queue = [(r.bbox, r.area) for r in found]
            if not self._review_queue:
                self.status.setText("No region below the threshold")
                return
        (top, left, bottom, right), area = self._review_queue.pop(0)
        centre = parts.data_to_world(np.array(key + ((top + bottom) / 2, (left + right) / 2)))
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved it to scene
        camera.center = tuple(centre[-2:])
        height, width = (bottom - top) * parts.scale[-2], (right - left) * parts.scale[-1]
        canvas = getattr(self.viewer, "_canvas_size", (600, 800))  # (height, width) in screen pixels
        camera.zoom = 0.5 * min(canvas[0] / max(height, 1), canvas[1] / max(width, 1))
        self._clicked = (key, (top + bottom) // 2, (left + right) // 2)
        self.status.setText(f"Low-confidence region of {area} pixels; "
                            f"{len(self._review_queue)} more to review")
