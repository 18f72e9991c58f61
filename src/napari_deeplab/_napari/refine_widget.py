"""The "Refine parts" widget: fix a pre-label with one action per typical model mistake.

Each operation of :mod:`napari_deeplab.refine` applies to the whole parts layer (the current
frame of a stack), to the shapes of the '<parts> selection' layer, or to the region last
clicked; it runs off the GUI thread (one :class:`JobRunner` job at a time) and lands as one
``data_setitem``: one undo step, and pixels the next model run keeps (the annotator's edits).
"""

from __future__ import annotations

import weakref
import zlib
from functools import partial
from typing import NamedTuple

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QBoxLayout, QGridLayout, QLabel, QSizePolicy
from skimage import measure
from skimage.segmentation import flood

from .. import refine
from ..cihp import CLASS_NAMES
from .job_runner import Job, JobRefused, JobRunner, in_thread
from .parts_layer import CONFIDENCE_SUFFIX, PARTS_SUFFIX, parts_colormap, parts_features
from .shortcuts import bind_keys, on_removed

SELECTION_SUFFIX, SCRIBBLES_SUFFIX, REVIEW_SUFFIX = " selection", " scribbles", " review"
WHOLE, SELECTION, REGION = "Whole layer", "Selection", "Clicked region"


class Operation(NamedTuple):
    """A function of :mod:`napari_deeplab.refine` (or the review step) and its button."""

    name: str
    text: str
    key: str
    tooltip: str
    parameters: tuple = ()


# Shift + a letter: the same key on every keyboard layout, and bound by napari for nothing
# (not the viewer, Labels or Shapes layers, nor its menus: the tests check).
OPERATIONS = (
    Operation(
        "remove_small_regions",
        "Remove small regions",
        "Shift-S",
        "Pieces under this share of the people's area take the class around them",
        ("min_size",),
    ),
    Operation(
        "fill_holes",
        "Fill holes",
        "Shift-H",
        "Holes up to this share of the people's area take the class around them",
        ("max_hole",),
    ),
    Operation("smooth", "Smooth", "Shift-M", "Straighten jagged edges", ("radius",)),
    Operation(
        "relabel",
        "Relabel",
        "Shift-C",
        "One class becomes another",
        ("source_class", "target_class"),
    ),
    Operation(
        "next_low_confidence",
        "Next low-confidence",
        "Shift-N",
        "Outline the next largest region below this confidence; it becomes the clicked one",
    ),
    Operation("snap_to_image", "Snap to image", "Shift-E", "Move boundaries onto photo edges"),
    Operation("swap_left_right", "Swap left/right", "Shift-W", "Left <-> right arm, leg, shoe"),
    Operation(
        "refine_with_scribbles",
        "Apply scribbles",
        "Shift-K",
        "Regions your scribbles touch take their class, fitted to the photo's edges",
    ),
)
SHORTCUTS = {operation.name: operation.key for operation in OPERATIONS}
HELP_LINE = "⇧X on a button: Shift+X presses it (on the canvas)"
RELATIVE_SIZES = ("min_size", "max_hole")
"""Sizes in % of the people's area (``refine.person_area``: the labelled pixels of the frame), so
one setting fits a person close up and one three times smaller (docs/benchmarks.md)."""
REVIEW_REGION_SHARE = 0.4  # of the canvas a region to review is zoomed to fill


def _relative_size_box(what: str, value: float, step: float) -> FloatSpinBox:
    """The field of one of :data:`RELATIVE_SIZES`: ``what``, in % of the people's area."""
    box = FloatSpinBox(
        value=value,
        min=0.001,
        max=100,
        step=step,
        tooltip=f"{what}, in % of the people's area (the labelled pixels of the frame)",
    )
    box.native.setDecimals(3)
    box.native.setSuffix(" %")
    return box


class OperationButton(PushButton):
    """The button of one :class:`Operation`, showing its key; the key presses it."""

    def __init__(self, operation: Operation):
        super().__init__(
            text=f"{operation.text}  ⇧{operation.key[-1]}",
            tooltip=f"{operation.tooltip} ({operation.key.replace('-', '+')})",
        )
        self.operation = operation

    def press(self) -> None:
        self.native.click()


