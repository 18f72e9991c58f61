"""Audit accepted samples for label noise: where a confident model disagrees with the mask.

Pure numpy / scikit-image; no Keras. The model's side is given as labels and confidence
(what :func:`napari_deeplab.inference.segment` returns) or as probabilities
(:func:`labels_and_confidence`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage import measure

from .cihp import LEFT_RIGHT_SWAP

BACKGROUND = 0
IGNORE = 255
KINDS = ("left/right swap", "missed part", "extra part", "wrong class")
"""The kinds of a suspect region (see :func:`region_kind`)."""


@dataclass
class SuspectRegion:
    """A connected region where the model (confident) and the mask disagree.

    ``bbox``: (row0, col0, row1, col1), ends exclusive; ``area`` in pixels; ``mask_class`` and
    ``model_class``: the most common class of each side in the region; ``confidence``: the
    model's mean top-class probability there; ``strength``: area x confidence."""

    bbox: tuple[int, int, int, int]
    area: int
    mask_class: int
    model_class: int
    confidence: float
    strength: float
    kind: str


def labels_and_confidence(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H x W x C float probabilities -> (H x W uint8 argmax, H x W float32 top probability)."""
    probabilities = np.asarray(probabilities, np.float32)
    return probabilities.argmax(axis=-1).astype(np.uint8), probabilities.max(axis=-1)


def region_kind(mask_class: int, model_class: int) -> str:
    """The kind of a disagreement: mask class the mirror of the model's: "left/right swap";
    model a part, mask background: "missed part"; mask a part, model background: "extra part";
    otherwise "wrong class"."""
    if mask_class != model_class and int(LEFT_RIGHT_SWAP[mask_class]) == model_class:
        return "left/right swap"
    if mask_class == BACKGROUND:
        return "missed part"
    if model_class == BACKGROUND:
        return "extra part"
    return "wrong class"


def _majority(values: np.ndarray) -> int:
    return int(np.bincount(values.astype(np.int64)).argmax())


def suspect_regions(
    mask: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    *,
    min_confidence: float = 0.8,
    min_area: int = 50,
) -> list[SuspectRegion]:
    """The regions of ``mask`` a confident model disagrees with, strongest first.

    Parameters
    ----------
    mask : ndarray
        H x W uint8 CIHP class ids (255: ignored).
    labels : ndarray
        H x W integer class ids the model predicts.
    confidence : ndarray
        H x W float top-class probability in [0, 1].
    min_confidence : float
        Pixels where the model is less sure are not counted.
    min_area : int
        Smaller connected regions (8-connectivity) are dropped.

    Returns
    -------
    list of SuspectRegion
        Each connected region of one (mask class, model class) pair, by strength, descending.
    """
    mask = np.asarray(mask)
    labels = np.asarray(labels)
    confidence = np.asarray(confidence, np.float32)
    if mask.shape != labels.shape or mask.shape != confidence.shape:
        raise ValueError(
            f"mask {mask.shape}, labels {labels.shape} and confidence {confidence.shape} "
            "must have one shape"
        )
    wrong = (mask != labels) & (mask != IGNORE) & (confidence >= min_confidence)
    # one region per (mask, model) class pair: a pair code, 0 where they agree
    pairs = np.where(wrong, mask.astype(np.int32) * 256 + labels.astype(np.int32) + 1, 0)
    regions = []
    for prop in measure.regionprops(measure.label(pairs, background=0, connectivity=2)):
        if prop.area < min_area:
            continue
        rows, cols = prop.coords[:, 0], prop.coords[:, 1]
        mask_class, model_class = _majority(mask[rows, cols]), _majority(labels[rows, cols])
        mean = float(confidence[rows, cols].mean())
        regions.append(
            SuspectRegion(
                tuple(int(v) for v in prop.bbox),  # type: ignore[arg-type]
                int(prop.area),
                mask_class,
                model_class,
                mean,
                float(prop.area * mean),
                region_kind(mask_class, model_class),
            )
        )
    return sorted(regions, key=lambda r: -r.strength)


def rank_samples(regions: dict[str, list[SuspectRegion]]) -> list[tuple[str, float]]:
    """Sample ids with their total strength, the most suspect first (ties: by id)."""
    totals = {key: sum(r.strength for r in found) for key, found in regions.items()}
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def region_dict(region: SuspectRegion) -> dict:
    """``region`` as a JSON-ready dict (``bbox`` a list)."""
    out = asdict(region)
    out["bbox"] = list(region.bbox)
    return out
