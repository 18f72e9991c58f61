"""Re-parse one person at the model's full detail: crop, segment the crop, merge it back.

The model sees every photo resized to its square input (512 x 512 for the seed) without
keeping aspect, so a person 150 px tall in a 3000 x 4000 photo is about 25 px tall for it.
Cropped to a square of about 200 px around them (a margin of :data:`MARGIN` on each side),
the same person is about 380 px tall in the model's input: 15 times the pixels.

Pure numpy: :func:`crop_box` (a person's mask or a box -> the slices of the square crop),
:func:`crop_changes` / :func:`merge_crop` (the crop's labels -> the pixels of the full parts
map they change, hand edits and other people kept) and :func:`reparse_people` (every proposed
person above a size, in batch, with any ``segment(photos) -> labels`` function). The napari
tool (``_napari/reparse_tool.py``) and ``napari-deeplab predict --per-person`` use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MARGIN = 0.15
"""The crop's margin on each side, as a share of the person's larger side: a person 150 px
tall is cropped to a square of 150 x 1.3 = 195 px."""

MIN_CROP_SIDE = 32
"""The smallest crop side in pixels (a tiny person is still given some context)."""

Box = tuple[int, int, int, int]
"""(top, left, bottom, right) in pixels, bottom and right exclusive."""


def bounding_box(mask: np.ndarray) -> Box | None:
    """The box of the True pixels of ``mask`` (H x W bool), or None when there are none."""
    mask = np.asarray(mask, bool)
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    top, bottom = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    left, right = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return int(top), int(left), int(bottom), int(right)


def _centred_span(low: int, high: int, side: int, limit: int) -> tuple[int, int]:
    """A span of ``side`` pixels (at most ``limit``) centred on [low, high), moved inside
    [0, limit)."""
    side = min(side, limit)
    start = (low + high - side) // 2
    start = min(max(start, 0), limit - side)
    return start, start + side


def crop_box(
    mask_or_box: np.ndarray | Box,
    shape: tuple[int, int],
    margin: float = MARGIN,
    min_side: int = MIN_CROP_SIDE,
) -> tuple[slice, slice]:
    """The square crop around a person, as (row slice, column slice) of the photo.

    Parameters
    ----------
    mask_or_box : ndarray or (top, left, bottom, right)
        The person: an H x W bool mask (its bounding box is taken) or a box in pixels
        (bottom and right exclusive; clipped to the photo).
    shape : (int, int)
        The photo's (H, W).
    margin : float
        Added on each side, as a share of the box's larger side.
    min_side : int
        The crop's side is at least this (and at most the photo's side).

    Returns
    -------
    (slice, slice)
        A square of side ``max(box height, box width) * (1 + 2 * margin)`` (rounded up)
        centred on the box, shifted to lie inside the photo; where the photo is narrower
        than that, the whole height or width. The model's input is square, so the person
        is not stretched in it.

    Raises ValueError for an empty mask or box.
    """
    height, width = shape
    if isinstance(mask_or_box, np.ndarray) and mask_or_box.ndim == 2:
        if mask_or_box.shape != tuple(shape):
            raise ValueError(f"mask shape {mask_or_box.shape} differs from the photo's {shape}")
        box = bounding_box(mask_or_box)
        if box is None:
            raise ValueError("the person's mask is empty: nothing to re-parse")
    else:
        top, left, bottom, right = (int(round(float(v))) for v in mask_or_box)
        box = (max(top, 0), max(left, 0), min(bottom, height), min(right, width))
    top, left, bottom, right = box
    if bottom <= top or right <= left:
        raise ValueError(f"the box {tuple(mask_or_box)} holds no pixel of the photo {shape}")
    side = max(bottom - top, right - left)
    side = max(int(np.ceil(side * (1 + 2 * margin) - 1e-6)), min_side)  # 150 * 1.3: 195
    rows = _centred_span(top, bottom, side, height)
    cols = _centred_span(left, right, side, width)
    return slice(*rows), slice(*cols)


def crop_changes(
    labels: np.ndarray,
    crop_labels: np.ndarray,
    box: tuple[slice, slice],
    keep_mask: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The pixels of ``labels`` that the crop's labels change, and their new values.

    Parameters
    ----------
    labels : ndarray
        H x W uint8 parts map (the layer's data).
    crop_labels : ndarray
        h x w uint8: the model's labels of the crop ``labels[box]``, at the crop's size.
    box : (slice, slice)
        The crop, from :func:`crop_box`.
    keep_mask : ndarray, optional
        H x W bool: pixels that keep their value (hand edits, other people).

    Returns
    -------
    positions : (ndarray, ndarray)
        Row and column indices into ``labels`` (intp) of the pixels that change.
    values : ndarray
        Their new values (uint8), as ``Labels.data_setitem`` takes them.
    """
    rows, cols = box
    current = np.asarray(labels)[rows, cols]
    crop_labels = np.asarray(crop_labels)
    if crop_labels.shape != current.shape:
        raise ValueError(
            f"the crop's labels have shape {crop_labels.shape}, the crop {current.shape}"
        )
    changed = current != crop_labels
    if keep_mask is not None:
        changed &= ~np.asarray(keep_mask, bool)[rows, cols]
    crop_rows, crop_cols = np.nonzero(changed)
    positions = (crop_rows + rows.start, crop_cols + cols.start)
    return positions, crop_labels[changed].astype(np.uint8)


