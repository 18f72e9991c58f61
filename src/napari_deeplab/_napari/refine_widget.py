"""The "Refine parts" widget: fix a pre-label with one action per typical model mistake.

Each operation of :mod:`napari_deeplab.refine` applies to the whole parts layer (the current
frame of a stack), to the shapes of the '<parts> selection' Shapes layer, or to the connected
region last clicked; it runs off the GUI thread (a :class:`JobRunner` job, one at a time) and
lands as one ``data_setitem``: one undo step, and pixels the next model run keeps (they count
as the annotator's edits). "Next low-confidence region" outlines the model's doubtful regions
one after another, largest first.
"""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass

import numpy as np
from magicgui.type_map import get_widget_class
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QBoxLayout, QGridLayout, QSizePolicy
from skimage import measure
from skimage.segmentation import flood

from .. import refine
from ..cihp import CLASS_NAMES
from .job_runner import Job, JobRefused, JobRunner
from .parts_layer import CONFIDENCE_SUFFIX, PARTS_SUFFIX, parts_colormap, parts_features
from .shortcuts import bind_keys, on_removed

SELECTION_SUFFIX = " selection"
SCRIBBLES_SUFFIX = " scribbles"
REVIEW_SUFFIX = " review"
WHOLE, SELECTION, REGION = "Whole layer", "Selection", "Clicked region"
REVIEW_FILL = 0.4  # the outlined region fills this fraction of the canvas


@dataclass(frozen=True)
class Operation:
    """One button: ``name`` is a function of :mod:`napari_deeplab.refine` (or
    ``next_low_confidence``) and ``key`` its napari key binding."""

    name: str
    text: str
    key: str
    tooltip: str


# Shift + a letter: the same key on every keyboard layout, and none of these is bound by napari
# for the viewer, Labels or Shapes layers (tests/napari/test_refine_widget.py checks).
OPERATIONS = (
    Operation("remove_small_regions", "Remove small regions", "Shift-S",
              "Pieces smaller than this many pixels take the class around them"),
    Operation("fill_holes", "Fill holes", "Shift-H",
              "Holes up to this many pixels inside a part or the person take the class "
              "around them"),
    Operation("smooth", "Smooth", "Shift-M",
              "Straighten jagged edges (majority filter of this radius), keeping thin parts"),
    Operation("relabel", "Relabel", "Shift-C", "One class becomes another"),
    Operation("next_low_confidence", "Next low-confidence", "Shift-N",
              "Outline and zoom to the next largest region whose confidence is below this; "
              "it becomes the clicked region"),
    Operation("snap_to_image", "Snap to image", "Shift-E",
              "Move boundaries onto the photo's edges"),
    Operation("swap_left_right", "Swap left/right", "Shift-W",
              "Left arm <-> right arm, legs, shoes"),
    Operation("refine_with_scribbles", "Apply scribbles", "Shift-K",
              "The regions your strokes in the scribbles layer touch take the strokes' class, "
              "fitted to the photo's edges"),
)
SHORTCUTS = {operation.name: operation.key for operation in OPERATIONS}


def key_text(key: str) -> str:
    """napari's "Shift-S" as people write it: "Shift+S"."""
    return key.replace("-", "+")


HELP_LINE = "⇧X on a button: Shift+X presses it (on the canvas)"


def key_letter(key: str) -> str:
    """The letter of a "Shift-<letter>" key binding."""
    return key.split("-")[1]


@dataclass(frozen=True)
class Click:
    """Where the parts layer was last clicked: its layer, frame (() for a photo) and pixel."""

    layer_id: object
    frame: tuple
    row: int
    col: int


class OperationButton(PushButton):
    """The button of one :class:`Operation`; its shortcut presses it."""

    def __init__(self, operation: Operation):
        super().__init__(text=f"{operation.text}  ⇧{key_letter(operation.key)}",
                         tooltip=f"{operation.tooltip} ({key_text(operation.key)})")
        self.operation = operation

    def press(self) -> None:
        self.native.click()