class RefineWidget(Container):
    """Refinement tools for a parts layer (Plugins > napari-deeplab > Refine parts)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self._requested, self._summary = None, ""  # the Operation the job runs, its status line
        self._clicked: tuple | None = None  # (layer unique_id, frame, row, col) of the last click
        self._review_for, self._review_regions = None, []  # the list, and what it was made for
        self._review_status = ""
        self._click_watch = partial(_remember_click, weakref.ref(self))
        self.parts = ComboBox(
            label="Parts layer", annotation=Labels, nullable=True, choices=self._parts_choices
        )
        self.scope = ComboBox(
            choices=[WHOLE, SELECTION, REGION],
            tooltip="Every pixel (of the "
            "frame shown), the selection's shapes, or the region last clicked",
        )
        self.draw_selection = PushButton(
            text="Draw selection", tooltip="Add (or pick) '<parts> selection' and draw"
        )
        self.scribbles = PushButton(
            text="Scribbles layer",
            tooltip="Add (or pick) '<parts> scribbles': paint the right class on wrong regions",
        )
        self.min_size = _relative_size_box("Minimum size", value=0.05, step=0.01)
        self.max_hole = _relative_size_box("Largest hole", value=0.2, step=0.05)
        self.radius = SpinBox(value=1, min=1, max=10, tooltip="Smoothing radius (pixels)")
        classes = [(f"{value} {name}", value) for value, name in enumerate(CLASS_NAMES)]
        self.source_class = ComboBox(choices=classes, value=5, tooltip="Relabel this class…")
        self.target_class = ComboBox(choices=classes, value=7, tooltip="… as this one")
        self.threshold = FloatSpinBox(
            value=0.5,
            min=0.05,
            max=1.0,
            step=0.05,
            tooltip="Confidence below which a region is worth review",
        )
        self.buttons = {operation.name: OperationButton(operation) for operation in OPERATIONS}
        self.help = Label(
            value=HELP_LINE,
            tooltip="\n".join(f"{o.key.replace('-', '+')}: {o.text}" for o in OPERATIONS),
        )
        self.runner = JobRunner(self._prepare, cancel_tooltip="Stop the running operation")
        self.runner.run_button.visible = False  # each operation has its own button
        self.runner.native.layout().setDirection(QBoxLayout.Direction.LeftToRight)  # compact
        status = self.runner.status.native  # room for two lines: a longer one wraps
        status.setMinimumHeight(2 * status.fontMetrics().lineSpacing() + 4)
        status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        scope = Container(
            widgets=[self.scope, self.draw_selection],
            layout="horizontal",
            labels=False,
            label="Apply to",
        )
        choose = Container(widgets=[self.parts, scope])
        super().__init__(widgets=[choose, self.help, self.runner], labels=False)
        self.native.layout().insertLayout(1, self._grid())
        for container in (scope, choose):
            container.margins = (0, 0, 0, 0)
        for button, suffix in (
            (self.draw_selection, SELECTION_SUFFIX),
            (self.scribbles, SCRIBBLES_SUFFIX),
        ):
            button.changed.connect(partial(self._refusing, partial(self.companion_layer, suffix)))
        for button in self.buttons.values():
            button.changed.connect(lambda _=None, name=button.operation.name: self.apply(name))
        bind_keys(napari_viewer, self, {b.operation.key: b.press for b in self.buttons.values()})
        on_removed(self, self._stop_watching_clicks)
        on_removed(self, self.runner.cancel)

    def _grid(self) -> QGridLayout:
        """Each button beside its parameter, in a grid (which magicgui has not)."""
        b = self.buttons
        rows = [
            (b["remove_small_regions"], "under", self.min_size),
            (b["fill_holes"], "up to", self.max_hole),
            (b["smooth"], "radius", self.radius),
            (b["relabel"], "from", self.source_class),
            (None, "to", self.target_class),
            (b["next_low_confidence"], "below", self.threshold),
            (b["snap_to_image"], b["swap_left_right"]),
            (self.scribbles, b["refine_with_scribbles"]),
        ]
        grid = QGridLayout()
        grid.setVerticalSpacing(2)
        grid.setColumnStretch(2, 1)
        for row, widgets in enumerate(rows):
            for column, widget in enumerate(widgets):
                if widget is not None:
                    span = 3 - column if column == len(widgets) - 1 else 1  # the last: to the end
                    native = QLabel(widget) if isinstance(widget, str) else widget.native
                    grid.addWidget(native, row, column, 1, span)
        return grid

    def reset_choices(self, *_) -> None:
        """On layer changes: refresh the picker (prefer '<photo> parts'), watch clicks on Labels."""
        previous = self.parts.value
        super().reset_choices()
        layers = [layer for layer in self.parts.choices if layer is not None]
        preferred = [layer for layer in layers if layer.name.endswith(PARTS_SUFFIX)]
        if previous not in layers and preferred:
            self.parts.value = preferred[-1]
        for layer in layers if self.native.parent() is not None else ():  # once per layer
            if self._click_watch not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._click_watch)

    def _parts_choices(self, _widget=None) -> list[Labels]:
        """The viewer's Labels layers but the scribbles (painted on, not refined), in the layer
        list's order: what napari's own Labels picker offers, less those."""
        return [
            layer
            for layer in self.viewer.layers  # iterating gives the layers themselves
            if isinstance(layer, Labels) and not layer.name.endswith(SCRIBBLES_SUFFIX)
        ]

    def _stop_watching_clicks(self) -> None:
        for layer in self.viewer.layers:
            if self._click_watch in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._click_watch)

    def parts_layer(self) -> Labels:
        """The parts layer to work on; :class:`JobRefused` with what to do if there is none."""
        if self.parts.value is None or self.parts.value not in self.viewer.layers:
            raise JobRefused("No parts layer: run Human parts on a photo, or open a parts layer")
        return self.parts.value

    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def companion_layer(self, suffix: str) -> None:
        """Add (or pick) the selection (Shapes) or scribbles (Labels) layer, ready to draw."""
        parts = self.parts_layer()
        place = dict(
            name=parts.name + suffix, scale=parts.scale[-2:], translate=parts.translate[-2:]
        )
        if (layer := self._layer(place["name"])) is None and suffix == SELECTION_SUFFIX:
            layer = self.viewer.add_shapes(
                ndim=2, face_color=[1, 1, 1, 0.1], edge_color="yellow", **place
            )
        elif layer is None:
            layer = self.viewer.add_labels(
                np.zeros(parts.data.shape[-2:], np.uint8),
                **place,
                colormap=parts_colormap(),
                features=parts_features(),
            )
            layer.brush_size, layer.selected_label = 5, parts.selected_label
        layer.mode = "add_rectangle" if suffix == SELECTION_SUFFIX else "paint"
        self.scope.value = SELECTION if suffix == SELECTION_SUFFIX else self.scope.value
        self.viewer.layers.selection.active = layer

    def _refusing(self, action, *_) -> None:
        """Run ``action``; a :class:`JobRefused` becomes the status line and a notification."""
        try:
            action()
        except JobRefused as refusal:
            self.runner.status.value = str(refusal)
            show_info(str(refusal))

    def current_frame(self, layer) -> tuple:
        """The index of the frame shown of a stack layer (() for a single photo)."""
        point = np.round(layer.world_to_data(self.viewer.dims.point)[:-2]).astype(int)
        return tuple(int(i) for i in np.clip(point, 0, np.array(layer.data.shape[:-2]) - 1))

    def apply(self, name: str) -> None:
        """Run one operation (or the review step) on the chosen scope; one undo step."""
        if name == "next_low_confidence":
            self._refusing(self.next_low_confidence)
        elif self.runner.running:
            self.runner.status.value = "Wait: an operation is still running (or Cancel it)"
        else:
            self._requested = self.buttons[name].operation
            self.runner.run()

    def _prepare(self) -> Job:
        operation, parts = self._requested, self.parts_layer()
        frame = self.current_frame(parts)
        before = np.array(parts.data[frame])
        mask = self._scope_mask(parts, before, frame)
        arguments = [getattr(self, field).value for field in operation.parameters]
        size_note = ""
        if operation.parameters and operation.parameters[0] in RELATIVE_SIZES:
            arguments[0] = max(1, round(arguments[0] / 100 * refine.person_area(before)))
            size_note = f" (size {arguments[0]:,} px)"
        if operation.name in ("snap_to_image", "refine_with_scribbles"):  # the photo too
            photo = self._layer(name := parts.name.removesuffix(PARTS_SUFFIX))
            if not isinstance(photo, Image):
                raise JobRefused(f"{operation.text} needs the photo: an image layer '{name}'")
            arguments.append(np.asarray(photo.data[frame]))
        if operation.name == "refine_with_scribbles":
            strokes = self._layer(parts.name + SCRIBBLES_SUFFIX)
            if strokes is None or not np.any(strokes.data):
                raise JobRefused("Paint strokes in the scribbles layer first (Scribbles layer)")
            arguments.append(np.array(strokes.data))

        function = getattr(refine, operation.name)

        def compute(progress):  # in a thread of its own; Cancel stops Snap between classes
            if operation.name == "snap_to_image":
                return function(before, *arguments, mask, progress=progress)
            return function(before, *arguments, mask)

        def land(after: np.ndarray) -> None:  # one data_setitem, leaving new paint alone
            if parts not in self.viewer.layers:
                raise ValueError(
                    f"'{parts.name}' was removed while {operation.text} ran: nothing changed"
                )
            changed = np.nonzero((after != before) & (np.asarray(parts.data[frame]) == before))
            positions = tuple(np.full(changed[0].shape, i, np.intp) for i in frame) + changed
            if changed[0].size:
                parts.data_setitem(positions, after[changed])
            if changed[0].size and operation.name == "refine_with_scribbles":
                strokes = self._layer(parts.name + SCRIBBLES_SUFFIX)
                strokes.data = np.zeros_like(strokes.data)  # used up: the parts hold the result
            self._summary = (
                f"{operation.text}{size_note}: {changed[0].size:,} pixels changed (Ctrl+Z undoes)"
            )
            self.viewer.layers.selection.active = parts  # Ctrl+Z undoes on the layer changed

        return Job(
            in_thread(compute, operation.text),
            total=1,
            description=operation.text,
            on_result=land,
            on_done=lambda: self._summary,
            message=f"{operation.text}…",
        )

    def _scope_mask(self, parts: Labels, labels: np.ndarray, frame: tuple) -> np.ndarray | None:
        if self.scope.value == WHOLE:
            return None
        if self.scope.value == SELECTION:
            shapes = self._layer(parts.name + SELECTION_SUFFIX)
            if shapes is None or not len(shapes.data):
                raise JobRefused("Draw a rectangle in the selection layer first (Draw selection)")
            return shapes.to_masks(labels.shape).any(axis=0)
        layer_id, clicked_frame, row, col = self._clicked or (None, (), 0, 0)
        if layer_id != parts.unique_id or not (
            0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]
        ):
            raise JobRefused(f"Click a region of '{parts.name}' first")
        if clicked_frame != frame:
            raise JobRefused(
                f"You clicked the region in frame {clicked_frame[0]} and are now "
                f"on frame {frame[0]}: click it again"
            )
        return flood(labels, (row, col), connectivity=1)

    def next_low_confidence(self) -> None:
        """Outline (in '<parts> review') and zoom to the next largest region of confidence below
        the threshold; computed again when the layer, frame, threshold or confidence changed.
        The regions of a large layer are found off the GUI thread (a job: Cancel stops it)."""
        parts = self.parts_layer()
        name = parts.name.removesuffix(PARTS_SUFFIX) + CONFIDENCE_SUFFIX
        if (confidence_layer := self._layer(name)) is None:
            raise JobRefused(f"No '{name}' layer: run Human parts on the photo first")
        if confidence_layer.data.shape != parts.data.shape:
            raise JobRefused(
                f"'{name}' has shape {confidence_layer.data.shape}, not that of "
                f"'{parts.name}' {parts.data.shape}: run Human parts on the photo "
                "again, or remove it"
            )
        frame, threshold = self.current_frame(parts), round(self.threshold.value, 4)
        confidence = np.ascontiguousarray(confidence_layer.data[frame])
        computed_for = (
            parts.unique_id,
            confidence_layer.unique_id,
            frame,
            threshold,
            zlib.crc32(confidence.data),
        )
        if computed_for == self._review_for and self._review_regions:
            self._show_review_region(parts, frame)
            return
        if self.runner.running:
            self.runner.status.value = "Wait: an operation is still running (or Cancel it)"
            return

        def found(regions: LowConfidenceRegions) -> None:
            self._review_regions, self._review_for = regions, computed_for
            if not len(regions):
                self._review_status = f"No region below confidence {threshold:.2f}"
            elif parts in self.viewer.layers:
                self._show_review_region(parts, frame)

        if confidence.size <= SMALL_LAYER:  # at once: quicker than a round trip to a worker
            found(LowConfidenceRegions(confidence, threshold))
            if not len(self._review_regions) and not self._review_regions.taken:
                raise JobRefused(self._review_status)
            return
        self._requested = None
        job = Job(
            in_thread(
                lambda _: LowConfidenceRegions(confidence, threshold),
                "Finding low-confidence regions",
            ),
            total=1,
            description="Next low-confidence",
            on_result=found,
            on_done=lambda: self._review_status,
            message="Finding low-confidence regions…",
        )
        self.runner.run_job(job)

    def _show_review_region(self, parts: Labels, frame: tuple) -> None:
        regions = self._review_regions
        number, (area, box, mean) = regions.taken + 1, regions.pop()
        rectangle = (
            np.array([[box[0].start, box[1].start], [box[0].stop, box[1].stop]], float) - 0.5
        )
        review = self._layer(parts.name + REVIEW_SUFFIX) or self.viewer.add_shapes(
            ndim=2,
            name=parts.name + REVIEW_SUFFIX,
            scale=parts.scale[-2:],
            edge_width=3,
            translate=parts.translate[-2:],
            edge_color="magenta",
            face_color="transparent",
        )
        review.data = []
        review.add_rectangles(rectangle)
        self.viewer.layers.selection.active = parts  # keep painting and shortcuts on the parts
        camera = self.viewer.scene.camera
        corners = np.array([review.data_to_world(corner)[-2:] for corner in rectangle])
        camera.center = tuple(corners.mean(axis=0))
        extent = np.maximum(np.abs(corners[1] - corners[0]), 1)
        canvas = np.asarray(self.viewer.canvas.size)
        camera.zoom = REVIEW_REGION_SHARE * float(np.min(canvas / extent))
        row, col = regions.inside(number - 1)  # a pixel inside the region
        self._clicked = (parts.unique_id, frame, int(row), int(col))
        self._review_status = (
            f"Region {number} of {regions.total}: {int(area):,} pixels, mean confidence {mean:.2f}"
        )
        self.runner.status.value = self._review_status


SMALL_LAYER = 250_000
"""Pixels of a frame whose low-confidence regions are found at once, in the GUI thread (a few
tens of milliseconds); larger frames in a worker, so the viewer never stalls."""


class LowConfidenceRegions:
    """The connected regions (8-connectivity) of ``confidence < threshold``, largest first (the
    order of ``skimage.measure.regionprops`` sorted by area), as (area, box, mean confidence);
    :meth:`pop` takes the next. Made in any thread: plain arrays, no napari objects."""

    def __init__(self, confidence: np.ndarray, threshold: float):
        self.labels = measure.label(confidence < threshold, connectivity=2)
        count = int(self.labels.max())
        flat = self.labels.ravel()
        self.area = np.bincount(flat, minlength=count + 1)[1:]
        sums = np.bincount(flat, weights=confidence.ravel(), minlength=count + 1)
        self.mean = sums[1:] / np.maximum(self.area, 1)
        # bounding boxes in whole-array numpy steps (ndimage.find_objects holds the GIL for
        # seconds on a noisy map of 10^5 regions, which would stall the viewer)
        pixels = np.flatnonzero(flat)
        owner = flat[pixels]
        order = np.argsort(owner, kind="stable")
        pixels, owner = pixels[order], owner[order]
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if owner.size else owner
        rows, cols = np.divmod(pixels, self.labels.shape[1])
        self._bounds = (
            rows[starts],
            np.maximum.reduceat(rows, starts) + 1 if owner.size else rows,
            np.minimum.reduceat(cols, starts) if owner.size else cols,
            np.maximum.reduceat(cols, starts) + 1 if owner.size else cols,
        )
        self.order = np.argsort(-self.area, kind="stable")
        self.total, self.taken = count, 0

    def __len__(self) -> int:
        return self.total - self.taken

    def box(self, index: int) -> tuple[slice, slice]:
        top, bottom, left, right = (int(bound[index]) for bound in self._bounds)
        return slice(top, bottom), slice(left, right)

    def pop(self) -> tuple:
        index = self.order[self.taken]
        self.taken += 1
        return self.area[index], self.box(index), self.mean[index]

    def inside(self, rank: int) -> tuple[int, int]:
        """A pixel of the ``rank``-th largest region (the middle one in row-major order)."""
        index = self.order[rank]
        box = self.box(index)
        pixels = np.argwhere(self.labels[box] == index + 1)
        row, col = pixels[len(pixels) // 2]
        return row + box[0].start, col + box[1].start


def _remember_click(widget: weakref.ref, layer: Labels, event) -> None:
    """The click watch on Labels layers (a ``partial`` of a weak reference to the widget, so
    that it keeps no widget alive): remember the layer, frame and pixel clicked."""
    if (alive := widget()) is not None:
        *frame, row, col = (int(i) for i in np.round(layer.world_to_data(event.position)))
        alive._clicked = (layer.unique_id, tuple(frame), row, col)