def merge_crop(
    labels: np.ndarray,
    crop_labels: np.ndarray,
    box: tuple[slice, slice],
    keep_mask: np.ndarray | None = None,
) -> np.ndarray:
    """``labels`` (H x W uint8) with the crop's labels written in, except where ``keep_mask``
    (H x W bool) is True; a new array (see :func:`crop_changes`)."""
    merged = np.array(labels, copy=True)
    positions, values = crop_changes(labels, crop_labels, box, keep_mask)
    merged[positions] = values
    return merged


def others_mask(people: np.ndarray, person: int) -> np.ndarray:
    """H x W bool: the pixels of the people other than ``person`` (they keep their parts when
    ``person`` is re-parsed)."""
    people = np.asarray(people)
    return (people > 0) & (people != person)


def reparse_people(
    photo: np.ndarray,
    labels: np.ndarray,
    people: np.ndarray,
    segment: Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]],
    min_pixels: int,
    *,
    margin: float = MARGIN,
    keep_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Re-parse every person of ``people`` with at least ``min_pixels`` pixels, largest first
    (where crops overlap on background, the smaller person's, seen in more detail, wins).

    Parameters
    ----------
    photo : ndarray
        H x W x 3 (any form the model takes).
    labels : ndarray
        H x W uint8 parts map of the whole photo (from the plain run).
    people : ndarray
        H x W uint8 people map (:func:`napari_deeplab.people.propose_people`).
    segment : callable
        ``segment(crops)`` -> one h x w uint8 labels map per crop (the model on each crop).
    min_pixels : int
        People smaller than this keep the plain run's parts.
    margin : float
        :func:`crop_box`'s.
    keep_mask : ndarray, optional
        H x W bool: pixels never changed (hand edits).

    Returns
    -------
    labels : ndarray
        H x W uint8: each person's crop written over the pixels that are not another
        person's (and not kept).
    reparsed : int
        How many people were re-parsed.
    """
    labels = np.asarray(labels)
    people = np.asarray(people)
    sizes = np.bincount(people.ravel(), minlength=1)
    chosen = [p for p in np.argsort(-sizes, kind="stable") if p > 0 and sizes[p] >= min_pixels]
    if not chosen:
        return labels.copy(), 0
    boxes = [crop_box(people == person, labels.shape, margin) for person in chosen]
    crops = [np.asarray(photo)[rows, cols] for rows, cols in boxes]
    merged = labels.copy()
    for person, box, crop_labels in zip(chosen, boxes, segment(crops), strict=True):
        keep = others_mask(people, person)
        if keep_mask is not None:
            keep |= keep_mask
        positions, values = crop_changes(merged, crop_labels, box, keep)
        merged[positions] = values
    return merged, len(chosen)


def reparse_with_model(
    photo: np.ndarray, labels: np.ndarray, model, min_pixels: int, *, batch_size: int = 4
) -> tuple[np.ndarray, int]:
    """``predict --per-person``: propose the people of ``labels`` (H x W uint8, the plain run
    on ``photo``) and re-parse each of at least ``min_pixels`` pixels with ``model``
    (:func:`napari_deeplab.inference.segment_stack` on the crops, in the calling thread);
    returns the H x W uint8 labels and how many people were re-parsed."""
    from .inference import segment_stack
    from .people import propose_people

    def segment(crops):
        return [r.labels for r in segment_stack(crops, model, batch_size, confidence=False)]

    return reparse_people(photo, labels, propose_people(labels), segment, min_pixels)
