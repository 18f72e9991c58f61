"""Fine-tuning and evaluation on CIHP-format folders (ours or the official dataset).

:func:`finetune` is a generator that yields one :class:`EpochReport` per epoch (loss,
validation mean IoU, whether the model was saved), so the command line prints it and the
napari widget plots it; the best model by validation mean IoU is written to the output file
whenever it improves, so an interrupted run always leaves the last good model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from . import cihp
from .inference import forget_inference_model, model_input, segment
from .refine import swap_left_right

HELD_OUT_FRACTION = 0.2
"""Share of the training samples held out for validation when there is no validation split."""

IGNORE_CLASS = 255
"""Mask value meaning "not labelled": left out of the loss and of the IoU (as the common
human-parsing tools treat it). Any other value outside the model's classes is refused."""


# --- data --------------------------------------------------------------------------------------

def flip_left_right(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a photo and its mask; the person's left and right classes swap."""
    return image[:, ::-1], swap_left_right(labels[:, ::-1])


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of class ids to ``size`` x ``size`` (no blending of ids)."""
    rows = np.minimum(((np.arange(size) + 0.5) * labels.shape[0] / size).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * labels.shape[1] / size).astype(int), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def augment(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    """A random crop (scale 0.75..1), horizontal flip with left/right swap and colour jitter,
    resized to ``size`` x ``size``. Returns (size x size x 3 float32 0..255, size x size uint8)."""
    height, width = labels.shape
    scale = rng.uniform(0.75, 1.0)
    crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    image = image[top:top + crop_h, left:left + crop_w]
    labels = labels[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        image, labels = flip_left_right(image, labels)
    x = model_input(image, size)
    x = (x - 127.5) * rng.uniform(0.8, 1.2) + 127.5 + rng.uniform(-20, 20)  # contrast, brightness
    return np.clip(x, 0, 255).astype(np.float32), resize_labels(labels, size)


@dataclass
class Dataset:
    """Where the samples are: ``root`` and ``split`` as :func:`cihp.read_sample` takes them."""

    root: Path
    split: str | None
    ids: list[str]


def locate_dataset(root: str | os.PathLike, split: str) -> Dataset:
    """The samples of ``split`` under ``root``; ``root`` may also be a split folder itself."""
    root = Path(root)
    if (root / "Images").is_dir() and not (root / split).is_dir():
        return Dataset(root, None, cihp.list_samples(root, None))
    return Dataset(root, split, cihp.list_samples(root, split) if (root / split).is_dir() else [])


def training_and_validation(root, split: str, val_split: str | None) -> tuple[Dataset, Dataset]:
    """The training samples and the validation samples (a held-out share if no split has them)."""
    train = locate_dataset(root, split)
    if not train.ids:
        raise cihp.DatasetError(f"no labelled samples in {Path(root) / split}; give a CIHP root "
                                "or split folder with Images/ and Category_ids/")
    val = locate_dataset(root, val_split) if val_split else Dataset(train.root, None, [])
    if val.ids and val.split is not None:
        return train, val
    count = max(1, int(round(len(train.ids) * HELD_OUT_FRACTION))) if len(train.ids) > 1 else 0
    held = train.ids[::max(1, len(train.ids) // count)][:count] if count else []
    kept = [i for i in train.ids if i not in held] or train.ids
    return Dataset(train.root, train.split, kept), Dataset(train.root, train.split, held or train.ids)


class SampleProblems(cihp.DatasetError):
    """Samples that cannot be trained on or scored; ``problems``: one line per bad sample."""

    def __init__(self, problems: list[str], where: str):
        self.problems = problems
        self.summary = (f"{len(problems)} bad sample{'s' if len(problems) > 1 else ''} in {where}; "
                        "fix or remove them (nothing was trained or scored)")
        super().__init__("\n".join([*problems, self.summary]))


def check_samples(dataset: Dataset, num_classes: int = cihp.NUM_CLASSES) -> list[str]:
    """One line per sample of ``dataset`` that cannot be used, naming it and what is wrong
    (bad id, missing photo or mask, photo over the pixel limit, mask of another size than its
    photo, not one channel, class out of 0..``num_classes - 1`` other than 255 = ignore).
    Reads the photos' headers and the masks, not the photos."""
    problems = []
    for sample_id in dataset.ids:
        problem = _sample_problem(dataset, sample_id, num_classes)
        if problem:
            problems.append(f"sample {sample_id} ({cihp.split_folder(dataset.root, dataset.split)}): "
                            f"{problem}")
    return problems


def _sample_problem(dataset: Dataset, sample_id: str, num_classes: int) -> str | None:
    try:
        cihp.check_sample_id(sample_id)
        photo = cihp.find_image(dataset.root, sample_id, dataset.split)
    except (cihp.DatasetError, FileNotFoundError) as error:
        return str(error)
    mask_path = cihp.split_folder(dataset.root, dataset.split) / "Category_ids" / f"{sample_id}.png"
    if not mask_path.exists():
        return f"no mask {mask_path}"
    try:
        with cihp.open_image(photo) as image:
            photo_size = image.size
    except cihp.PhotoTooLargeError as error:
        return str(error)
    except OSError:
        return f"cannot read the photo {photo}"
    try:
        with cihp.open_image(mask_path) as mask:
            if mask.size != photo_size:
                return (f"mask {mask.width} x {mask.height} differs from photo {photo_size[0]} x "
                        f"{photo_size[1]} ({photo.name})")
            labels = np.asarray(mask)
    except (OSError, cihp.DatasetError):
        return f"cannot read the mask {mask_path}"
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        return f"mask {mask_path.name} is not a single-channel image of class ids"
    values = np.flatnonzero(np.bincount(labels.ravel(), minlength=num_classes)) \
        if labels.dtype == np.uint8 else np.unique(labels)
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_CLASS]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        return (f"class {shown} out of range 0..{num_classes - 1} in {mask_path.name} "
                f"({IGNORE_CLASS} = ignore)")
    return None