class RefineWidget(Container):
    """Refinement tools for a parts layer (Plugins > napari-deeplab > Refine parts)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self._requested: Operation | None = None  # what the runner's next job is
        self._clicked: Click | None = None
        self._review_for: tuple | None = None  # what the review list was computed for
        self._review_regions: list = []
        self._user_picked = False  # the parts layer was picked by hand: keep it
        self._resetting = False
        self._summary = ""  # the status line of the operation that just ran
        self._click_watch = _click_watch(self)
        # layer unique_id -> its mouse_drag_callbacks, holding our click watch; None once removed
        self._watched: dict[object, list] | None = {}

        _, napari_options = get_widget_class(annotation=Labels)
        labels_layers = napari_options["choices"]  # napari's picker: follows the layer list
        self.parts = ComboBox(
            label="Parts layer", annotation=Labels, nullable=True,
            tooltip="The parts layer to correct",
            choices=lambda widget: [layer for layer in labels_layers(widget)
                                    if not layer.name.endswith(SCRIBBLES_SUFFIX)])
        self.scope = ComboBox(choices=[WHOLE, SELECTION, REGION], value=WHOLE,
                              tooltip="Whole layer: every pixel (the current frame of a stack). "
                                      "Selection: inside the rectangles and polygons of the "
                                      "'<parts> selection' layer. Clicked region: the connected "
                                      "region of one class under your last click")
        self.draw_selection = PushButton(text="Draw selection", tooltip=(
            "Add (or pick) the '<parts> selection' Shapes layer, in rectangle mode"))
        self.scribbles = PushButton(text="Scribbles layer", tooltip=(
            "Add (or pick) the '<parts> scribbles' Labels layer: paint strokes of the right "
            "class on wrongly labelled regions, then Apply scribbles"))
        self.min_size = SpinBox(value=40, min=1, max=10**6, tooltip=OPERATIONS[0].tooltip)
        self.max_hole = SpinBox(value=200, min=1, max=10**7, tooltip=OPERATIONS[1].tooltip)
        self.radius = SpinBox(value=1, min=1, max=10, tooltip="Smoothing window radius (pixels)")
        classes = [(f"{value} {name}", value) for value, name in enumerate(CLASS_NAMES)]
        self.source_class = ComboBox(choices=classes, value=5, tooltip="Relabel from this class")
        self.target_class = ComboBox(choices=classes, value=7, tooltip="... to this one")
        self.threshold = FloatSpinBox(value=0.5, min=0.05, max=1.0, step=0.05,
                                      tooltip="Confidence below which a region is worth reviewing")
        self.buttons = {operation.name: OperationButton(operation) for operation in OPERATIONS}
        self.runner = JobRunner(self._prepare, cancel_tooltip="Stop the running operation")
        self.runner.run_button.visible = False  # each operation has its own button
        self.runner.native.layout().setDirection(QBoxLayout.Direction.LeftToRight)  # compact
        status = self.runner.status.native  # room for two lines: a longer one wraps
        status.setMinimumHeight(2 * status.fontMetrics().lineSpacing() + 4)
        status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.help = Label(value=HELP_LINE, tooltip="\n".join(
            f"{key_text(o.key)}: {o.text}" for o in OPERATIONS))

        scope_row = Container(widgets=[self.scope, self.draw_selection], layout="horizontal",
                              labels=False, label="Apply to")
        scope_row.margins = (0, 0, 0, 0)
        choose = Container(widgets=[self.parts, scope_row], labels=True)
        choose.margins = (0, 0, 0, 0)
        super().__init__(widgets=[choose, self._operation_grid(), self.help, self.runner],
                         labels=False)
        self.parts.changed.connect(self._on_pick)
        self.draw_selection.changed.connect(self.selection_layer)
        self.scribbles.changed.connect(self.scribbles_layer)
        for button in self.buttons.values():
            button.changed.connect(lambda _=None, name=button.operation.name: self.apply(name))
        bind_keys(napari_viewer, self, {button.operation.key: button.press
                                        for button in self.buttons.values()})
        on_removed(self, self._stop_watching_clicks)

    def _operation_grid(self) -> Container:
        """Each operation's button beside its parameter, in a grid (magicgui has none)."""
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
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(2)
        self._grid_widgets = []
        for row, widgets in enumerate(rows):
            for column, widget in enumerate(widgets):
                if widget is None:
                    continue
                widget = Label(value=widget) if isinstance(widget, str) else widget
                span = 3 - column if column == len(widgets) - 1 else 1  # the last fills the row
                grid.addWidget(widget.native, row, column, 1, span)
                self._grid_widgets.append(widget)
        grid.setColumnStretch(2, 1)
        operations = Container(labels=False)
        operations.margins = (0, 0, 0, 0)
        operations.native.layout().addLayout(grid)
        return operations

    # --- layers ------------------------------------------------------------------------------

    def reset_choices(self, *_) -> None:
        """napari calls this when layers change: refresh the picker, preferring the newest
        '<photo> parts' layer unless you picked one, and watch clicks on the Labels layers."""
        previous, self._resetting = self.parts.value, True
        try:
            super().reset_choices()
            layers = [layer for layer in self.parts.choices if layer is not None]
            if not (self._user_picked and previous in layers):
                preferred = [layer for layer in layers if layer.name.endswith(PARTS_SUFFIX)]
                if preferred:
                    self.parts.value = preferred[-1]
        finally:
            self._resetting = False
        if self._watched is None:
            return  # removed from the viewer (un-parenting it resets the choices once more)
        for layer in layers:
            callbacks = layer.mouse_drag_callbacks
            if self._click_watch not in callbacks:
                callbacks.append(self._click_watch)
            self._watched[layer.unique_id] = callbacks

    def _on_pick(self, *_) -> None:
        if not getattr(self, "_resetting", False):
            self._user_picked = self.parts.value is not None

    def _stop_watching_clicks(self) -> None:
        for callbacks in self._watched.values():
            if self._click_watch in callbacks:
                callbacks.remove(self._click_watch)
        self._watched = None

    def parts_layer(self) -> Labels:
        """The parts layer to work on; :class:`JobRefused` with what to do if there is none."""
        layer = self.parts.value
        if layer is None or layer not in self.viewer.layers:
            raise JobRefused("No parts layer: run Human parts on a photo first, or open a "
                             "Labels layer of parts")
        return layer

    def _companion(self, suffix: str):
        name = self.parts_layer().name + suffix
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def image_layer(self, purpose: str) -> Image:
        """The photo of the parts layer ('<photo>' for '<photo> parts')."""
        parts = self.parts_layer()
        name = parts.name.removesuffix(PARTS_SUFFIX)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(layer, Image) or name == parts.name:
            raise JobRefused(f"{purpose} needs the photo: an image layer named '{name}' "
                             f"beside '{parts.name}'")
        return layer

    def selection_layer(self) -> Shapes | None:
        """Add (or pick) the selection Shapes layer, ready to draw rectangles."""
        return self._refusing(self._selection_layer)

    def _selection_layer(self) -> Shapes:
        layer = self._companion(SELECTION_SUFFIX)
        if layer is None:
            parts = self.parts_layer()
            layer = self.viewer.add_shapes(name=parts.name + SELECTION_SUFFIX, ndim=2,
                                           scale=parts.scale[-2:], translate=parts.translate[-2:],
                                           face_color=[1, 1, 1, 0.1], edge_color="yellow")
        layer.mode = "add_rectangle"
        self.scope.value = SELECTION
        self.viewer.layers.selection.active = layer
        return layer

    def scribbles_layer(self) -> Labels | None:
        """Add (or pick) the scribbles Labels layer, in paint mode."""
        return self._refusing(self._scribbles_layer)

    def _scribbles_layer(self) -> Labels:
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

    def _refusing(self, action):
        """Run ``action``; a :class:`JobRefused` becomes the status line and a notification."""
        try:
            return action()
        except JobRefused as refusal:
            self.runner.status.value = str(refusal)
            show_info(str(refusal))
            return None

    def _remember_click(self, layer: Labels, event) -> None:
        position = np.round(layer.world_to_data(event.position)).astype(int)
        self._clicked = Click(layer.unique_id, tuple(int(i) for i in position[:-2]),
                              int(position[-2]), int(position[-1]))

    def current_frame(self, layer) -> tuple:
        """The index of the frame shown of a stack layer (() for a single photo)."""
        point = layer.world_to_data(self.viewer.dims.point)
        return tuple(int(round(i)) for i in point[:-2])

    # --- operations --------------------------------------------------------------------------

    def apply(self, name: str) -> None:
        """Run one operation (or the review step) on the chosen scope; one undo step."""
        if name == "next_low_confidence":
            self._refusing(self.next_low_confidence)
            return
        if self.runner.running:
            self._refusing(self._busy)
            return
        self._requested = next(o for o in OPERATIONS if o.name == name)
        self.runner.run()

    def _busy(self):
        raise JobRefused("Wait: an operation is still running (or Cancel it)")

    def _prepare(self) -> Job:
        operation = self._requested
        parts = self.parts_layer()
        frame = self.current_frame(parts)
        before = np.array(parts.data[frame])
        mask = self._scope_mask(parts, before, frame)
        compute = self._computation(operation.name, before, frame)

        def work():
            yield compute(mask)

        def land(after: np.ndarray) -> None:
            self._summary = self._land(parts, frame, before, after, operation)

        return Job(work(), total=1, description=operation.text, on_result=land,
                   on_done=lambda: self._summary, message=f"{operation.text}…")

    def _scope_mask(self, parts: Labels, labels: np.ndarray, frame: tuple) -> np.ndarray | None:
        if self.scope.value == WHOLE:
            return None
        if self.scope.value == SELECTION:
            shapes = self._companion(SELECTION_SUFFIX)
            if shapes is None or not len(shapes.data):
                raise JobRefused("Draw a rectangle or polygon in the selection layer first "
                                 "(Draw selection)")
            return shapes.to_masks(labels.shape).any(axis=0)
        click = self._clicked
        if click is None or click.layer_id != parts.unique_id:
            raise JobRefused(f"Click a region of '{parts.name}' first")
        if click.frame != frame:
            raise JobRefused(f"You clicked the region in frame {click.frame[0]} and are now on "
                             f"frame {frame[0]}: click it again")
        if not (0 <= click.row < labels.shape[0] and 0 <= click.col < labels.shape[1]):
            raise JobRefused("The last click was outside the layer: click a region")
        return flood(labels, (click.row, click.col), connectivity=1)

    def _computation(self, name: str, labels: np.ndarray, frame: tuple):
        """The operation as a function of the scope mask, with its parameters read now."""
        if name in ("snap_to_image", "refine_with_scribbles"):
            image = self.image_layer(self.buttons[name].text)
            photo = np.asarray(image.data[frame])
        if name == "remove_small_regions":
            size = self.min_size.value
            return lambda mask: refine.remove_small_regions(labels, size, mask)
        if name == "fill_holes":
            size = self.max_hole.value
            return lambda mask: refine.fill_holes(labels, size, mask)
        if name == "smooth":
            radius = self.radius.value
            return lambda mask: refine.smooth(labels, radius, mask)
        if name == "snap_to_image":
            return lambda mask: refine.snap_to_image(labels, photo, mask)
        if name == "swap_left_right":
            return lambda mask: refine.swap_left_right(labels, mask)
        if name == "relabel":
            source, target = self.source_class.value, self.target_class.value
            return lambda mask: refine.relabel(labels, source, target, mask)
        strokes_layer = self._companion(SCRIBBLES_SUFFIX)
        if strokes_layer is None or not np.any(strokes_layer.data):
            raise JobRefused("Paint strokes in the scribbles layer first (Scribbles layer)")
        strokes = np.array(strokes_layer.data)
        return lambda mask: refine.refine_with_scribbles(labels, photo, strokes, mask)

    def _land(self, parts: Labels, frame: tuple, before: np.ndarray, after: np.ndarray,
              operation: Operation) -> str:
        """Write the result as one ``data_setitem``, leaving pixels painted meanwhile alone."""
        if parts not in self.viewer.layers:
            raise ValueError(f"'{parts.name}' was closed before {operation.text} finished")
        changed = np.nonzero((after != before) & (np.asarray(parts.data[frame]) == before))
        if changed[0].size:
            positions = tuple(np.full(changed[0].shape, i, np.intp) for i in frame) + changed
            parts.data_setitem(positions, after[changed])
            if operation.name == "refine_with_scribbles":
                strokes = self._companion(SCRIBBLES_SUFFIX)
                strokes.data = np.zeros_like(strokes.data)  # used up: the parts hold the result
        return f"{operation.text}: {changed[0].size:,} pixels changed (Ctrl+Z undoes)"

    # --- review ------------------------------------------------------------------------------

    def next_low_confidence(self) -> None:
        """Outline and zoom to the next largest region whose confidence is below the threshold;
        the list is computed again when the layer, frame, threshold or confidence changed."""
        parts = self.parts_layer()
        name = parts.name.removesuffix(PARTS_SUFFIX) + CONFIDENCE_SUFFIX
        if name not in self.viewer.layers:
            raise JobRefused(f"No '{name}' layer: run Human parts on the photo first")
        confidence_layer = self.viewer.layers[name]
        frame = self.current_frame(parts)
        confidence = np.asarray(confidence_layer.data[frame])
        threshold = round(self.threshold.value, 4)
        computed_for = (parts.unique_id, confidence_layer.unique_id, frame, threshold,
                        zlib.crc32(np.ascontiguousarray(confidence).data))
        if computed_for != self._review_for or not self._review_regions:
            regions = measure.regionprops(measure.label(confidence < threshold, connectivity=2),
                                          intensity_image=confidence)
            self._review_regions = sorted(regions, key=lambda r: r.area, reverse=True)
            self._review_for, self._review_total = computed_for, len(self._review_regions)
            if not self._review_regions:
                self.runner.status.value = f"No region below confidence {threshold:.2f}"
                return
        region = self._review_regions.pop(0)
        self._outline(parts, region.bbox)
        row, col = region.coords[len(region.coords) // 2]  # a pixel inside the region
        self._clicked = Click(parts.unique_id, frame, int(row), int(col))
        done = self._review_total - len(self._review_regions)
        self.runner.status.value = (
            f"Region {done} of {self._review_total}: {int(region.area):,} pixels, mean "
            f"confidence {float(region.intensity_mean):.2f}")

    def _outline(self, parts: Labels, bbox: tuple) -> None:
        """Show ``bbox`` (data rows/cols) in the '<parts> review' Shapes layer and zoom to it."""
        top, left, bottom, right = bbox
        rectangle = np.array([[top, left], [bottom, right]], float) - 0.5
        name = parts.name + REVIEW_SUFFIX
        if name in self.viewer.layers:
            review = self.viewer.layers[name]
            review.data = []
            review.add_rectangles(rectangle)
        else:
            review = self.viewer.add_shapes(rectangle, shape_type="rectangle", name=name,
                                            ndim=2, scale=parts.scale[-2:],
                                            translate=parts.translate[-2:], edge_width=3,
                                            edge_color="magenta", face_color="transparent")
        self.viewer.layers.selection.active = parts  # keep painting and shortcuts on the parts
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9: scene.camera
        corners = np.array([review.data_to_world(corner)[-2:] for corner in rectangle])
        camera.center = tuple(corners.mean(axis=0))
        canvas = getattr(getattr(self.viewer, "canvas", None), "size", None)  # napari >= 0.9
        if canvas is not None:
            extent = np.maximum(np.abs(corners[1] - corners[0]), 1)
            camera.zoom = REVIEW_FILL * float(np.min(np.asarray(canvas) / extent))


def _click_watch(widget: RefineWidget):
    """The callback added to the Labels layers' ``mouse_drag_callbacks``: it remembers the click
    for ``widget`` without keeping the widget alive."""
    widget_ref = weakref.ref(widget)

    def remember_click(layer, event):
        widget = widget_ref()
        if widget is not None:
            widget._remember_click(layer, event)

    return remember_click
