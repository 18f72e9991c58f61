"""The fine-tuning loop: :func:`finetune` trains a model on CIHP-format samples and keeps the
best one by validation mean IoU in its output file.

It is a generator that yields one :class:`EpochReport` per epoch (loss, validation mean IoU,
whether the model was saved), so the command line prints it and the napari widget plots it;
the best model is written whenever it improves, so an interrupted run always leaves the last
good model. ``train_on_batch`` runs the steps: neither ``tf.data`` nor TensorFlow is needed, so
it runs on Keras's JAX backend as on TensorFlow, and on several devices
(:mod:`napari_deeplab.distributed`). Keras is imported when a model is trained, not with this
module, so that napari's process can read the settings without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import cihp, distributed, files
from ..inference import forget_inference_model
from .data import (
    IGNORE_CLASS,
    AugmentedBatches,
    Dataset,
    SampleCache,
    require_good_samples,
    require_labelled_pixels,
    training_cache_side,
)
from .metrics import ResizedValidation, evaluate, score_model_file
from .settings import FinetuneSettings


@dataclass
class EpochReport:
    """One epoch of :func:`finetune` (epoch 0: the start model, ``loss`` None).

    ``val_miou``: mean IoU on the validation split at the model's training resolution
    (``val_size`` x ``val_size``; it picks the best model). ``full_resolution_miou``: the same
    at each photo's full resolution, as :func:`evaluate` scores it, after the last epoch and
    every ``eval_every`` epochs; None in the other epochs. ``saved``: the model was written.
    ``out_miou`` (epoch 0, when the output file existed): that file's mean IoU on the same
    validation, measured the same way; ``out_problem``: why it could not be scored (then None)."""

    epoch: int
    epochs: int
    loss: float | None
    val_miou: float
    saved: bool
    val_size: int = 0
    full_resolution_miou: float | None = None
    out_miou: float | None = None
    out_problem: str = ""

    def fields(self) -> dict:
        """The report as a dict (what the model process sends); ``out_miou`` and
        ``out_problem`` only where an output file existed."""
        fields = asdict(self)
        if self.out_miou is None and not self.out_problem:
            del fields["out_miou"], fields["out_problem"]
        return fields


def freeze_batch_norm(model) -> None:
    """Keep every batch-norm layer in inference mode (trainable=False does that in Keras 3):
    on small batches live statistics make a pretrained model worse."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def finetune(
    model,
    train: Dataset,
    val: Dataset,
    out: str | os.PathLike,
    settings: FinetuneSettings | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **changes,
) -> Iterator[EpochReport]:
    """Fine-tune ``model`` on ``train``; yield a report per epoch (epoch 0: the start model).

    Every sample of ``train`` and ``val`` is checked before any work
    (:class:`~napari_deeplab.training.SampleProblems`). ``out`` (a ``.keras`` file) is only
    ever replaced atomically (:func:`~napari_deeplab.files.write_file_atomically`), so a kill
    at any moment leaves the previous file whole. A new ``out`` gets the start model, then each
    model whose mean IoU on ``val`` is the best so far. An existing ``out`` is refused
    (:class:`~napari_deeplab.cihp.DatasetError`) unless ``overwrite``; it is then scored on
    ``val`` as the new models are (epoch 0's ``out_miou``) and replaced only by a model better
    than both it and the start model (with ``replace_better``: better than the start model
    alone), never by the start model itself. Closing the generator (Cancel, Ctrl+C) leaves the
    best model saved so far. Mask pixels of 255 are left out of the loss.

    The mean IoU that picks the best model is measured each epoch at ``image_size``
    (:class:`~napari_deeplab.training.ResizedValidation`); at full resolution
    (:func:`~napari_deeplab.training.evaluate`) after the last epoch and every ``eval_every``
    epochs. Samples are decoded once (:class:`~napari_deeplab.training.SampleCache`) and
    augmented by ``workers`` threads. With ``devices``, ``batch_size`` is the global batch.

    Parameters
    ----------
    model : keras.Model
        The start model (any :func:`~napari_deeplab.model.load_model` gives); trained in place.
    train, val : Dataset
        The samples to train on and to validate on
        (:func:`~napari_deeplab.training.training_and_validation`).
    out : path
        The ``.keras`` file that holds the best model.
    settings : FinetuneSettings, optional
        How to train (default: ``FinetuneSettings()``).
    progress : callable, optional
        ``progress(text)`` hears what happens between two reports (each training step).
    **changes
        Fields of :class:`FinetuneSettings` to change from ``settings``
        (``finetune(model, train, val, out, epochs=1)``).

    Yields
    ------
    EpochReport
        Epoch 0 (the start model), then each of the ``epochs`` epochs.
    """
    from ..model import model_info

    settings = dataclasses.replace(settings or FinetuneSettings(), **changes)
    settings.check()
    out = Path(out)
    existed = out.exists()  # before any process of a multi-process run writes it
    if existed and not settings.overwrite:
        raise cihp.DatasetError(
            f"{out} exists; choose another output file, or overwrite it "
            "(--overwrite): it is then replaced only by a better model"
        )
    class_names = model_info(model).class_names
    require_good_samples(train, val, num_classes=len(class_names))
    distribution = distributed.data_parallel(settings.devices)
    batch_size = distributed.fitting_batch_size(distribution, settings.batch_size, len(train.ids))
    size, epochs = settings.image_size, settings.epochs
    files.remove_stale_temporaries(out.parent, out.name)  # of a run that was killed
    _prepare(model, settings)
    with (
        distributed.distributed_over(distribution, model),
        ThreadPoolExecutor(settings.workers or os.cpu_count()) as pool,
    ):
        _compile(model, settings.learning_rate)
        val_cache = SampleCache(val, size, memory_budget=settings.cache_memory)
        train_cache = SampleCache(
            train, training_cache_side(size), memory_budget=settings.cache_memory
        )
        for cache in (val_cache, train_cache):  # a photo that cannot be decoded: named now
            cache.decode_all(pool)
            require_labelled_pixels(cache)
        validation = ResizedValidation(model, val_cache, size, batch_size, pool, distribution)
        augmented = AugmentedBatches(
            train_cache,
            size,
            batch_size,
            pool,
            seed=settings.seed,
            shard=distributed.process_shard(distribution),
        )
        if progress is not None and existed:
            progress(f"scoring the existing {out.name}")
        out_miou, out_problem = (
            score_model_file(out, val_cache, size, batch_size, pool, distribution, class_names)
            if existed
            else (None, "")
        )
        if progress is not None:
            progress("validating the start model")
        start = validation.miou()
        best = bar_to_beat(start, out_miou, settings.replace_better)
        saved = not existed  # an existing file is kept until a better model is ready
        if saved:  # by every process (the same file): saving may need them all in step
            save_atomically(model, out)
        yield EpochReport(
            0, epochs, None, start, saved, size, out_miou=out_miou, out_problem=out_problem
        )
        batches = augmented.batches(first_epoch=1)
        try:
            for epoch in range(1, epochs + 1):
                loss = train_epoch(
                    model,
                    batches,
                    augmented.steps_per_epoch,
                    _step_progress(progress, epoch, epochs),
                )
                val_miou = validation.miou()
                saved = val_miou > best
                if saved:
                    best = val_miou
                    save_atomically(model, out)
                full = None
                if epoch == epochs or (settings.eval_every and epoch % settings.eval_every == 0):
                    forget_inference_model(model)
                    full = evaluate(model, val)["miou"]
                yield EpochReport(epoch, epochs, loss, val_miou, saved, size, full)
        finally:
            batches.close()


