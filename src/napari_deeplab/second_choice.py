"""The model's second choice: the runner-up class of every pixel, and relabelling a region with it.

Where the model is wrong about a whole region (coat for upper-clothes, left arm for right) its
runner-up class is very often the right one. :func:`upsample_runner_up` gives the runner-up
(the class of the second largest logit) at a photo's full size, exactly as the labels are the
argmax (:func:`~napari_deeplab.inference.upsample_logits`): of the logits upsampled bilinearly.
It costs one byte per pixel, as the labels do (1,000,000 bytes per megapixel).

:func:`relabel_with_runner_up` relabels a region with it, by **majority per class**: inside the
region, the pixels of each class take the runner-up class most of them have (leaving out votes
for the class itself: a pixel the annotator painted may have it as runner-up). A region of one
class thus becomes one class, not the speckle of per-pixel runner-ups along its edges, where
the second choice is often a neighbour (background) rather than the alternative for the region.
"""

from __future__ import annotations

import numpy as np


def runner_up(logits: np.ndarray) -> np.ndarray:
    """The class of the second largest logit.

    Parameters
    ----------
    logits : ndarray
        ... x C float logits (C >= 2, at most 256).

    Returns
    -------
    ndarray
        ... uint8 class ids. Of two tied largest logits the argmax is the lower class id and
        the runner-up the other.
    """
    logits = np.asarray(logits)
    if logits.shape[-1] < 2:
        raise ValueError(f"a runner-up needs at least 2 classes, got {logits.shape[-1]}")
    top = logits.argmax(axis=-1)[..., None]
    others = logits.astype(np.float32, copy=True)
    np.put_along_axis(others, top, -np.inf, axis=-1)
    return others.argmax(axis=-1).astype(np.uint8)


def upsample_runner_up(
    logits: np.ndarray, shape: tuple[int, int], grid_labels: np.ndarray | None = None
) -> np.ndarray:
    """The runner-up class of the logits upsampled bilinearly (half-pixel centres) to ``shape``.

    A blend of four logit vectors that share both their largest and second largest class
    keeps both, so the full blend is computed only in the grid cells whose corners differ in
    either (:func:`~napari_deeplab.inference.upsample_classes`, in bands: no H x W x C array).

    Parameters
    ----------
    logits : ndarray
        h x w x C float logits on the model's grid.
    shape : (int, int)
        The output's (H, W).
    grid_labels : ndarray, optional
        h x w argmax of ``logits``, when the caller has it.

    Returns
    -------
    ndarray
        H x W uint8: at each pixel, the class of the second largest upsampled logit.
    """
    from .inference import mixed_cells, upsample_classes

    logits = np.asarray(logits, np.float32)
    if grid_labels is None:
        grid_labels = logits.argmax(axis=-1)
    grid_second = runner_up(logits)
    mixed = mixed_cells(np.asarray(grid_labels, np.uint8)) | mixed_cells(grid_second)
    return upsample_classes(logits, shape, grid_second, mixed, runner_up)


def relabel_with_runner_up(
    labels: np.ndarray, runner_up_classes: np.ndarray, region_mask: np.ndarray
) -> np.ndarray:
    """``labels`` with the region relabelled by its runner-up class, by majority per class.

    Parameters
    ----------
    labels : ndarray
        H x W uint8 class ids (the parts as they are now).
    runner_up_classes : ndarray
        H x W uint8, the model's runner-up class of each pixel (:func:`upsample_runner_up`).
    region_mask : ndarray
        H x W bool: the region (a connected region of one class, or a selection).

    Returns
    -------
    ndarray
        A new H x W uint8 array: inside the region, each class's pixels take the runner-up
        class that most of them have, other than that class (the lowest id on a tie); a class
        whose pixels' runner-up is only itself keeps its pixels. Outside, ``labels`` as is.
    """
    labels = np.asarray(labels)
    runner_up_classes = np.asarray(runner_up_classes)
    region_mask = np.asarray(region_mask, bool)
    if not labels.shape == runner_up_classes.shape == region_mask.shape:
        raise ValueError(
            f"labels {labels.shape}, runner-up {runner_up_classes.shape} and region "
            f"{region_mask.shape} must have the same shape"
        )
    relabelled = labels.copy()
    inside_labels, inside_second = labels[region_mask], runner_up_classes[region_mask]
    for current in np.unique(inside_labels):
        votes = np.bincount(inside_second[inside_labels == current], minlength=256)
        votes[current] = 0
        if votes.any():
            relabelled[region_mask & (labels == current)] = votes.argmax()
    return relabelled