def require_good_samples(*datasets: Dataset, num_classes: int = cihp.NUM_CLASSES) -> None:
    """Raise :class:`SampleProblems` listing every bad sample of ``datasets``."""
    problems = list(dict.fromkeys(p for d in datasets for p in check_samples(d, num_classes)))
    if problems:
        raise SampleProblems(problems, ", ".join(dict.fromkeys(
            str(cihp.split_folder(d.root, d.split)) for d in datasets)))


class AugmentedBatches(keras.utils.PyDataset):
    """Augmented training batches of a dataset for ``fit``, read from disk each epoch."""

    def __init__(self, dataset: Dataset, size: int, batch_size: int, seed: int = 0):
        super().__init__()
        self.dataset, self.size, self.batch_size = dataset, size, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(dataset.ids).tolist()

    def __len__(self):
        return max(1, len(self.dataset.ids) // self.batch_size)

    def __getitem__(self, index):
        pairs = []
        for sample_id in self.order[index * self.batch_size:(index + 1) * self.batch_size]:
            sample = cihp.read_sample(self.dataset.root, sample_id, self.dataset.split)
            pairs.append(augment(sample.image, sample.category_ids, self.size, self.rng))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def on_epoch_end(self):
        self.order = self.rng.permutation(self.dataset.ids).tolist()


# --- evaluation --------------------------------------------------------------------------------

def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x num_classes pixel counts, rows the truth, columns the prediction; pixels
    whose truth is :data:`IGNORE_CLASS` are not counted."""
    truth, predicted = truth.ravel(), predicted.ravel()
    labelled = truth != IGNORE_CLASS
    if not labelled.all():
        truth, predicted = truth[labelled], predicted[labelled]
    return np.bincount(truth.astype(np.int64) * num_classes + predicted,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray, class_names) -> dict:
    """Mean IoU (over the classes present in truth or prediction), pixel accuracy, per-class IoU."""
    intersection = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    iou = np.where(present, intersection / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)) if present.any() else 0.0,
            "pixel_accuracy": float(intersection.sum() / max(matrix.sum(), 1)),
            "per_class": {name: (None if np.isnan(v) else float(v))
                          for name, v in zip(class_names, iou, strict=True)}}


def evaluate(model, dataset: Dataset) -> dict:
    """Score ``model`` on every sample of ``dataset`` at full resolution (our inference path).

    Every sample is checked first (:func:`check_samples`): :class:`SampleProblems` lists the
    bad ones before any prediction. Pixels labelled 255 are ignored."""
    from .model import model_info

    names = model_info(model).class_names
    require_good_samples(dataset, num_classes=len(names))
    matrix = np.zeros((len(names), len(names)), np.int64)
    for sample_id in dataset.ids:
        sample = cihp.read_sample(dataset.root, sample_id, dataset.split)
        predicted, _ = segment(sample.image, model)
        matrix += confusion(sample.category_ids, predicted, len(names))
    return scores(matrix, names)


# --- fine-tuning -------------------------------------------------------------------------------

@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float | None
    val_miou: float
    saved: bool


def freeze_batch_norm(model) -> None:
    """Keep every batch-norm layer in inference mode (trainable=False does that in Keras 3):
    on small batches live statistics make a pretrained model worse."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def finetune(model, train: Dataset, val: Dataset, out: str | os.PathLike, *, epochs: int = 10,
             batch_size: int = 4, image_size: int = 512, learning_rate: float = 1e-4,
             seed: int = 0, overwrite: bool = False) -> Iterator[EpochReport]:
    """Fine-tune ``model`` on ``train``; yield a report per epoch (epoch 0: the start model).

    Every sample of ``train`` and ``val`` is checked before any work (:class:`SampleProblems`).
    ``out`` (a ``.keras`` file) is only ever replaced atomically (temporary file, fsync,
    rename), so a kill at any moment leaves the previous file whole. A new ``out`` gets the
    start model, then each model whose mean IoU on ``val`` is the best so far. An existing
    ``out`` is refused (:class:`~napari_deeplab.cihp.DatasetError`) unless ``overwrite``, and
    is then replaced only by a model better than the start model, never by the start model
    itself. Closing the generator (Cancel, Ctrl+C) leaves the best model saved so far. Mask
    pixels of 255 are left out of the loss.
    """
    from .model import model_info

    if image_size % 16:
        raise ValueError("image size must be a multiple of 16")
    out = Path(out)
    if out.exists() and not overwrite:
        raise cihp.DatasetError(f"{out} exists; choose another output file, or overwrite it "
                                "(--overwrite): it is then replaced only by a better model")
    require_good_samples(train, val, num_classes=len(model_info(model).class_names))
    cihp.remove_stale_temporaries(out.parent, out.name)  # of a run that was killed
    keras.utils.set_random_seed(seed)
    model_info(model).input_size = image_size  # inference resizes as training did
    freeze_batch_norm(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  ignore_class=IGNORE_CLASS))
    best = evaluate(model, val)["miou"]
    saved = not out.exists()  # an existing file is kept until a better model is ready
    if saved:
        _save_atomically(model, out)
    yield EpochReport(0, epochs, None, best, saved)
    batches = AugmentedBatches(train, image_size, min(batch_size, len(train.ids)), seed)
    for epoch in range(1, epochs + 1):
        history = model.fit(batches, epochs=1, verbose=0)
        forget_inference_model(model)
        val_miou = evaluate(model, val)["miou"]
        saved = val_miou > best
        if saved:
            best = val_miou
            _save_atomically(model, out)
        yield EpochReport(epoch, epochs, float(history.history["loss"][-1]), val_miou, saved)


def _save_atomically(model, out: Path) -> None:
    """Write the model to a temporary ``.keras`` sibling, fsync it, rename it over ``out``."""
    cihp.write_file_atomically(out, model.save)