def bar_to_beat(start_miou: float, out_miou: float | None, replace_better: bool) -> float:
    """The mean IoU a new model must exceed to be saved: the start model's, and also the
    existing output file's (``out_miou``, None when there was none or it could not be scored)
    unless ``replace_better``, so that a better model is never replaced by a worse one."""
    if out_miou is not None and not replace_better:
        return max(start_miou, out_miou)
    return start_miou


def _prepare(model, settings: FinetuneSettings) -> None:
    """Seed Keras, record the training size (inference resizes as training did), freeze
    batch norm."""
    import keras

    from ..model import model_info

    keras.utils.set_random_seed(settings.seed)
    model_info(model).input_size = settings.image_size
    freeze_batch_norm(model)


def _compile(model, learning_rate: float) -> None:
    """Adam and the pixel-wise cross-entropy on logits, mask pixels of 255 left out."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=IGNORE_CLASS
        ),
    )


def _step_progress(
    progress: Callable[[str], None] | None, epoch: int, epochs: int
) -> Callable[[int, int, float], None] | None:
    """``train_epoch``'s ``on_step`` that tells ``progress`` each step of ``epoch``."""
    if progress is None:
        return None

    def on_step(step: int, steps: int, loss: float) -> None:
        progress(f"epoch {epoch} of {epochs}: step {step} of {steps}, loss {loss:.3f}")

    return on_step


def train_epoch(
    model,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    steps: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> float:
    """Train ``model`` (compiled) on the next ``steps`` batches.

    Parameters
    ----------
    model : keras.Model
        Compiled.
    batches : iterator of (ndarray, ndarray)
        (B x S x S x 3 float32 RGB in 0..255, B x S x S uint8 class ids) batches
        (:meth:`~napari_deeplab.training.AugmentedBatches.batches`).
    steps : int
        Batches to train on.
    on_step : callable, optional
        ``on_step(step, steps, loss)`` after each batch (step counts from 1).

    Returns
    -------
    float
        The mean of the steps' losses.
    """
    losses = []
    for step in range(1, steps + 1):
        losses.append(float(np.ravel(model.train_on_batch(*next(batches)))[0]))
        if on_step is not None:
            on_step(step, steps, losses[-1])
    return float(np.mean(losses))


def save_atomically(model, out: Path) -> None:
    """Write ``model`` to ``out`` in one step (:func:`~napari_deeplab.files.write_file_atomically`),
    in float32 whatever precision it trains in (:func:`~napari_deeplab.model.save_model`)."""
    from ..model import save_model

    files.write_file_atomically(out, lambda path: save_model(model, path))
