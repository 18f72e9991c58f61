"""Photo -> per-pixel CIHP labels and confidence at full resolution, one photo or a stack.

The photo is resized to the model's square input (512 x 512 for the seed) without keeping
aspect, exactly as the seed was trained; the logits, not the labels, are upsampled back to
the photo's size, bilinearly, one band of rows at a time so that memory stays bounded.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

BAND_PIXELS = 1 << 18
"""Output pixels upsampled at once, which bounds the working memory to a few bytes each."""


@dataclass
class Segmentation:
    """The result for one photo: ``labels`` H x W uint8 class ids, ``confidence`` H x W float32
    top-class probability in [0, 1]; ``index`` is the photo's position in the input."""

    index: int
    labels: np.ndarray
    confidence: np.ndarray


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as H x W x 3 RGB in 0..255 (uint8 where it already was, else float32).

    Accepts H x W (grayscale), H x W x 1, H x W x 3 or H x W x 4 (alpha dropped), of dtype
    bool, uint8, uint16 (0..65535), other integers (0..255) or float (0..1 when the maximum is
    at most 1, else 0..255).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image[..., :3]
    elif image.ndim != 2:
        raise ValueError(f"expected an H x W, H x W x 3 or H x W x 4 image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 257.0
    if np.issubdtype(image.dtype, np.integer):
        return np.clip(image, 0, 255).astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image.astype(np.float32))
        scale = 255.0 if image.size and image.max() <= 1.0 else 1.0
        return np.clip(image * scale, 0, 255)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (any form :func:`to_rgb` accepts) resized to ``size`` x ``size`` x 3 float32 in
    0..255, bilinearly without antialiasing and without keeping aspect, as the seed was trained
    (``tf.image.resize``: half-pixel centres). A photo of up to 2 x ``size`` rows is resized
    whole by OpenCV; of a taller one only the 2 x ``size`` rows that the samples fall between
    are read (resized horizontally by OpenCV, blended in numpy), so a 24-megapixel photo is
    never converted to float whole. This is the "prepare" stage of the pipeline
    (:mod:`napari_deeplab.pipeline`); thread-safe, and it releases the GIL for most of its work."""
    image = np.asarray(image)
    if image.shape[0] <= 2 * size:
        rgb = to_rgb(image).astype(np.float32, copy=False)
        return _resize_float(rgb, size, size)
    y_low, y_high, y_weight = _bilinear_taps(size, image.shape[0])
    rows = to_rgb(image[np.concatenate([y_low, y_high])]).astype(np.float32, copy=False)
    rows = _resize_float(rows, size, rows.shape[0])  # horizontally only: its rows stay
    top, bottom = rows[:size], rows[size:]
    wy = y_weight[:, None, None]
    return top + (bottom - top) * wy


def _resize_float(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (h x w x C float32, C <= 512) resized bilinearly with half-pixel centres and
    no antialiasing (OpenCV's ``INTER_LINEAR``, which is ``tf.image.resize``'s bilinear) to
    ``height`` x ``width`` x C float32."""
    import cv2

    resized = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, *image.shape[2:])


