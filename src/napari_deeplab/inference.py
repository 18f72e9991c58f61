"""Photo -> per-pixel CIHP labels and confidence at full resolution, one photo or a stack.

Segmenting is three stages, each a public function: prepare (:func:`model_input`: an H x W x 3
photo -> the S x S x 3 float32 model input), model (:func:`batch_outputs`: a batch of inputs ->
each photo's logits on the model's grid) and finish (:func:`finish`: one photo's logits -> its
labels and confidence at H x W). :func:`segment_pipeline` runs them in
:mod:`napari_deeplab.pipeline`; :func:`segment_stack` and
:func:`napari_deeplab.prelabel.prelabel_files` are that composition with their own ends.

The photo is resized to the model's square input (512 x 512 for the seed) without keeping
aspect, exactly as the seed was trained; the logits, not the labels, are upsampled back to
the photo's size, bilinearly, one band of rows at a time so that memory stays bounded.

``tta="flip"`` (``--tta flip``) averages the logits with those of the mirrored photo, left and
right swapped back, on the model's grid (:func:`inference_model`); ``runner_up=True`` also
gives each photo's runner-up class map (:mod:`napari_deeplab.second_choice`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

import numpy as np

BAND_PIXELS = 1 << 18
"""Output pixels upsampled at once, which bounds the working memory to a few bytes each."""

WHOLE_RESIZE_ROWS = 2
"""A photo of up to this many times the model's input side in rows is resized whole; of a
taller one only the rows that the bilinear samples fall between are converted to float."""

UINT16_PER_UINT8 = 257.0
"""65535 / 255: a uint16 sample divided by it is in 0..255."""

RGB_MAX = 255
"""The top of the 0..255 range the model takes."""


@dataclass
class Segmentation:
    """The result for one photo: ``labels`` H x W uint8 class ids, ``confidence`` H x W float32
    top-class probability in [0, 1]; ``index`` is the photo's position in the input;
    ``runner_up`` H x W uint8, the class of the second largest logit
    (:func:`napari_deeplab.second_choice.upsample_runner_up`), when it was asked for."""

    index: int
    labels: np.ndarray
    confidence: np.ndarray
    runner_up: np.ndarray | None = None


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
        raise ValueError(
            f"expected an H x W, H x W x 3 or H x W x 4 image, got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * RGB_MAX
    if image.dtype == np.uint16:
        return image.astype(np.float32) / UINT16_PER_UINT8
    if np.issubdtype(image.dtype, np.integer):
        return np.clip(image, 0, RGB_MAX).astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image.astype(np.float32))
        scale = RGB_MAX if image.size and image.max() <= 1.0 else 1.0
        return np.clip(image * scale, 0, RGB_MAX)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def model_input(image: np.ndarray, size: int) -> np.ndarray:
    """The prepare stage: a photo resized to the model's square input.

    Resized bilinearly without antialiasing and without keeping aspect, as the seed was
    trained (``tf.image.resize``: half-pixel centres). A photo of up to
    :data:`WHOLE_RESIZE_ROWS` x ``size`` rows is resized whole by OpenCV; of a taller one only
    the 2 x ``size`` rows that the samples fall between are read (resized horizontally by
    OpenCV, blended in numpy), so a 24-megapixel photo is never converted to float whole.
    Thread-safe, and it releases the GIL for most of its work.

    Parameters
    ----------
    image : ndarray
        H x W x 3 uint8 RGB, or any form :func:`to_rgb` accepts.
    size : int
        The model's input side S in pixels (:attr:`napari_deeplab.model.ModelInfo.input_size`).

    Returns
    -------
    ndarray
        S x S x 3 float32 RGB in 0..255.
    """
    image = np.asarray(image)
    if image.shape[0] <= WHOLE_RESIZE_ROWS * size:
        rgb = to_rgb(image).astype(np.float32, copy=False)
        return resize_bilinear(rgb, size, size)
    y_low, y_high, y_weight = _bilinear_taps(size, image.shape[0])
    rows = to_rgb(image[np.concatenate([y_low, y_high])]).astype(np.float32, copy=False)
    rows = resize_bilinear(rows, size, rows.shape[0])  # horizontally only: its rows stay
    top, bottom = rows[:size], rows[size:]
    wy = y_weight[:, None, None]
    return top + (bottom - top) * wy


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (h x w x C float32, C <= 512) resized bilinearly with half-pixel centres and
    no antialiasing (OpenCV's ``INTER_LINEAR``, which is ``tf.image.resize``'s bilinear) to
    ``height`` x ``width`` x C float32."""
    import cv2

    resized = cv2.resize(
        np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR
    )
    return resized.reshape(height, width, *image.shape[2:])


