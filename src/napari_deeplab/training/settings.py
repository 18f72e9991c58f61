"""The settings of a fine-tuning run: the one home of every fine-tuning default.

The command line's options, the Fine-tune widget's fields and the model process's training
jobs all start from :class:`FinetuneSettings`, so a default is changed here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SIZE_MULTIPLE = 16
"""The training size must be a multiple of the model's output stride (16), so that the
pyramid pooling and the upsampling land on whole pixels."""

TRAINING_SPLIT = "Training"
"""The split trained on unless another is chosen."""

VALIDATION_SPLIT = "Validation"
"""The split validated on unless another is chosen (a held-out share where it is absent)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """How :func:`~napari_deeplab.training.finetune` trains.

    Attributes
    ----------
    epochs : int
        Passes over the training samples (each ``len(train) // batch_size`` steps, at least 1).
    batch_size : int
        Photos per training step; the global batch when training data parallel.
    image_size : int
        Side in pixels of the square the photos are resized to (a multiple of
        :data:`IMAGE_SIZE_MULTIPLE`; 512 as the seed was trained).
    learning_rate : float
        Adam's learning rate.
    seed : int
        Seeds Keras's initialisers and the augmentation: the same seed trains the same model.
    overwrite : bool
        An existing output file may be replaced (only by a better model).
    replace_better : bool
        With ``overwrite``: replace it by a model better than the start model even if the
        existing file scores higher.
    eval_every : int
        Also score at full resolution every this many epochs (0: only after the last).
    devices : str, int or None
        None (one device), ``"all"`` or N devices, data parallel (JAX backend).
    workers : int or None
        Threads that augment the batches (None: one per core).
    cache_memory : int or None
        Bytes a split's decoded samples may take in memory before they are cached on disk
        (None: :func:`~napari_deeplab.training.cache_memory_budget`).
    """

    epochs: int = 10
    batch_size: int = 4
    image_size: int = 512
    learning_rate: float = 1e-4
    seed: int = 0
    overwrite: bool = False
    replace_better: bool = False
    eval_every: int = 0
    devices: str | int | None = None
    workers: int | None = None
    cache_memory: int | None = None

    def check(self) -> None:
        """Raise ValueError if these settings cannot train (what no run can fix later)."""
        if self.image_size % IMAGE_SIZE_MULTIPLE:
            raise ValueError(f"image size must be a multiple of {IMAGE_SIZE_MULTIPLE}")
        if self.eval_every < 0:
            raise ValueError("eval_every must be 0 (full resolution only at the end) or more")
