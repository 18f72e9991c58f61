"""The model's second choice in napari: the runner-up map kept with a parts layer, and the key
(:data:`SECOND_CHOICE_KEY`) that relabels a region with it.

The map is a :class:`RunnerUpMap` in the parts layer's ``metadata``: one uint8 per pixel of the
layer (exactly what the labels cost), written with each run's labels (a new run replaces the
frames it ran on) and dropped with the layer. The key relabels, in the frame shown, the
connected region of the class under the cursor, or the shapes of the active Shapes layer (its
selected shapes, or all of them when none is selected), with
:func:`napari_deeplab.second_choice.relabel_with_runner_up`: one ``data_setitem``, one undo
step, counted as the annotator's edit (a later run keeps it).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels, Shapes
from skimage.segmentation import flood

from ..cihp import CLASS_NAMES
from ..second_choice import relabel_with_runner_up

SECOND_CHOICE_KEY = "Shift-O"
"""Relabel the region under the cursor (or the selection) with the model's other choice."""

RUNNER_UP_KEY = "napari-deeplab runner-up"
"""The parts layer's ``metadata`` key of its :class:`RunnerUpMap`."""


class RunnerUpMap:
    """The model's runner-up class of every pixel of a parts layer: ``classes`` (the layer's
    shape, uint8), and ``known`` (a bool per frame, a 0-d array for a single photo): the
    frames that a run wrote a map for."""

    def __init__(self, shape: tuple):
        self.classes = np.zeros(shape, np.uint8)
        self.known = np.zeros(shape[:-2], bool)

    @property
    def nbytes(self) -> int:
        return self.classes.nbytes + self.known.nbytes


def runner_up_map(layer: Labels) -> RunnerUpMap | None:
    """The layer's map, if a run wrote one for its present shape."""
    found = layer.metadata.get(RUNNER_UP_KEY)
    if isinstance(found, RunnerUpMap) and found.classes.shape == layer.data.shape:
        return found
    return None


def store_runner_up(layer: Labels, runner_up: np.ndarray, frame: int | None = None) -> None:
    """Keep ``runner_up`` (H x W uint8) as the map of ``layer``'s ``frame`` (None: a single
    photo), replacing the one a former run left."""
    kept = runner_up_map(layer)
    if kept is None:
        kept = RunnerUpMap(layer.data.shape)
        layer.metadata[RUNNER_UP_KEY] = kept
    key = () if frame is None else (frame,)
    kept.classes[key] = runner_up
    kept.known[key] = True


def current_frame(viewer, layer) -> tuple:
    """The index of the frame shown of a stack layer (() for a single photo)."""
    point = np.round(layer.world_to_data(viewer.dims.point)[:-2]).astype(int)
    return tuple(int(i) for i in np.clip(point, 0, np.array(layer.data.shape[:-2]) - 1))


def region_to_relabel(viewer, parts: Labels, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """(H x W bool mask, what it is): the shapes of the active Shapes layer (the selected ones,
    else all), or the connected region (4-connected) of the class under the cursor; ValueError
    saying what to do when there is neither."""
    active = viewer.layers.selection.active
    if isinstance(active, Shapes) and len(active.data):
        chosen = sorted(active.selected_data) or list(range(len(active.data)))
        masks = active.to_masks(labels.shape)[chosen]
        return masks.any(axis=0), f"{len(chosen)} shape(s) of '{active.name}'"
    row, col = (int(i) for i in np.round(parts.world_to_data(viewer.cursor.position)[-2:]))
    if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
        raise ValueError(f"Point at a region of '{parts.name}' (or select shapes), then press")
    if labels[row, col] == 0:
        raise ValueError("The cursor is on background: point at a part (or select shapes)")
    name = CLASS_NAMES[labels[row, col]] if labels[row, col] < len(CLASS_NAMES) else "?"
    return flood(labels, (row, col), connectivity=1), f"the {name} region"


def relabel_with_second_choice(viewer, parts: Labels) -> str:
    """Relabel the region (:func:`region_to_relabel`) of the frame shown of ``parts`` with the
    model's runner-up (one undo step); return the status line. ValueError with what to do if
    there is no runner-up map for the frame or no region."""
    kept = runner_up_map(parts)
    frame = current_frame(viewer, parts)
    if kept is None or not kept.known[frame]:
        where = f" frame {frame[0]}" if frame else ""
        raise ValueError(f"No second choice for '{parts.name}'{where}: run the model on it first")
    labels = np.asarray(parts.data[frame])
    mask, what = region_to_relabel(viewer, parts, labels)
    relabelled = relabel_with_runner_up(labels, kept.classes[frame], mask)
    changed = np.nonzero(relabelled != labels)
    if not changed[0].size:
        return f"Second choice: {what} keeps its classes (the model had no other)"
    positions = tuple(np.full(changed[0].shape, i, np.intp) for i in frame) + changed
    parts.data_setitem(positions, relabelled[changed])
    classes = np.unique(relabelled[changed])
    names = ", ".join(CLASS_NAMES[c] for c in classes if c < len(CLASS_NAMES))
    return f"Second choice: {changed[0].size:,} px of {what} -> {names} (Ctrl+Z undoes)"