def _bilinear_taps(out_size: int, in_size: int):
    """Source indices and weights of half-pixel-centred bilinear resizing (as ``tf.image.resize``)."""
    position = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    position = np.clip(position, 0, in_size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (position - low).astype(np.float32)


def upsample_logits(
    logits: np.ndarray,
    shape: tuple[int, int],
    grid_labels=None,
    grid_confidence=None,
    *,
    confidence: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class labels and confidence at a photo's size from the logits on the model's grid.

    ``labels`` is exactly the argmax of the logits upsampled bilinearly with half-pixel
    centres (as ``tf.image.resize``). A convex blend of four logit vectors that share their
    argmax keeps it, so the full C-class blend is computed only where the four source pixels
    disagree (along class boundaries). Works in bands of :data:`BAND_PIXELS`: no H x W x C
    array is ever made. Thread-safe; most of its work releases the GIL. (Tried: first
    narrowing each cell to the classes that can win in it, which pays only where many pixels
    share a cell; with the model's 512 x 512 logits a CIHP-sized photo has about one pixel per
    cell, and it was 3 times slower.)

    Parameters
    ----------
    logits : ndarray
        h x w x C float logits on the model's grid.
    shape : (int, int)
        The output's (H, W) in pixels.
    grid_labels, grid_confidence : ndarray, optional
        h x w argmax and top softmax probability of ``logits``, when the caller has them.
    confidence : bool
        False: return None for the confidence, saving its 4 bytes per pixel.

    Returns
    -------
    labels : ndarray
        H x W uint8 class ids.
    confidence : ndarray or None
        H x W float32 in [0, 1]: the top-class softmax probability on the model's grid,
        upsampled bilinearly (OpenCV).
    """
    height, width = shape
    logits = np.asarray(logits, np.float32)
    if grid_labels is None:
        grid_labels = logits.argmax(axis=-1)
        grid_confidence = 1.0 / np.exp(logits - logits.max(axis=-1, keepdims=True)).sum(axis=-1)
    grid_labels = np.asarray(grid_labels, np.uint8)
    labels = upsample_classes(
        logits, shape, grid_labels, mixed_cells(grid_labels), lambda blend: blend.argmax(axis=-1)
    )
    if not confidence:
        return labels, None
    top_probability = resize_bilinear(
        np.asarray(grid_confidence, np.float32)[..., None], width, height
    )
    return labels, top_probability.reshape(height, width)


def mixed_cells(grid_classes: np.ndarray) -> np.ndarray:
    """h x w bool: the grid cells whose four corner pixels (the cell's own, right, below and
    below right; edges repeated) do not all share one value of ``grid_classes`` (h x w)."""
    padded = np.pad(grid_classes, ((0, 1), (0, 1)), mode="edge")
    return (
        (padded[:-1, :-1] != padded[1:, :-1])
        | (padded[:-1, :-1] != padded[:-1, 1:])
        | (padded[:-1, :-1] != padded[1:, 1:])
    )


def upsample_classes(
    logits: np.ndarray,
    shape: tuple[int, int],
    grid_classes: np.ndarray,
    mixed: np.ndarray,
    choose: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``choose`` of the logits upsampled bilinearly (half-pixel centres) at every pixel of
    an (H, W) photo, as H x W uint8, in bands of :data:`BAND_PIXELS`.

    ``choose`` maps M x C float32 logit vectors to M class ids (argmax: the labels);
    ``grid_classes`` (h x w) is its value on the grid, taken as is in every cell that is not
    ``mixed`` (h x w bool): the caller guarantees that a blend of the four corners of such a
    cell chooses the same class. Only in mixed cells is the C-class blend computed.
    """
    height, width = shape
    y_low, y_high, y_weight = _bilinear_taps(height, logits.shape[0])
    x_low, x_high, x_weight = _bilinear_taps(width, logits.shape[1])
    labels = np.empty((height, width), np.uint8)
    band = max(1, BAND_PIXELS // width)

    flat_logits = logits.reshape(-1, logits.shape[-1])
    grid_width = logits.shape[1]
    for first in range(0, height, band):
        rows = slice(first, min(first + band, height))
        band_labels = np.take(grid_classes[y_low[rows]], x_low, axis=1)
        band_y, band_x = np.nonzero(np.take(mixed[y_low[rows]], x_low, axis=1))
        if band_y.size:
            y = band_y + first
            wy, wx = y_weight[y, None], x_weight[band_x, None]
            top, bottom = y_low[y] * grid_width, y_high[y] * grid_width
            left, right = x_low[band_x], x_high[band_x]
            blend = np.take(flat_logits, top + left, axis=0) * ((1 - wy) * (1 - wx))
            blend += np.take(flat_logits, top + right, axis=0) * ((1 - wy) * wx)
            blend += np.take(flat_logits, bottom + left, axis=0) * (wy * (1 - wx))
            blend += np.take(flat_logits, bottom + right, axis=0) * (wy * wx)
            band_labels[band_y, band_x] = choose(blend)
        labels[rows] = band_labels
    return labels


TTA_CHOICES = ("none", "flip")
"""Test-time augmentation: ``"none"``, or ``"flip"`` (:func:`inference_model`), the values of
``--tta``."""

_FOLDED_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INFERENCE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checked_tta(tta: str | None) -> str | None:
    """``tta`` as the engine takes it: None (also for ``"none"``) or ``"flip"``; ValueError
    naming the choices otherwise."""
    if tta is None or tta == "none":
        return None
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown test-time augmentation {tta!r}: choose one of {TTA_CHOICES}")
    return tta


def flip_swap(model) -> np.ndarray:
    """The C int32 channel order that turns the logits of a mirrored photo into the photo's
    own (:data:`~napari_deeplab.cihp.LEFT_RIGHT_SWAP`: 14<->15, 16<->17, 18<->19); ValueError
    for a model whose classes are not the CIHP classes (no left/right pairs known)."""
    from .cihp import CLASS_NAMES, LEFT_RIGHT_SWAP
    from .model import model_info

    names = model_info(model).class_names
    if tuple(names) != CLASS_NAMES:
        raise ValueError(
            f"flip averaging needs the {len(CLASS_NAMES)} CIHP classes (their left/right "
            f"pairs); model {model.name!r} has {len(names)} other classes: run without it"
        )
    return LEFT_RIGHT_SWAP[: len(names)].astype(np.int32)


def inference_model(model, tta: str | None = None):
    """``model`` with batch norm folded (:func:`~napari_deeplab.model.fold_batch_norm`) and three
    outputs: logits (N x h x w x C), their argmax (N x h x w) and top softmax probability
    (N x h x w). Built once per model and ``tta`` and reused (see :func:`forget_inference_model`).

    ``tta="flip"``: the logits are the mean of the photo's and its mirror's, the mirror's
    un-mirrored and with left/right channels swapped back (:func:`flip_swap`), on the model's
    grid, before anything is upsampled. The N mirrored inputs go through the network in the
    same call as the N photos (one batch of 2N), so the cost is that of twice the photos.
    """
    import keras
    from keras import ops

    from .model import fold_batch_norm

    tta = checked_tta(tta)
    built = _INFERENCE_MODELS.setdefault(model, {})
    if tta not in built:
        if model not in _FOLDED_MODELS:
            _FOLDED_MODELS[model] = fold_batch_norm(model)
        folded = _FOLDED_MODELS[model]
        if tta is None:
            rgb, logits = folded.inputs, folded.outputs[0]
        else:
            swap = flip_swap(model)
            rgb = keras.Input(shape=folded.inputs[0].shape[1:], name="rgb")
            both = folded(ops.concatenate([rgb, ops.flip(rgb, axis=2)], axis=0))
            plain, mirrored = ops.split(both, 2, axis=0)
            logits = (plain + ops.take(ops.flip(mirrored, axis=2), swap, axis=-1)) * 0.5
        outputs = [
            logits,
            ops.argmax(logits, axis=-1),
            ops.max(ops.softmax(logits, axis=-1), axis=-1),
        ]
        suffix = "" if tta is None else f"_{tta}"
        built[tta] = keras.Model(rgb, outputs, name=f"{model.name}_inference{suffix}")
    return built[tta]


def forget_inference_model(model) -> None:
    """Drop the folded copies of ``model``: call after changing its weights (training)."""
    _INFERENCE_MODELS.pop(model, None)
    _FOLDED_MODELS.pop(model, None)


def segment(image: np.ndarray, model, *, tta: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment one photo at its full resolution.

    Parameters
    ----------
    image : ndarray
        H x W, H x W x 3 or H x W x 4; uint8, uint16 or float (see :func:`to_rgb`).
    model : keras.Model
        One of ours (:func:`napari_deeplab.model.load_model`).
    tta : None, "none" or "flip"
        Test-time augmentation (:func:`inference_model`).

    Returns
    -------
    labels : ndarray
        H x W uint8 class ids in 0..C-1.
    confidence : ndarray
        H x W float32 top-class probability in [0, 1].
    """
    result = next(segment_stack([image], model, tta=tta))
    return result.labels, result.confidence


def segment_stack(
    images: Iterable[np.ndarray],
    model,
    batch_size: int = 4,
    *,
    confidence: bool = True,
    workers: int = 1,
    clock=None,
    max_in_flight: int | None = None,
    tta: str | None = None,
    runner_up: bool = False,
) -> Generator[Segmentation, None, None]:
    """Segment photos in batches; a generator yielding one :class:`Segmentation` per photo, in order.

    Parameters
    ----------
    images : iterable of ndarray
        An N x H x W x 3 stack, a list of photos of any sizes, or any iterable (read lazily);
        each photo in any form :func:`to_rgb` accepts.
    model : keras.Model
        One of ours (:func:`napari_deeplab.model.load_model`).
    batch_size : int
        Photos per model call.
    confidence : bool
        False: no confidence map (None), 4 bytes per pixel less memory (``predict`` does not
        write it).
    workers : int
        > 1 prepares model inputs and upsamples in that many threads while the model runs in
        the calling thread (:mod:`napari_deeplab.pipeline`; the results are the same as with
        ``workers=1``, which does everything in the calling thread and takes ``batch_size``
        photos at a time).
    clock : napari_deeplab.pipeline.StageClock, optional
        Sums the CPU time of each stage.
    max_in_flight : int, optional
        At most this many photos taken from ``images`` and not yet yielded (default
        :func:`~napari_deeplab.pipeline.default_in_flight`).
    tta : None, "none" or "flip"
        Test-time augmentation (:func:`inference_model`; "flip" doubles the model's work).
    runner_up : bool
        Also each photo's runner-up class map (``Segmentation.runner_up``, 1 byte per pixel).

    Yields
    ------
    Segmentation
        ``labels`` H x W uint8 and ``confidence`` H x W float32 (or None) at each photo's size.

    Closing the generator (napari's Cancel, Ctrl+C) stops the work after the model call and
    photos in hand.
    """
    return segment_pipeline(
        images,
        model,
        photo_of=lambda index, image: (image, index),
        result_of=Segmentation,
        confidence=confidence,
        batch_size=batch_size,
        workers=workers,
        max_in_flight=max_in_flight,
        clock=clock,
        tta=tta,
        runner_up=runner_up,
    )


def segment_pipeline(
    items: Iterable,
    model,
    *,
    photo_of: Callable,
    result_of: Callable,
    batch_size: int,
    workers: int = 1,
    confidence: bool = True,
    commit: Callable[[list], list] | None = None,
    discard: Callable | None = None,
    max_in_flight: int | None = None,
    clock=None,
    tta: str | None = None,
    runner_up: bool = False,
) -> Generator:
    """Run ``items`` through the three stages of segmentation, prepare (:func:`model_input`,
    clocked as ``resize``), model (:func:`batch_outputs`, ``model``) and finish
    (:func:`finish`, ``upsample``), in :func:`napari_deeplab.pipeline.run_pipeline`; yield one
    outcome per item, in order.

    ``photo_of(index, item)`` (in a worker thread) returns ``(photo, context)``, the photo an
    H x W [x C] array in any form :func:`to_rgb` accepts, or a
    :class:`~napari_deeplab.pipeline.Failed` whose outcome is yielded in the item's place.
    ``result_of(context, labels, confidence)`` (in a worker thread) gets the photo's labels
    (H x W uint8) and confidence (H x W float32, None unless ``confidence``) and returns
    the item's result. ``commit``, ``discard``, ``batch_size``, ``workers``,
    ``max_in_flight`` and ``clock`` are :func:`~napari_deeplab.pipeline.run_pipeline`'s;
    ``tta`` is :func:`inference_model`'s. ``runner_up``: ``result_of`` gets a fourth
    argument, the photo's runner-up class map (H x W uint8,
    :func:`~napari_deeplab.second_choice.upsample_runner_up`).
    """
    from .model import model_info
    from .pipeline import Failed, Prepared, run_pipeline, timed

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    size = model_info(model).input_size
    tta = checked_tta(tta)
    if tta is not None:
        inference_model(model, tta)  # a model it cannot take is refused before any photo

    def prepare(index, item):
        taken = photo_of(index, item)
        if isinstance(taken, Failed):
            return taken
        photo, context = taken
        with timed(clock, "resize"):
            return Prepared(model_input(photo, size), (context, np.shape(photo)[:2]))

    def finish_photo(prepared_context, output):
        context, shape = prepared_context
        with timed(clock, "upsample"):
            labels, top_probability = finish(output, shape, confidence=confidence)
        if not runner_up:
            return result_of(context, labels, top_probability)
        from .second_choice import upsample_runner_up

        with timed(clock, "runner-up"):
            second = upsample_runner_up(output[0], shape, output[1])
        return result_of(context, labels, top_probability, second)

    return run_pipeline(
        items,
        prepare=prepare,
        model=lambda inputs: batch_outputs(model, inputs, tta=tta),
        finish=finish_photo,
        commit=commit,
        discard=discard,
        batch_size=batch_size,
        workers=workers,
        max_in_flight=max_in_flight,
        clock=clock,
    )


def batch_outputs(
    model, inputs: np.ndarray, *, tta: str | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The model stage: a batch of model inputs -> the model's outputs for each photo.

    Parameters
    ----------
    model : keras.Model
        One of ours; runs as its cached :func:`inference_model`.
    inputs : ndarray
        N x S x S x 3 float32 RGB in 0..255, from :func:`model_input`.
    tta : None, "none" or "flip"
        Test-time augmentation (:func:`inference_model`: the N mirrored inputs join the
        batch, whose outputs are N as without).

    Returns
    -------
    list of (logits, grid_labels, grid_confidence)
        One per photo, numpy arrays on the model's grid: h x w x C float32 logits, their
        argmax h x w and top softmax probability h x w (float32 in [0, 1]).

    Call it from one thread at a time.
    """
    outputs = inference_model(model, tta).predict_on_batch(inputs)
    return list(zip(*(np.asarray(output) for output in outputs), strict=True))


def finish(
    output: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, int],
    *,
    confidence: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The finish stage: one photo's model output -> its labels and confidence at its size.

    Parameters
    ----------
    output : (logits, grid_labels, grid_confidence)
        One photo's item of :func:`batch_outputs`.
    shape : (int, int)
        The photo's (H, W) in pixels.
    confidence : bool
        False: no confidence map (None).

    Returns
    -------
    labels : ndarray
        H x W uint8 class ids (:func:`upsample_logits`).
    confidence : ndarray or None
        H x W float32 top-class probability in [0, 1].

    Thread-safe; most of its work releases the GIL.
    """
    logits, grid_labels, grid_confidence = output
    return upsample_logits(logits, shape, grid_labels, grid_confidence, confidence=confidence)
