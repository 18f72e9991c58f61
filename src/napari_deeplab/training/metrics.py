"""Scoring a model on CIHP-format samples: the confusion matrix, mean IoU and pixel accuracy,
at full resolution (:func:`evaluate`, our inference path) or at the training resolution
(:class:`ResizedValidation`, what picks the best model while fine-tuning)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import cihp, distributed
from ..inference import segment
from .data import (
    IGNORE_CLASS,
    Dataset,
    NoLabelledPixels,
    SampleCache,
    SampleProblems,
    require_good_samples,
    resize_labels,
    resize_photo,
    sample_problem_line,
)


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel counts of each (true class, predicted class); truth :data:`IGNORE_CLASS` is not counted.

    Parameters
    ----------
    truth : ndarray
        Class ids of any shape and integer dtype, 0..``num_classes - 1`` or :data:`IGNORE_CLASS`.
    predicted : ndarray
        Class ids of the same shape, integer dtype, 0..``num_classes - 1``.
    num_classes : int
        The model's classes.

    Returns
    -------
    ndarray
        ``num_classes`` x ``num_classes`` int64 pixel counts, rows the truth, columns the
        prediction.
    """
    truth, predicted = truth.ravel(), predicted.ravel()
    labelled = truth != IGNORE_CLASS
    if not labelled.all():
        truth, predicted = truth[labelled], predicted[labelled]
    return np.bincount(
        truth.astype(np.int64) * num_classes + predicted, minlength=num_classes**2
    ).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray, class_names) -> dict:
    """Mean IoU (under both conventions of the field), accuracies and per-class IoU of a
    confusion matrix.

    Parameters
    ----------
    matrix : ndarray
        C x C integer pixel counts, rows the truth, columns the prediction (:func:`confusion`).
    class_names : sequence of str
        The C class names, in class order.

    Returns
    -------
    dict
        ``miou``: float, the mean IoU over the classes present in truth or prediction (0.0 if
        none is; CIHP_PGN's convention, TF ``mean_iou``); ``miou_all_classes``: float, the
        mean over all C classes, an absent class counting 0 (Self-Correction-Human-Parsing's
        ``utils/miou.py``); ``pixel_accuracy``: float, the share of pixels predicted right;
        ``mean_class_accuracy``: float, the mean over all C classes of the share of the class's
        pixels predicted as it (absent classes 0, as in that same file); ``per_class``:
        {name: IoU as a float, or None where absent}.
    """
    intersection = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    iou = np.where(present, intersection / np.maximum(union, 1), np.nan)
    return {
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "miou_all_classes": float(np.mean(intersection / np.maximum(union, 1))),
        "pixel_accuracy": float(intersection.sum() / max(matrix.sum(), 1)),
        "mean_class_accuracy": float(np.mean(intersection / np.maximum(matrix.sum(1), 1))),
        "per_class": {
            name: (None if np.isnan(v) else float(v))
            for name, v in zip(class_names, iou, strict=True)
        },
    }


def evaluate(model, dataset: Dataset, *, tta: str | None = None) -> dict:
    """Score ``model`` on every sample of ``dataset`` at full resolution (our inference path).

    Every sample is checked first (:func:`~napari_deeplab.training.check_samples`):
    :class:`~napari_deeplab.training.SampleProblems` lists the bad ones before any prediction.
    Pixels labelled 255 are ignored; :class:`~napari_deeplab.training.NoLabelledPixels` if no
    pixel is labelled. ``tta``: test-time augmentation
    (:func:`~napari_deeplab.inference.inference_model`).

    Returns
    -------
    dict
        What :func:`scores` returns for the pixels of every sample together.
    """
    from ..model import model_info

    names = model_info(model).class_names
    require_good_samples(dataset, num_classes=len(names))
    matrix = np.zeros((len(names), len(names)), np.int64)
    for sample_id in dataset.ids:
        try:
            sample = cihp.read_sample(dataset.root, sample_id, dataset.split)
        except (ValueError, OSError) as error:  # photos.PhotoError, PhotoTooLargeError
            raise SampleProblems(
                [sample_problem_line(dataset, sample_id, str(error))],
                str(cihp.split_folder(dataset.root, dataset.split)),
            ) from None
        predicted, _ = segment(sample.image, model, tta=tta)
        # require_good_samples found each mask: one removed since fails in confusion, as before
        matrix += confusion(sample.category_ids, predicted, len(names))  # type: ignore[arg-type]
    if not matrix.any():
        raise NoLabelledPixels(dataset)
    return scores(matrix, names)


