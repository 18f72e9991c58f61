"""Fine-tuning and evaluation on CIHP-format folders (ours or the official dataset).

- :mod:`.settings`: :class:`FinetuneSettings`, the one home of every fine-tuning default.
- :mod:`.data`: locating and checking the samples, the sample cache, augmentation, batches.
- :mod:`.metrics`: the confusion matrix, mean IoU, :func:`evaluate`, the validation at the
  training resolution.
- :mod:`.finetune`: the loop (:func:`finetune`, one :class:`EpochReport` per epoch).

Importing this package loads no Keras (each function that needs it imports it), so napari's
process reads :class:`FinetuneSettings` without TensorFlow.
"""

from .data import (
    BRIGHTNESS_RANGE,
    CACHE_MEMORY_ENV,
    CONTRAST_RANGE,
    CROP_SCALE,
    FALLBACK_CACHE_MEMORY,
    FLIP_PROBABILITY,
    HELD_OUT_FRACTION,
    IGNORE_CLASS,
    AugmentedBatches,
    Dataset,
    NoLabelledPixels,
    SampleCache,
    SampleProblems,
    augment,
    cache_memory_budget,
    check_samples,
    flip_left_right,
    locate_dataset,
    require_good_samples,
    require_labelled_pixels,
    resize_labels,
    resize_photo,
    sample_problem_line,
    training_and_validation,
    training_cache_side,
)
from .finetune import (
    EpochReport,
    bar_to_beat,
    finetune,
    freeze_batch_norm,
    save_atomically,
    train_epoch,
)
from .metrics import ResizedValidation, confusion, evaluate, score_model_file, scores
from .settings import (
    IMAGE_SIZE_MULTIPLE,
    TRAINING_SPLIT,
    VALIDATION_SPLIT,
    FinetuneSettings,
)

__all__ = [
    "BRIGHTNESS_RANGE",
    "CACHE_MEMORY_ENV",
    "CONTRAST_RANGE",
    "CROP_SCALE",
    "FALLBACK_CACHE_MEMORY",
    "FLIP_PROBABILITY",
    "HELD_OUT_FRACTION",
    "IGNORE_CLASS",
    "IMAGE_SIZE_MULTIPLE",
    "TRAINING_SPLIT",
    "VALIDATION_SPLIT",
    "AugmentedBatches",
    "Dataset",
    "EpochReport",
    "FinetuneSettings",
    "NoLabelledPixels",
    "ResizedValidation",
    "SampleCache",
    "SampleProblems",
    "augment",
    "bar_to_beat",
    "cache_memory_budget",
    "check_samples",
    "confusion",
    "evaluate",
    "finetune",
    "flip_left_right",
    "freeze_batch_norm",
    "locate_dataset",
    "require_good_samples",
    "require_labelled_pixels",
    "resize_labels",
    "resize_photo",
    "sample_problem_line",
    "save_atomically",
    "score_model_file",
    "scores",
    "train_epoch",
    "training_and_validation",
    "training_cache_side",
]
