"""Re-parse a person in the Human parts widget: the model on a crop around one person (or a
drawn box), merged into the parts layer as one undo step, the annotator's edits kept.

Which person: ``Shift+P`` takes the person under the mouse cursor; the button waits for a
click on one. The people are the ``<photo> people`` layer's (Review queue > Propose people,
or a sample's ``Human_ids``), else proposed from the parts layer at the time
(:func:`napari_deeplab.people.propose_people`). When the active layer is a Shapes layer, its
selected rectangles (all of them if none is selected) are the boxes instead.

The crop is :func:`napari_deeplab.reparse.crop_box`'s square with a margin; it runs in the
shared model process like Run (the same ``segment``: resized to the model's input, logits
upsampled back to the crop), cancellable with Run's Cancel, and its labels are written where
they differ from the layer's, except on hand-edited pixels, on other people's (person) or
outside the drawn box (box) (:func:`napari_deeplab.reparse.crop_changes`).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.layers import Labels, Shapes

from ..reparse import crop_box, crop_changes, others_mask
from .io import PEOPLE_SUFFIX
from .job_runner import Job, JobRefused
from .parts_layer import edit_tracker
from .shortcuts import bind_keys

REPARSE_KEY = "Shift-P"


class ReparseTool(Container):
    """The "Re-parse person" button of a Human parts widget (``owner``), and its key."""

    def __init__(self, owner):
        self.button = PushButton(
            text="Re-parse ⇧P",
            tooltip="Run the model again on a crop around one person, at the model's full "
            "detail: click the person after this button, or point at them and press "
            f"{REPARSE_KEY.replace('-', '+')}; with a Shapes layer active, its rectangles. "
            "Your edits are kept; Ctrl+Z undoes it",
        )
        super().__init__(widgets=[self.button], labels=False)
        self.margins = (0, 0, 0, 0)
        self.owner = owner
        self._armed = False
        self.button.changed.connect(self.arm)

    def bind(self) -> None:
        """Bind :data:`REPARSE_KEY` as the owner's key."""
        bind_keys(self.owner.viewer, self.owner, {REPARSE_KEY: self.at_cursor})

    # --- what to re-parse ---------------------------------------------------------------------

    def at_cursor(self) -> None:
        """Re-parse the boxes of the active Shapes layer, else the person under the cursor."""
        self._start(lambda: self._targets(self.owner.viewer.cursor.position))

    def arm(self) -> None:
        """The button: the boxes of the active Shapes layer now, else the next click's person."""
        if isinstance(self.owner.viewer.layers.selection.active, Shapes):
            self.at_cursor()
            return
        viewer = self.owner.viewer
        if self._armed:  # pressed again: no click wanted
            self.disarm()
            self.owner.runner.status.value = ""
            return
        if not self._armed:
            self._armed = True
            viewer.mouse_drag_callbacks.insert(0, self._clicked)
            parts = self.owner.parts_layer()
            self._mode = parts.mode if parts is not None else None
            if parts is not None:
                parts.mode = "pan_zoom"  # the click picks a person, it does not paint
        self.owner.runner.status.value = "Click the person to re-parse (the button again: cancel)"

    def disarm(self) -> None:
        if not self._armed:
            return
        self._armed = False
        callbacks = self.owner.viewer.mouse_drag_callbacks
        if self._clicked in callbacks:
            callbacks.remove(self._clicked)
        parts = self.owner.parts_layer()
        if parts is not None and self._mode is not None:
            parts.mode = self._mode

    def _clicked(self, viewer, event):
        position = event.position
        self.disarm()
        self._start(lambda: self._targets(position))
        yield

    def _start(self, targets) -> None:
        runner = self.owner.runner
        try:
            job = self._job(*targets())
        except JobRefused as refusal:
            runner._fail(str(refusal))
            return
        runner.run_job(job)

    def _targets(self, position):
        """(image, parts, frame, boxes): each box ``(crop slices, keep mask)``."""
        owner = self.owner
        image, parts = owner.image.value, owner.parts_layer()
        if image is None or parts is None:
            raise JobRefused("No parts layer: run the model on the photo first (Shift+R)")
        frame = owner.viewer.dims.current_step[0] if parts.data.ndim == 3 else None
        key = (slice(None), slice(None)) if frame is None else (frame,)
        shape = parts.data.shape[-2:]
        edits = edit_tracker(parts, edited=True).mask[
            key
        ]  # as Run: a layer it did not make is kept
        active = owner.viewer.layers.selection.active
        if isinstance(active, Shapes):
            boxes = self._shape_boxes(active, parts, shape, edits)
            if not boxes:
                raise JobRefused(f"'{active.name}' has no rectangle: draw one around the person")
            return image, parts, frame, boxes
        pixel = np.round(parts.world_to_data(position)).astype(int)[-2:]
        if not (0 <= pixel[0] < shape[0] and 0 <= pixel[1] < shape[1]):
            raise JobRefused("Point at a person on the photo (or draw a box in a Shapes layer)")
        people = self._people(image, parts, key)
        person = int(people[tuple(pixel)])
        if person == 0:
            raise JobRefused(
                "No person there: point at a person's parts (or draw a box in a Shapes layer)"
            )
        box = crop_box(people == person, shape)
        return image, parts, frame, [(box, edits | others_mask(people, person))]

    def _people(self, image, parts: Labels, key) -> np.ndarray:
        name = image.name + PEOPLE_SUFFIX
        layer = self.owner.viewer.layers[name] if name in self.owner.viewer.layers else None
        if isinstance(layer, Labels) and layer.data.shape == parts.data.shape:
            return np.asarray(layer.data[key])
        from ..people import propose_people

        return propose_people(np.asarray(parts.data[key]))

    @staticmethod
    def _shape_boxes(shapes: Shapes, parts: Labels, shape, edits) -> list:
        chosen = sorted(shapes.selected_data) or range(len(shapes.data))
        boxes = []
        for index in chosen:
            if shapes.shape_type[index] != "rectangle":
                continue
            corners = np.array(
                [parts.world_to_data(shapes.data_to_world(v)) for v in shapes.data[index]]
            )[:, -2:]
            (top, left), (bottom, right) = corners.min(axis=0), corners.max(axis=0)
            drawn = tuple(int(round(v)) for v in (top, left, bottom, right))
            try:
                box = crop_box(drawn, shape)
            except ValueError:
                continue  # off the photo
            keep = np.ones(shape, bool)
            keep[max(drawn[0], 0) : drawn[2], max(drawn[1], 0) : drawn[3]] = False
            boxes.append((box, edits | keep))
        return boxes

    # --- the job ----------------------------------------------------------------------------

    def _job(self, image, parts: Labels, frame, boxes) -> Job:
        owner = self.owner
        try:
            source = owner.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        data = image.data[0] if image.multiscale else image.data
        photo = data if frame is None else data[frame]
        crops = [np.asarray(photo[rows, cols]) for rows, cols in boxes_slices(boxes)]
        written = []

        def write(result) -> None:
            if image.name not in owner.viewer.layers or parts.name not in owner.viewer.layers:
                return
            box, keep = boxes[result.index]
            written.append(write_crop(parts, result.labels, box, keep, frame))

        def done() -> str:
            sizes = " and ".join(f"{c.shape[0]} x {c.shape[1]}" for c in crops)
            return (
                f"Re-parsed {len(crops)} crop(s) ({sizes} px): {sum(written)} pixels changed, "
                "your edits kept; Ctrl+Z undoes it"
            )

        return Job(
            owner._process.segment(crops, source),
            total=len(crops),
            description=f"Re-parsing in {image.name}",
            on_result=write,
            on_done=done,
            message=f"Re-parsing {len(crops)} crop(s)…",
        )


def boxes_slices(boxes) -> list[tuple[slice, slice]]:
    return [box for box, _ in boxes]


def write_crop(
    parts: Labels, crop_labels: np.ndarray, box, keep: np.ndarray, frame: int | None
) -> int:
    """Write a crop's labels into ``parts`` (its ``frame``) as one undo step, except where
    ``keep`` (H x W bool) is True; return the pixels changed."""
    tracker = edit_tracker(parts, edited=True)
    current = parts.data if frame is None else parts.data[frame]
    positions, values = crop_changes(np.asarray(current), crop_labels, box, keep)
    if frame is not None:
        positions = (np.full(positions[0].shape, frame, np.intp), *positions)
    if values.size:
        with tracker.model_writes():
            parts.data_setitem(positions, values)
    return int(values.size)
