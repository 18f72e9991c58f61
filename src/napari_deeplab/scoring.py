"""Per-photo uncertainty: one number to rank photos by for review, and the regions behind it.

Pure numpy (and OpenCV's connected components): the inputs are what
:mod:`napari_deeplab.inference` computes for a photo, its labels and its confidence (the
top-class probability) at full resolution.

The score is the **mean uncertainty** ``mean(1 - confidence)`` over the photo's pixels, in
[0, 1 - 1/C] for C classes: 0 when the model is sure of every pixel, higher when it hesitates
over more of the photo or more strongly. It was chosen over "the fraction of pixels under a
threshold" because it needs no threshold to tune, it does not jump when a large region sits
just at the threshold, and it is independent of the photo's size. The regions are where it
comes from: the largest connected (8-neighbour) areas of pixels whose confidence is under
:data:`LOW_CONFIDENCE`, each with its bounding box and its most frequent predicted class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LOW_CONFIDENCE = 0.5
"""A pixel whose top-class probability is under this is "low confidence" (the model gives
the other classes together at least as much)."""

MAX_REGIONS = 5
"""Regions kept per photo, the largest first."""

MIN_REGION_PIXELS = 16
"""Low-confidence areas smaller than this are left out of the regions (they still count in
the score)."""


@dataclass(frozen=True)
class Region:
    """One low-confidence area: its bounding box ``top, left, bottom, right`` (pixels, bottom
    and right exclusive), its size ``pixels``, its most frequent predicted class ``class_id``
    and its mean confidence."""

    top: int
    left: int
    bottom: int
    right: int
    pixels: int
    class_id: int
    confidence: float

    def to_json(self) -> dict:
        """The region as a JSON-ready dict (the scores file's ``regions`` entries)."""
        return asdict(self)

    @classmethod
    def from_json(cls, entry: dict) -> Region:
        """The region of a scores-file entry (:meth:`to_json`)."""
        return cls(**{name: type_(entry[name]) for name, type_ in _REGION_TYPES.items()})


_REGION_TYPES = {
    "top": int,
    "left": int,
    "bottom": int,
    "right": int,
    "pixels": int,
    "class_id": int,
    "confidence": float,
}


@dataclass(frozen=True)
class PhotoScore:
    """A photo's ``score`` (:func:`uncertainty_score`), the fraction of its pixels under
    :data:`LOW_CONFIDENCE` (``low_fraction``) and its largest low-confidence ``regions``."""

    score: float
    low_fraction: float
    regions: tuple[Region, ...]


def uncertainty_score(confidence: np.ndarray) -> float:
    """The mean uncertainty ``mean(1 - confidence)`` of one photo.

    Parameters
    ----------
    confidence : ndarray
        H x W float (float32 from inference), the top-class probability in [0, 1].

    Returns
    -------
    float
        In [0, 1]; higher means less confident (reviewed first).
    """
    confidence = np.asarray(confidence)
    if confidence.ndim != 2 or confidence.size == 0:
        raise ValueError(f"expected an H x W confidence map, got shape {confidence.shape}")
    return float(1.0 - confidence.mean(dtype=np.float64))


def low_confidence_regions(
    labels: np.ndarray,
    confidence: np.ndarray,
    *,
    threshold: float = LOW_CONFIDENCE,
    max_regions: int = MAX_REGIONS,
    min_pixels: int = MIN_REGION_PIXELS,
) -> list[Region]:
    """The largest connected areas of pixels whose confidence is under ``threshold``.

    Parameters
    ----------
    labels : ndarray
        H x W integer class ids (uint8 from inference).
    confidence : ndarray
        H x W float, the top-class probability, same shape.
    threshold : float
        Pixels strictly under it are low confidence.
    max_regions : int
        At most this many regions, the largest first (ties: top-most, then left-most).
    min_pixels : int
        Areas smaller than this are left out.

    Returns
    -------
    list of Region
    """
    import cv2

    labels, confidence = np.asarray(labels), np.asarray(confidence)
    if labels.shape != confidence.shape or labels.ndim != 2:
        raise ValueError(
            f"labels {labels.shape} and confidence {confidence.shape} must be one H x W shape"
        )
    low = (confidence < threshold).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        low, connectivity=8, ltype=cv2.CV_32S
    )
    if count <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = sorted(
        (i for i in range(count - 1) if areas[i] >= min_pixels),
        key=lambda i: (-areas[i], stats[i + 1, cv2.CC_STAT_TOP], stats[i + 1, cv2.CC_STAT_LEFT]),
    )[:max_regions]
    if not order:
        return []
    mask = low.astype(bool)
    where = components[mask]
    classes = labels[mask].astype(np.int64)
    number = int(classes.max()) + 1
    votes = np.bincount(where.astype(np.int64) * number + classes, minlength=count * number)
    votes = votes.reshape(count, number)
    sums = np.bincount(where, weights=confidence[mask].astype(np.float64), minlength=count)
    regions = []
    for i in order:
        left, top, width, height, area = (int(v) for v in stats[i + 1])
        regions.append(
            Region(
                top=top,
                left=left,
                bottom=top + height,
                right=left + width,
                pixels=area,
                class_id=int(votes[i + 1].argmax()),
                confidence=round(float(sums[i + 1] / area), 4),
            )
        )
    return regions


def score_photo(labels: np.ndarray, confidence: np.ndarray) -> PhotoScore:
    """A photo's :class:`PhotoScore` from its labels (H x W uint8) and confidence (H x W
    float32): :func:`uncertainty_score`, the fraction under :data:`LOW_CONFIDENCE` and
    :func:`low_confidence_regions`."""
    confidence = np.asarray(confidence)
    return PhotoScore(
        score=uncertainty_score(confidence),
        low_fraction=float(np.count_nonzero(confidence < LOW_CONFIDENCE) / confidence.size),
        regions=tuple(low_confidence_regions(labels, confidence)),
    )
