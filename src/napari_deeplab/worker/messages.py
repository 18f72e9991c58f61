"""The messages between :class:`~napari_deeplab.worker.ModelProcess` and its children.

Each is a frozen dataclass, pickled by :class:`multiprocessing.connection.Connection` as it
is sent. Every message but :class:`Shutdown` names its job (``job``), which the parent's
reader thread routes it by. Parent to child: :class:`SegmentJob`, :class:`FinetuneJob`,
:class:`Cancel`, :class:`Shutdown`. Child to parent, for one job: any number of
:class:`Stage`, :class:`Segmented` and :class:`EpochDone`, then :class:`Done` or
:class:`Failed`.

Nothing here imports Keras, and the fine-tuning settings only with a :class:`FinetuneJob`, so a
child connects to its parent without loading more than numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..inference import Segmentation
    from ..training import FinetuneSettings


# --- parent to child ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentJob:
    """Segment ``images`` (each H x W or H x W x 3/4 numpy array, any form
    :func:`~napari_deeplab.inference.to_rgb` takes) with the model ``source``,
    ``batch_size`` photos per model call; ``tta``: None or ``"flip"``
    (:func:`~napari_deeplab.inference.inference_model`); ``runner_up``: also each photo's
    runner-up class map (``Segmentation.runner_up``)."""

    job: int
    source: str
    images: list[np.ndarray]
    batch_size: int
    tta: str | None = None
    runner_up: bool = False


@dataclass(frozen=True)
class FinetuneJob:
    """Fine-tune the model ``source`` on ``split`` of the dataset ``root`` (validated on
    ``val_split``, or on a held-out share where it is None or absent) into the ``.keras`` file
    ``out``, as ``settings`` say."""

    job: int
    root: str
    split: str
    val_split: str | None
    source: str
    out: str
    settings: FinetuneSettings


@dataclass(frozen=True)
class Cancel:
    """Drop job ``job``: before it starts, or between two of its photos."""

    job: int


@dataclass(frozen=True)
class Shutdown:
    """Exit at once, whatever runs."""


# --- child to parent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """What job ``job`` is doing now ("loading TensorFlow", "epoch 1 of 5: step 3 of 20", ...)."""

    job: int
    text: str


@dataclass(frozen=True)
class Segmented:
    """One photo of a :class:`SegmentJob`, in the order of its images."""

    job: int
    segmentation: Segmentation


@dataclass(frozen=True)
class EpochDone:
    """One epoch of a :class:`FinetuneJob`: ``report`` is
    :meth:`~napari_deeplab.training.EpochReport.fields`."""

    job: int
    report: dict


@dataclass(frozen=True)
class Done:
    """Job ``job`` ended: every answer has been sent."""

    job: int


@dataclass(frozen=True)
class Failed:
    """Job ``job`` failed; ``message``: one line that says why (and what to try)."""

    job: int
    message: str


Request = SegmentJob | FinetuneJob
"""A job the child runs."""

Answer = Segmented | EpochDone
"""A result of a job (each counts as one step of its progress)."""