class ResizedValidation:
    """Mean IoU of ``model`` on a :class:`SampleCache` at the model's training resolution:
    photos resized to ``size`` x ``size`` (bilinearly, as inference makes its input), masks
    resized nearest, predicted ``batch_size`` at a time by one compiled function (the last
    batch padded, so that every call has the same shape and nothing is traced again).

    The cache should be made with ``max_side=size``: the photos are then shrunk once, and the
    inputs are the model inputs of inference up to the 8-bit rounding of the cache.
    """

    def __init__(
        self,
        model,
        cache: SampleCache,
        size: int,
        batch_size: int,
        pool: ThreadPoolExecutor,
        distribution=None,
    ):
        import keras
        from keras import ops

        from ..model import model_info

        self.cache, self.size, self.batch_size, self.pool = cache, size, batch_size, pool
        self.distribution = distribution
        self.class_names = model_info(model).class_names
        logits = model.outputs[0]
        self.labels_of = keras.Model(
            model.inputs, ops.argmax(logits, axis=-1), name=f"{model.name}_labels"
        )  # shares model's weights

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.cache[index]
        return resize_photo(sample[..., :3], self.size), resize_labels(sample[..., 3], self.size)

    def miou(self) -> float:
        """The mean IoU (see :func:`scores`) over every sample of the cache, 0..1."""
        classes = len(self.class_names)
        matrix = np.zeros((classes, classes), np.int64)
        for first in range(0, len(self.cache), self.batch_size):
            indices = list(range(first, min(first + self.batch_size, len(self.cache))))
            pairs = list(self.pool.map(self._resized, indices))
            x = np.stack([p[0] for p in pairs] + [pairs[-1][0]] * (self.batch_size - len(pairs)))
            predicted = np.asarray(
                self.labels_of.predict_on_batch(distributed.batch_input(self.distribution, x))
            )
            for (_, truth), labels in zip(pairs, predicted, strict=False):
                matrix += confusion(truth, labels.astype(np.int64), classes)
        return scores(matrix, self.class_names)["miou"]


def score_model_file(
    path: Path,
    cache: SampleCache,
    size: int,
    batch_size: int,
    pool: ThreadPoolExecutor,
    distribution,
    class_names,
) -> tuple[float | None, str]:
    """The mean IoU of the model saved in ``path``, measured as the model being trained is.

    Parameters
    ----------
    path : Path
        A model file (anything :func:`~napari_deeplab.model.load_model` takes).
    cache, size, batch_size, pool, distribution
        As :class:`ResizedValidation` takes them.
    class_names : sequence of str
        The classes of the model being trained; a model of other classes is not scored.

    Returns
    -------
    (float or None, str)
        (its mean IoU, "") or (None, why it cannot be scored: unreadable, other classes).
    """
    from ..model import ModelError, load_model, model_info

    try:
        existing = load_model(path)
    except ModelError as error:
        return None, str(error)
    if tuple(model_info(existing).class_names) != tuple(class_names):
        return None, (
            f"{path} has {len(model_info(existing).class_names)} classes, not the "
            f"{len(class_names)} of the model being trained"
        )
    return ResizedValidation(existing, cache, size, batch_size, pool, distribution).miou(), ""