def _bilinear_taps(out_size: int, in_size: int):
    """Source indices and weights of half-pixel-centred bilinear resizing (as ``tf.image.resize``)."""
    position = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    position = np.clip(position, 0, in_size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (position - low).astype(np.float32)


def upsample_logits(logits: np.ndarray, shape: tuple[int, int], grid_labels=None,
                    grid_confidence=None, *, confidence: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class labels and confidence at ``shape`` = (H, W) from ``logits`` (h x w x C float).

    ``labels`` (H x W uint8) is the argmax of the logits upsampled bilinearly with half-pixel
    centres (as ``tf.image.resize``), without making the H x W x C blend: within a grid cell
    (four neighbouring logit vectors) the blend is a convex combination, so a class whose
    largest corner value is below some class's smallest can never win there. Most cells
    leave one candidate (all pixels take it) or two, ``a`` < ``b``: the pixel is ``a`` where
    the bilinear blend of the scalar ``logit_a - logit_b`` is >= 0 (argmax's tie rule). Only
    the pixels of cells with three or more candidates blend all C classes. ``confidence``
    (H x W float32 in [0, 1]) is the top-class softmax probability on the model's grid,
    upsampled bilinearly (OpenCV). Works in bands of rows. ``grid_labels`` and
    ``grid_confidence`` (h x w), when the caller has them already, are the argmax and top
    probability of ``logits``. ``confidence=False`` returns None for it and saves its 4 bytes
    per pixel. Thread-safe; most of the work releases the GIL.
    """
    height, width = shape
    logits = np.asarray(logits, np.float32)
    if grid_labels is None:
        grid_labels = logits.argmax(axis=-1)
        grid_confidence = 1.0 / np.exp(logits - logits.max(axis=-1, keepdims=True)).sum(axis=-1)
    cells = _cell_candidates(logits, np.asarray(grid_labels, np.uint8))
    y_low, y_high, y_weight = _bilinear_taps(height, logits.shape[0])
    x_low, _, x_weight = _bilinear_taps(width, logits.shape[1])
    labels = np.empty((height, width), np.uint8)
    band = max(1, BAND_PIXELS // width)
    for first in range(0, height, band):
        rows = slice(first, min(first + band, height))
        top_cell = int(y_low[rows][0])
        cells_of_band = slice(top_cell, int(y_low[rows][-1]) + 1)
        cell_rows = y_low[rows] - top_cell
        # the band's cells' values at each output column (cell rows x W), then at each row
        along = [difference[cells_of_band][:, x_low] for difference in cells.difference]
        difference = _lerp(_lerp(along[0], along[1], x_weight)[cell_rows],
                           _lerp(along[2], along[3], x_weight)[cell_rows], y_weight[rows, None])
        band_labels = np.where(difference >= 0, cells.first[cells_of_band][cell_rows][:, x_low],
                               cells.second[cells_of_band][cell_rows][:, x_low])
        if cells.crowded_classes.size:
            crowded = cells.crowded_index[cells_of_band][cell_rows][:, x_low]
            band_y, band_x = np.nonzero(crowded >= 0)
            if band_y.size:
                band_labels[band_y, band_x] = _crowded_argmax(
                    cells, crowded[band_y, band_x], y_weight[band_y + first], x_weight[band_x])
        labels[rows] = band_labels
    if not confidence:
        return labels, None
    top_probability = _resize_float(np.asarray(grid_confidence, np.float32)[..., None], width, height)
    return labels, top_probability.reshape(height, width)


@dataclass
class _Cells:
    """Per grid cell (h x w; a cell's corners are grid pixels (i, j), (i, j+1), (i+1, j),
    (i+1, j+1), edge-padded): the winning ``first`` class (uint8) where ``difference``
    (4 x h x w float32, ``logit_first - logit_second`` at the 4 corners) is >= 0, else
    ``second``. Cells of three or more candidates: ``crowded_index`` (h x w int, -1 for
    the others) points into ``crowded_classes`` (k x K uint8, each cell's candidates in
    increasing order, padded with the last) and ``crowded_corners`` (4 x k x K float32,
    their logits, -inf for padding)."""

    first: np.ndarray
    second: np.ndarray
    difference: np.ndarray
    crowded_index: np.ndarray
    crowded_classes: np.ndarray
    crowded_corners: np.ndarray


def _cell_candidates(logits: np.ndarray, grid_labels: np.ndarray) -> _Cells:
    """The candidate classes of each cell of ``logits`` (h x w x C float32) whose argmax is
    ``grid_labels`` (h x w uint8): see :class:`_Cells`."""
    height, width, classes = logits.shape
    padded_labels = np.pad(grid_labels, ((0, 1), (0, 1)), mode="edge")
    mixed = ((padded_labels[:-1, :-1] != padded_labels[1:, :-1])
             | (padded_labels[:-1, :-1] != padded_labels[:-1, 1:])
             | (padded_labels[:-1, :-1] != padded_labels[1:, 1:]))
    first, second = grid_labels.copy(), grid_labels.copy()
    difference = np.zeros((4, height, width), np.float32)
    crowded_index = np.full((height, width), -1, np.int32)
    cell_y, cell_x = np.nonzero(mixed)
    below, right = np.minimum(cell_y + 1, height - 1), np.minimum(cell_x + 1, width - 1)
    corners = np.stack([logits[cell_y, cell_x], logits[cell_y, right],
                        logits[below, cell_x], logits[below, right]])  # 4 x m x C
    surely = corners.min(axis=0).max(axis=-1, initial=-np.inf)  # every blend has a class this high
    candidate = corners.max(axis=0, initial=-np.inf) >= surely[:, None]
    count = candidate.sum(axis=-1)
    a = candidate.argmax(axis=-1)
    b = classes - 1 - candidate[:, ::-1].argmax(axis=-1)
    two = count == 2
    pick = np.arange(cell_y.size)
    difference[:, cell_y[two], cell_x[two]] = (corners[:, pick[two], a[two]]
                                               - corners[:, pick[two], b[two]])
    first[cell_y, cell_x] = a
    second[cell_y, cell_x] = np.where(two, b, a)
    many = count > 2
    crowded_index[cell_y[many], cell_x[many]] = np.arange(many.sum())
    # each crowded cell's candidates in increasing class order, padded with its last one
    order = np.sort(np.where(candidate[many], np.arange(classes), classes), axis=-1)
    order = order[:, :max(int(count.max(initial=0)), 1)]
    order = np.where(order == classes, b[many, None], order)
    chosen = np.take_along_axis(corners[:, many], order[None], axis=-1)
    padding = np.concatenate([np.zeros((len(order), 1), bool), order[:, 1:] == order[:, :-1]], -1)
    chosen[:, padding] = -1e30  # never wins, and blends without inf - inf
    return _Cells(first, second, difference, crowded_index, order.astype(np.uint8), chosen)


def _crowded_argmax(cells: _Cells, cell: np.ndarray, y_weight: np.ndarray,
                    x_weight: np.ndarray) -> np.ndarray:
    """The argmax (n uint8) of the bilinear blends of the candidates of crowded cells
    ``cell`` (n indices into ``cells.crowded_*``) at pixels of weights ``y_weight``,
    ``x_weight`` (n float32)."""
    corners = cells.crowded_corners[:, cell]  # 4 x n x K
    top = _lerp(corners[0], corners[1], x_weight[:, None])
    bottom = _lerp(corners[2], corners[3], x_weight[:, None])
    winner = _lerp(top, bottom, y_weight[:, None]).argmax(axis=-1)
    return np.take_along_axis(cells.crowded_classes[cell], winner[:, None], axis=-1)[:, 0]


def _lerp(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``start + (end - start) * weight`` (float32), as ``tf.image.resize`` blends."""
    result = end - start
    result *= weight
    result += start
    return result


_INFERENCE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_model(model):
    """``model`` with batch norm folded (:func:`~napari_deeplab.model.fold_batch_norm`) and three
    outputs: logits (N x h x w x C), their argmax (N x h x w) and top softmax probability
    (N x h x w). Built once per model and reused (see :func:`forget_inference_model`)."""
    import keras
    from keras import ops

    from .model import fold_batch_norm

    if model not in _INFERENCE_MODELS:
        folded = fold_batch_norm(model)
        logits = folded.outputs[0]
        outputs = [logits, ops.argmax(logits, axis=-1), ops.max(ops.softmax(logits, axis=-1), axis=-1)]
        _INFERENCE_MODELS[model] = keras.Model(folded.inputs, outputs, name=f"{model.name}_inference")
    return _INFERENCE_MODELS[model]


def forget_inference_model(model) -> None:
    """Drop the folded copy of ``model``: call after changing its weights (training)."""
    _INFERENCE_MODELS.pop(model, None)


def segment(image: np.ndarray, model) -> tuple[np.ndarray, np.ndarray]:
    """Segment one photo at its full resolution.

    ``image``: H x W, H x W x 3 or H x W x 4; uint8, uint16 or float (see :func:`to_rgb`).
    Returns ``(labels, confidence)``: H x W uint8 class ids in 0..C-1 and H x W float32
    top-class probability in [0, 1].
    """
    result = next(segment_stack([image], model))
    return result.labels, result.confidence


def predict_batch(model, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model stage: ``inputs`` (N x S x S x 3 float32 in 0..255, from :func:`model_input`)
    -> ``(logits, grid_labels, grid_confidence)`` as numpy arrays: N x h x w x C float32, their
    argmax N x h x w and top softmax probability N x h x w, from the cached
    :func:`inference_model`. Call it from one thread at a time."""
    outputs = inference_model(model).predict_on_batch(inputs)
    logits, grid_labels, grid_confidence = (np.asarray(output) for output in outputs)
    return logits, grid_labels, grid_confidence


def segment_stack(images: Iterable[np.ndarray], model, batch_size: int = 4, *,
                  confidence: bool = True, workers: int = 1, clock=None,
                  max_in_flight: int | None = None) -> Iterator[Segmentation]:
    """Segment photos in batches; a generator yielding one :class:`Segmentation` per photo, in order.

    ``images``: an N x H x W x 3 stack, a list of photos of any sizes, or any iterable
    (read lazily). ``workers`` > 1 prepares model inputs and upsamples in that many threads
    while the model runs in the calling thread (:mod:`napari_deeplab.pipeline`; the results
    are the same as with ``workers=1``, which does everything in the calling thread and takes
    ``batch_size`` photos at a time). Closing the generator (napari's Cancel, Ctrl+C) stops the
    work after the model call and photos in hand. ``confidence=False``: no confidence map
    (None), 4 bytes per pixel less memory (``predict`` does not write it). ``clock``: a
    :class:`~napari_deeplab.pipeline.StageClock` that sums the CPU time of each stage.
    ``max_in_flight``: at most this many photos taken from ``images`` and not yet yielded
    (default :func:`~napari_deeplab.pipeline.default_in_flight`).
    """
    from .model import model_info
    from .pipeline import Prepared, run_pipeline, timed

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    size = model_info(model).input_size

    def prepare(index, image):
        with timed(clock, "resize"):
            return Prepared(model_input(image, size), (index, np.shape(image)[:2]))

    def finish(context, output):
        index, shape = context
        logits, grid_labels, grid_confidence = output
        with timed(clock, "upsample"):
            labels, top_probability = upsample_logits(logits, shape, grid_labels, grid_confidence,
                                                      confidence=confidence)
        return Segmentation(index, labels, top_probability)

    return run_pipeline(images, prepare=prepare, model=lambda inputs: batch_outputs(model, inputs),
                        finish=finish, batch_size=batch_size, workers=workers,
                        max_in_flight=max_in_flight, clock=clock)


def batch_outputs(model, inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`predict_batch` split into one ``(logits, grid_labels, grid_confidence)`` per photo."""
    return list(zip(*predict_batch(model, inputs), strict=True))
