"""What a correction cost: the pixels an annotator changed from the model's pre-label, and the
active time spent on the photo.

:func:`effort` compares a pre-label with the accepted mask (numbers only, no files);
:class:`ActiveClock` turns the timestamps of an annotator's input events into active seconds,
leaving out idle gaps. The review queue records both at every Accept in the dataset's effort
log (:mod:`napari_deeplab.cihp.effort_log`); ``napari-deeplab report`` summarises it.
"""

from __future__ import annotations

import numpy as np

from .cihp import NUM_CLASSES
from .training.metrics import confusion

IDLE_GAP_S = 60.0
"""A gap between two input events longer than this is idle time, left out of the active time."""


def effort(prelabel: np.ndarray, accepted: np.ndarray, num_classes: int = NUM_CLASSES) -> dict:
    """How much of ``prelabel`` the annotator changed to get ``accepted``.

    Parameters
    ----------
    prelabel, accepted : ndarray
        H x W class ids (any integer dtype, 0..``num_classes - 1``), the model's pre-label and
        the mask accepted into the dataset.

    Returns
    -------
    dict
        ``pixels`` (H * W), ``changed`` (pixels whose class differs), ``changed_fraction``
        (``changed / pixels``, 0.0 for an empty mask) and ``confusion``: a ``num_classes`` x
        ``num_classes`` int64 array of pixel counts, rows the pre-label's class, columns the
        accepted class (its diagonal: the pixels kept).

    Raises ``ValueError`` (one line) for masks of different shapes or a class id out of range.
    """
    prelabel, accepted = np.asarray(prelabel), np.asarray(accepted)
    if prelabel.shape != accepted.shape:
        raise ValueError(
            f"the pre-label is {prelabel.shape} and the accepted mask {accepted.shape}: "
            "their changes cannot be counted"
        )
    for name, mask in (("pre-label", prelabel), ("accepted mask", accepted)):
        if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
            raise ValueError(f"the {name} has class ids outside 0..{num_classes - 1}")
    matrix = confusion(prelabel, accepted, num_classes)
    pixels = int(prelabel.size)
    changed = pixels - int(np.trace(matrix))
    return {
        "pixels": pixels,
        "changed": changed,
        "changed_fraction": changed / pixels if pixels else 0.0,
        "confusion": matrix,
    }


def sparse_pairs(matrix: np.ndarray) -> list[list[int]]:
    """The non-zero cells of a confusion matrix as ``[from class, to class, pixels]``, row by
    row (what the effort log stores)."""
    rows, columns = np.nonzero(matrix)
    return [[int(r), int(c), int(matrix[r, c])] for r, c in zip(rows, columns, strict=True)]


def dense_matrix(pairs, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The ``num_classes`` x ``num_classes`` int64 matrix of :func:`sparse_pairs`."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for row, column, count in pairs:
        matrix[row, column] += count
    return matrix


class ActiveClock:
    """The active time on one photo from the timestamps of the annotator's input events.

    The clock runs while the photo is shown (:meth:`resume` to :meth:`pause`); each
    :meth:`event` (a mouse move, a key, a paint stroke) marks the viewer in use. The active
    time is the sum of the gaps between consecutive moments (resume, events, pause) that are
    no longer than ``idle_gap_s``; a longer gap is idle and counts 0 (left out whole). Time
    while paused never counts. Timestamps are seconds of one monotonic clock, never earlier
    than the previous one (an earlier one counts as the previous one).
    """

    def __init__(self, idle_gap_s: float = IDLE_GAP_S):
        self.idle_gap_s = idle_gap_s
        self.active_s = 0.0
        self._last: float | None = None  # the last moment while running; None: paused

    @property
    def running(self) -> bool:
        return self._last is not None

    def resume(self, now: float) -> None:
        """The photo is shown (again): the clock runs from ``now``."""
        if self._last is None:
            self._last = now

    def event(self, now: float) -> None:
        """An input event at ``now``; ignored while paused."""
        if self._last is None:
            return
        gap = max(0.0, now - self._last)
        if gap <= self.idle_gap_s:
            self.active_s += gap
        self._last = max(self._last, now)

    def pause(self, now: float) -> float:
        """The photo is no longer shown (or is accepted) at ``now``; returns :attr:`active_s`."""
        self.event(now)
        self._last = None
        return self.active_s
