"""The human-parts Labels layer: CIHP colours and class names, and which pixels the annotator edited.

Every change the plugin makes goes through ``Labels.data_setitem``, so napari's undo covers
it. The annotator's edits are read from the layer's own ``paint`` event (emitted for each
paint, fill, erase, polygon or ``data_setitem`` step), so re-running the model can keep them.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd  # napari's features tables; imported here, not on the first run
from napari.layers import Labels
from napari.utils import DirectLabelColormap

from ..cihp import CLASS_NAMES, PALETTE

PARTS_SUFFIX = " parts"
CONFIDENCE_SUFFIX = " confidence"


def parts_colormap(hidden: set[int] | frozenset = frozenset()) -> DirectLabelColormap:
    """CIHP colours; background (0) and the ``hidden`` classes are transparent."""
    colors = {None: np.zeros(4), 0: np.zeros(4)}
    for value in range(1, len(CLASS_NAMES)):
        colors[value] = np.append(PALETTE[value] / 255.0, 0.0 if value in hidden else 1.0)
    return DirectLabelColormap(color_dict=colors)


def parts_features() -> pd.DataFrame:
    """The features table that makes napari's status bar name the class under the cursor."""
    return pd.DataFrame({"index": np.arange(len(CLASS_NAMES)), "class": list(CLASS_NAMES)})


class EditTracker:
    """Marks the pixels of a Labels layer that were changed by anyone but the model.

    ``mask`` has the layer's shape. Changes made inside :meth:`model_writes` are not edits.
    """

    def __init__(self, layer: Labels):
        self.mask = np.zeros(layer.data.shape, bool)
        self._model_writing = False
        layer.events.paint.connect(self._on_paint)

    @property
    def model_writing(self) -> bool:
        """Whether the change being made now is the model's (inside :meth:`model_writes`)."""
        return self._model_writing

    @contextmanager
    def model_writes(self):
        self._model_writing = True
        try:
            yield
        finally:
            self._model_writing = False

    def _on_paint(self, event) -> None:
        if self._model_writing:
            return
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # paint/fill/polygon: a box and the pixels changed
                if atom.mask is None:  # every pixel of the box changed
                    self.mask[atom.slice_key] = True
                else:
                    self.mask[atom.slice_key] |= atom.mask
            else:  # data_setitem: (indices, old values, new values); the masked atom is a
                self.mask[atom[0]] = True  # NamedTuple too, hence tested first

    def forget(self, frames=slice(None)) -> None:
        """Treat the pixels of ``frames`` (all by default) as the model's again."""
        self.mask[frames] = False


TRACKER_KEY = "napari-deeplab edits"
CLASSES_KEPT_KEY = "napari-deeplab classes kept"


def keep_classes(layer: Labels) -> None:
    """Keep the paint label of a parts layer a CIHP class (0..19): napari's new-label key (M,
    "set label to the next unused") would pick 20 or more, which is no class. Such a label
    becomes the first class (1..19) not yet in the layer, or 19 when all are, with one line
    in napari's notifications. Connected once per layer."""
    if layer.metadata.get(CLASSES_KEPT_KEY):
        return
    layer.metadata[CLASSES_KEPT_KEY] = True
    last = len(CLASS_NAMES) - 1

    def keep(event=None) -> None:
        value = layer.selected_label
        if 0 <= value <= last:
            return
        data = np.asarray(layer.data)
        used = (
            np.bincount(data.ravel(), minlength=last + 1)[: last + 1]
            if data.dtype.kind in "ui" and data.size
            else np.zeros(last + 1, int)
        )
        unused = [c for c in range(1, last + 1) if not used[c]]
        chosen = unused[0] if unused else last
        layer.selected_label = chosen
        from napari.utils.notifications import show_info

        show_info(
            f"Label {value} is no CIHP class (0..{last}): painting with "
            f"{chosen} {CLASS_NAMES[chosen]} instead"
        )

    layer.events.selected_label.connect(keep)
    keep()


def edit_tracker(layer: Labels, *, edited: bool = False) -> EditTracker:
    """The layer's tracker, created (and connected) on first use with every pixel counted as
    the annotator's if ``edited`` (a layer the model did not make), else none.

    Kept in the layer's own ``metadata``: plugin widgets see napari's proxy of a layer, a new
    object on each access, so nothing may be keyed by the layer object.
    """
    tracker = layer.metadata.get(TRACKER_KEY)
    if not isinstance(tracker, EditTracker) or tracker.mask.shape != layer.data.shape:
        tracker = EditTracker(layer)
        tracker.mask[:] = edited
        layer.metadata[TRACKER_KEY] = tracker
    return tracker


def apply_prediction(
    layer: Labels, labels: np.ndarray, frame: int | None = None, keep_edits: bool = True
) -> int:
    """Write a new prediction into ``layer`` as one undoable step; return the pixels changed.

    ``labels`` is H x W; ``frame`` selects the plane of an N x H x W layer. With
    ``keep_edits`` the pixels the annotator edited keep their value; otherwise they take the
    prediction too and stop counting as edits.
    """
    tracker = edit_tracker(layer, edited=True)  # a layer without a tracker: all of it is kept
    key = (slice(None), slice(None)) if frame is None else (frame,)
    current = layer.data[key]
    changed = current != labels
    if keep_edits:
        changed &= ~tracker.mask[key]
    else:
        tracker.forget(key)
    positions = np.nonzero(changed)
    if frame is not None:
        positions = (np.full(positions[0].shape, frame, np.intp), *positions)
    if positions[0].size:
        with tracker.model_writes():
            layer.data_setitem(positions, labels[changed])
    return int(positions[0].size)
