"""Fine-tuning and evaluation on CIHP-format folders (ours or the official dataset).

:func:`finetune` is a generator that yields one :class:`EpochReport` per epoch (loss,
validation mean IoU, whether the model was saved), so the command line prints it and the
napari widget plots it; the best model by validation mean IoU is written to the output file
whenever it improves, so an interrupted run always leaves the last good model.

The input pipeline: every sample is decoded once (:class:`SampleCache`, in memory or in
``.npy`` files on disk), augmented by a pool of threads (numpy and OpenCV release the GIL),
deterministically for a seed whatever the number of threads, and prefetched while the model
trains (:class:`AugmentedBatches`); ``train_on_batch`` runs the steps. It needs neither
``tf.data`` nor TensorFlow, so it runs on Keras's JAX backend as on TensorFlow, and on several
devices (:mod:`napari_deeplab.distributed`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import keras
import numpy as np

from . import cihp, distributed, files, photos
from .inference import forget_inference_model, resize_bilinear, segment, to_rgb
from .refine import LEFT_RIGHT_PAIRS, swap_left_right

HELD_OUT_FRACTION = 0.2
"""Share of the training samples held out for validation when there is no validation split."""

IGNORE_CLASS = 255
"""Mask value meaning "not labelled": left out of the loss and of the IoU (as the common
human-parsing tools treat it). Any other value outside the model's classes is refused."""


# --- data --------------------------------------------------------------------------------------

def flip_left_right(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a photo and its mask; the person's left and right classes swap."""
    return image[:, ::-1], swap_left_right(labels[:, ::-1])


def resize_labels(labels: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of class ids (H x W) to ``size`` x ``size``, or to ``size`` =
    (height, width), half-pixel centred (no blending of ids)."""
    height, width = (size, size) if np.ndim(size) == 0 else size
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(int),
                      labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(int),
                      labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def resize_photo(image: np.ndarray, size) -> np.ndarray:
    """``image`` (any form :func:`~napari_deeplab.inference.to_rgb` takes) resized bilinearly
    without antialiasing to ``size`` x ``size``, or ``size`` = (height, width): float32 RGB in
    0..255. OpenCV's ``INTER_LINEAR`` on float32 equals :func:`~napari_deeplab.inference.model_input`
    (the seed's ``tf.image.resize``) within 1e-4, several times faster."""
    height, width = (size, size) if np.ndim(size) == 0 else size
    return resize_bilinear(to_rgb(image).astype(np.float32), width, height)


CROP_SCALE = (0.75, 1.0)
"""Side of the random crop, as a share of the photo's side (drawn once for both sides)."""


_LEFT_RIGHT_SWAPPED = np.arange(256, dtype=np.uint8)
for _left, _right in LEFT_RIGHT_PAIRS:
    _LEFT_RIGHT_SWAPPED[_left], _LEFT_RIGHT_SWAPPED[_right] = _right, _left


def augment(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    """A random crop (scale 0.75..1), horizontal flip with left/right swap and colour jitter,
    resized to ``size`` x ``size``. ``image``: H x W photo (any form ``to_rgb`` takes),
    ``labels``: H x W class ids (0..255). Returns (size x size x 3 float32 0..255,
    size x size uint8). OpenCV and in-place numpy: a few ms a photo at 512 px on one core."""
    height, width = labels.shape
    scale = rng.uniform(*CROP_SCALE)
    crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    flip = rng.random() < 0.5
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    x = resize_photo(image[top:top + crop_h, left:left + crop_w], size)
    y = cv2.resize(np.ascontiguousarray(labels[top:top + crop_h, left:left + crop_w], np.uint8),
                   (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    if flip:  # resizing with half-pixel centres is mirror-symmetric: flip the small result
        x, y = cv2.flip(x, 1), cv2.LUT(cv2.flip(y, 1), _LEFT_RIGHT_SWAPPED)
    np.multiply(x, np.float32(contrast), out=x)
    np.add(x, np.float32(127.5 * (1 - contrast) + brightness), out=x)
    return np.clip(x, 0, 255, out=x), y


@dataclass
class Dataset:
    """Where the samples are: ``root`` and ``split`` as :func:`cihp.read_sample` takes them.
    ``duplicates``: ids the id list names more than once (each is in ``ids`` once)."""

    root: Path
    split: str | None
    ids: list[str]
    duplicates: tuple[str, ...] = ()


def locate_dataset(root: str | os.PathLike, split: str) -> Dataset:
    """The samples of ``split`` under ``root``; ``root`` may also be a split folder itself.

    An id listed twice is kept once (and named in ``duplicates``). An id list that cannot be
    read (a folder, no permission) raises :class:`~napari_deeplab.cihp.DatasetError`."""
    root = Path(root)
    if (root / "Images").is_dir() and not (root / split).is_dir():
        return _listed_dataset(root, None)
    if not (root / split).is_dir():
        return Dataset(root, split, [])
    return _listed_dataset(root, split)


def _listed_dataset(root: Path, split: str | None) -> Dataset:
    folder = cihp.split_folder(root, split)
    try:
        listed = cihp.list_samples(root, split)
    except OSError as error:  # IsADirectoryError, PermissionError, ... on the id list
        where = error.filename or folder
        raise cihp.DatasetError(f"cannot read the id list {where} ({error.strerror or error}); "
                                "it must be a readable text file, one sample id a line") from None
    except UnicodeDecodeError:
        raise cihp.DatasetError(f"the id list in {folder} is not text; it must be a text file, "
                                "one sample id a line") from None
    ids = list(dict.fromkeys(listed))
    seen: set[str] = set()
    duplicates = tuple(dict.fromkeys(i for i in listed if i in seen or seen.add(i)))
    return Dataset(root, split, ids, duplicates)


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
            problems.append(sample_problem_line(dataset, sample_id, problem))
    return problems


def sample_problem_line(dataset: Dataset, sample_id: str, problem: str) -> str:
    """The one line that names a bad sample and what is wrong with it."""
    return f"sample {sample_id} ({cihp.split_folder(dataset.root, dataset.split)}): {problem}"


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
        photo_size = photos.photo_size(photo)
    except cihp.PhotoTooLargeError as error:
        return str(error)
    except photos.PhotoError as error:
        return f"cannot read the photo {photo}: {error}"
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


# --- the input pipeline ------------------------------------------------------------------------

CACHE_MEMORY_ENV = "NAPARI_DEEPLAB_TRAINING_CACHE_MB"
"""Memory (MB) a split's decoded samples may take before they are cached on disk instead."""

FALLBACK_CACHE_MEMORY = 2 << 30
"""The memory budget where the free memory cannot be read (no ``os.sysconf``): 2 GiB."""


def cache_memory_budget() -> int:
    """Bytes a split's decoded samples may take in memory: ``$NAPARI_DEEPLAB_TRAINING_CACHE_MB``,
    else a quarter of the memory free now, else (no ``os.sysconf``) 2 GiB."""
    override = os.environ.get(CACHE_MEMORY_ENV)
    if override:
        return int(float(override) * (1 << 20))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError):
        return FALLBACK_CACHE_MEMORY


def training_cache_side(image_size: int) -> int:
    """The largest side a training photo needs: a crop of at least ``CROP_SCALE[0]`` of it is
    resized to ``image_size``, so more than ``image_size / 0.75`` pixels is never used."""
    return math.ceil(image_size / CROP_SCALE[0])


class SampleCache:
    """The samples of ``dataset`` decoded once: ``cache[i]`` is sample i's photo and mask as one
    H x W x 4 uint8 array (RGB, then the class ids).

    A side longer than ``max_side`` is shrunk to ``max_side`` when the sample is first read
    (bilinearly without antialiasing for the photo, as the model input is made; nearest for
    the mask): a 12-megapixel photo trained at 512 px takes 1.4 MB instead of 48. Photos of
    16 bits are kept rounded to 8. The samples stay in memory when they fit ``memory_budget``
    bytes (default :func:`cache_memory_budget`; the photo headers give their sizes); else each
    is written once to ``folder`` (default ``<cache dir>/training-samples``) as an ``.npy``
    file named after its photo, its mask and their sizes and modification times, so an edited
    mask is read again and its old file removed. Safe to read from several threads.
    """

    def __init__(self, dataset: Dataset, max_side: int, *, memory_budget: int | None = None,
                 folder: str | os.PathLike | None = None):
        self.dataset, self.max_side = dataset, max_side
        split = cihp.split_folder(dataset.root, dataset.split)
        self.paths = [(cihp.find_image(dataset.root, sample_id, dataset.split),
                       split / "Category_ids" / f"{sample_id}.png") for sample_id in dataset.ids]
        self.shapes = []
        for photo, _ in self.paths:
            width, height = photos.photo_size(photo)
            self.shapes.append((min(height, max_side), min(width, max_side)))
        needed = sum(height * width * 4 for height, width in self.shapes)
        budget = cache_memory_budget() if memory_budget is None else memory_budget
        self.in_memory = needed <= budget
        self.folder = None
        if not self.in_memory:
            from .model import cache_dir

            self.folder = Path(folder) if folder is not None else cache_dir() / "training-samples"
            self.folder.mkdir(parents=True, exist_ok=True)
        self._decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        if self.in_memory:
            if index not in self._decoded:  # two threads may both decode it once: harmless
                self._decoded[index] = self._decode(index)
            return self._decoded[index]
        return self._from_disk(index)

    def decode_all(self, pool: ThreadPoolExecutor) -> None:
        """Decode every sample now (in ``pool``), so that a photo that cannot be decoded is
        named before any training: :class:`SampleProblems` lists each such sample."""
        problems = [p for p in pool.map(self._problem, range(len(self))) if p]
        if problems:
            raise SampleProblems(problems, str(cihp.split_folder(self.dataset.root, self.dataset.split)))

    def _problem(self, index: int) -> str | None:
        try:
            self[index]
        except (ValueError, OSError) as error:  # photos.PhotoError, PhotoTooLargeError
            return sample_problem_line(self.dataset, self.dataset.ids[index], str(error))
        return None

    def _decode(self, index: int) -> np.ndarray:
        sample = cihp.read_sample(self.dataset.root, self.dataset.ids[index], self.dataset.split)
        photo, labels = sample.image, sample.category_ids  # H x W x 3 uint8: photos.read_photo
        shape = self.shapes[index]
        if photo.shape[:2] != shape:
            photo = np.round(resize_photo(photo, shape)).astype(np.uint8)
            labels = resize_labels(labels, shape)
        return np.concatenate([photo, labels.astype(np.uint8)[..., None]], axis=-1)

    def _from_disk(self, index: int) -> np.ndarray:
        photo, mask = self.paths[index]
        where = hashlib.sha256(f"{photo.resolve()}\n{mask.resolve()}\n{self.max_side}".encode())
        stamp = hashlib.sha256(str([(p.stat().st_size, p.stat().st_mtime_ns)
                                    for p in (photo, mask)]).encode())
        prefix = where.hexdigest()[:24]
        path = self.folder / f"{prefix}-{stamp.hexdigest()[:12]}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # not cached yet, or a damaged file: decode again
            pass
        array = self._decode(index)
        staged = self.folder / f".{path.stem}.{os.getpid()}-{id(array):x}.npy"
        try:
            np.save(staged, array, allow_pickle=False)
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        for stale in self.folder.glob(f"{prefix}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return array


class AugmentedBatches:
    """Endless augmented training batches of a :class:`SampleCache`, made by ``pool``'s threads
    ``prefetch`` batches ahead of the training.

    Epoch e visits the samples in the order of ``default_rng([seed, e]).permutation``, whole
    batches only (``len(cache) // batch_size`` of them, at least one); sample i of epoch e is
    augmented with ``default_rng([seed, e, i])``, so the batches are the same for any number of
    threads. ``shard`` = (p, P): this process makes only its P-th part p of every batch (data
    parallel training on P processes; the parts in process order are the whole batch).
    Each batch: (b x size x size x 3 float32 0..255, b x size x size uint8).
    """

    def __init__(self, cache: SampleCache, size: int, batch_size: int, pool: ThreadPoolExecutor,
                 *, seed: int = 0, prefetch: int = 2, shard: tuple[int, int] = (0, 1)):
        if batch_size % shard[1]:
            raise ValueError(f"a batch of {batch_size} cannot be split over {shard[1]} processes")
        self.cache, self.size, self.batch_size, self.pool = cache, size, batch_size, pool
        self.seed, self.prefetch, self.shard = seed, max(1, prefetch), shard
        self.steps_per_epoch = max(1, len(cache) // batch_size)
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def sample_indices(self, epoch: int, step: int) -> np.ndarray:
        """The indices of the samples of this process's part of batch ``step`` of ``epoch``."""
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.cache)))
        order = self._order[1]
        batch = np.resize(order, max(self.batch_size, len(order)))  # repeats if too few samples
        part = self.batch_size // self.shard[1]
        first = step * self.batch_size + self.shard[0] * part
        return batch[first:first + part]

    def batches(self, first_epoch: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch ``first_epoch``, then of the epochs after it, without end;
        close the generator to stop the threads' work ahead."""
        pending: deque = deque()
        planned = ((epoch, step) for epoch in _count_from(first_epoch)
                   for step in range(self.steps_per_epoch))
        try:
            while True:
                while len(pending) < self.prefetch + 1:
                    pending.append(self._start(*next(planned)))
                x, y, futures = pending.popleft()
                for future in futures:
                    future.result()
                yield x, y
        finally:
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()

    def _start(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray, list[Future]]:
        indices = self.sample_indices(epoch, step)
        x = np.empty((len(indices), self.size, self.size, 3), np.float32)
        y = np.empty((len(indices), self.size, self.size), np.uint8)

        def fill(slot: int, index: int) -> None:
            sample = self.cache[index]
            x[slot], y[slot] = augment(sample[..., :3], sample[..., 3], self.size,
                                       np.random.default_rng([self.seed, epoch, int(index)]))

        return x, y, [self.pool.submit(fill, slot, int(index)) for slot, index in enumerate(indices)]


def _count_from(first: int) -> Iterator[int]:
    while True:
        yield first
        first += 1


class ResizedValidation:
    """Mean IoU of ``model`` on a :class:`SampleCache` at the model's training resolution:
    photos resized to ``size`` x ``size`` (bilinearly, as inference makes its input), masks
    resized nearest, predicted ``batch_size`` at a time by one compiled function (the last
    batch padded, so that every call has the same shape and nothing is traced again).

    The cache should be made with ``max_side=size``: the photos are then shrunk once, and the
    inputs are the model inputs of inference up to the 8-bit rounding of the cache.
    """

    def __init__(self, model, cache: SampleCache, size: int, batch_size: int,
                 pool: ThreadPoolExecutor, distribution=None):
        from keras import ops

        from .model import model_info

        self.cache, self.size, self.batch_size, self.pool = cache, size, batch_size, pool
        self.distribution = distribution
        self.class_names = model_info(model).class_names
        logits = model.outputs[0]
        self.labels_of = keras.Model(model.inputs, ops.argmax(logits, axis=-1),
                                     name=f"{model.name}_labels")  # shares model's weights

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.cache[index]
        return resize_photo(sample[..., :3], self.size), resize_labels(sample[..., 3], self.size)

    def miou(self) -> float:
        """The mean IoU (see :func:`scores`) over every sample of the cache."""
        classes = len(self.class_names)
        matrix = np.zeros((classes, classes), np.int64)
        for first in range(0, len(self.cache), self.batch_size):
            indices = list(range(first, min(first + self.batch_size, len(self.cache))))
            pairs = list(self.pool.map(self._resized, indices))
            x = np.stack([p[0] for p in pairs] + [pairs[-1][0]] * (self.batch_size - len(pairs)))
            predicted = np.asarray(self.labels_of.predict_on_batch(
                distributed.batch_input(self.distribution, x)))
            for (_, truth), labels in zip(pairs, predicted, strict=False):
                matrix += confusion(truth, labels.astype(np.int64), classes)
        return scores(matrix, self.class_names)["miou"]

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
        try:
            sample = cihp.read_sample(dataset.root, sample_id, dataset.split)
        except (ValueError, OSError) as error:  # photos.PhotoError, PhotoTooLargeError
            raise SampleProblems([sample_problem_line(dataset, sample_id, str(error))],
                                 str(cihp.split_folder(dataset.root, dataset.split))) from None
        predicted, _ = segment(sample.image, model)
        matrix += confusion(sample.category_ids, predicted, len(names))
    if not matrix.any():
        raise NoLabelledPixels(dataset)
    return scores(matrix, names)


class NoLabelledPixels(cihp.DatasetError):
    """Every mask pixel of a dataset is 255 (ignore): there is nothing to score or learn."""

    def __init__(self, dataset: Dataset):
        super().__init__(f"no labelled pixels in {cihp.split_folder(dataset.root, dataset.split)}: "
                         f"every mask pixel of its {len(dataset.ids)} samples is {IGNORE_CLASS} "
                         "(ignore); label some pixels (0..19) first")


def require_labelled_pixels(cache: SampleCache) -> None:
    """Raise :class:`NoLabelledPixels` when every mask pixel of ``cache`` is 255."""
    if not any((cache[i][..., 3] != IGNORE_CLASS).any() for i in range(len(cache))):
        raise NoLabelledPixels(cache.dataset)


# --- fine-tuning -------------------------------------------------------------------------------

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
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def finetune(model, train: Dataset, val: Dataset, out: str | os.PathLike, *, epochs: int = 10,
             batch_size: int = 4, image_size: int = 512, learning_rate: float = 1e-4,
             seed: int = 0, overwrite: bool = False, replace_better: bool = False,
             eval_every: int = 0, devices=None, workers: int | None = None,
             cache_memory: int | None = None,
             progress: Callable[[str], None] | None = None) -> Iterator[EpochReport]:
    """Fine-tune ``model`` on ``train``; yield a report per epoch (epoch 0: the start model).

    Every sample of ``train`` and ``val`` is checked before any work (:class:`SampleProblems`).
    ``out`` (a ``.keras`` file) is only ever replaced atomically (temporary file, fsync,
    rename), so a kill at any moment leaves the previous file whole. A new ``out`` gets the
    start model, then each model whose mean IoU on ``val`` is the best so far. An existing
    ``out`` is refused (:class:`~napari_deeplab.cihp.DatasetError`) unless ``overwrite``; it is
    then scored on ``val`` as the new models are (epoch 0's ``out_miou``) and replaced only by a
    model better than both it and the start model (with ``replace_better``: better than the
    start model alone), never by the start model itself. Closing the generator (Cancel,
    Ctrl+C) leaves the best model saved so far. Mask
    pixels of 255 are left out of the loss.

    The mean IoU that picks the best model is measured each epoch at ``image_size``
    (:class:`ResizedValidation`); at full resolution (:func:`evaluate`) after the last epoch
    and every ``eval_every`` epochs (0: only after the last). Samples are decoded once
    (:class:`SampleCache`, in memory up to ``cache_memory`` bytes per split, default
    :func:`cache_memory_budget`) and augmented by ``workers`` threads (default: the cores).
    ``progress(text)``, if given, hears what happens between two reports (each training step).
    ``devices``: None (one device), ``"all"`` or N: data parallel on the JAX backend
    (:mod:`napari_deeplab.distributed`); ``batch_size`` is then the global batch.
    """
    from .model import model_info

    if image_size % 16:
        raise ValueError("image size must be a multiple of 16")
    if eval_every < 0:
        raise ValueError("eval_every must be 0 (full resolution only at the end) or more")
    out = Path(out)
    existed = out.exists()  # before any process of a multi-process run writes it
    if existed and not overwrite:
        raise cihp.DatasetError(f"{out} exists; choose another output file, or overwrite it "
                                "(--overwrite): it is then replaced only by a better model")
    require_good_samples(train, val, num_classes=len(model_info(model).class_names))
    distribution = distributed.data_parallel(devices)
    batch_size = distributed.fitting_batch_size(distribution, batch_size, len(train.ids))
    files.remove_stale_temporaries(out.parent, out.name)  # of a run that was killed
    keras.utils.set_random_seed(seed)
    model_info(model).input_size = image_size  # inference resizes as training did
    freeze_batch_norm(model)
    with distributed.distributed_over(distribution, model), \
            ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, ignore_class=IGNORE_CLASS))
        val_cache = SampleCache(val, image_size, memory_budget=cache_memory)
        train_cache = SampleCache(train, training_cache_side(image_size), memory_budget=cache_memory)
        for cache in (val_cache, train_cache):  # a photo that cannot be decoded: named now
            cache.decode_all(pool)
            require_labelled_pixels(cache)
        validation = ResizedValidation(model, val_cache, image_size, batch_size, pool, distribution)
        augmented = AugmentedBatches(train_cache, image_size, batch_size, pool, seed=seed,
                                     shard=distributed.process_shard(distribution))
        if progress is not None and existed:
            progress(f"scoring the existing {Path(out).name}")
        out_miou, out_problem = (score_model_file(out, val_cache, image_size, batch_size, pool,
                                                  distribution, model_info(model).class_names)
                                 if existed else (None, ""))
        if progress is not None:
            progress("validating the start model")
        start = best = validation.miou()
        if out_miou is not None and not replace_better:
            best = max(best, out_miou)  # never replace a better model by a worse one
        saved = not existed  # an existing file is kept until a better model is ready
        if saved:  # by every process (the same file): saving may need them all in step
            _save_atomically(model, out)
        yield EpochReport(0, epochs, None, start, saved, image_size, out_miou=out_miou,
                          out_problem=out_problem)
        batches = augmented.batches(first_epoch=1)
        try:
            for epoch in range(1, epochs + 1):
                loss = train_epoch(model, batches, augmented.steps_per_epoch, None if progress is None
                                   else lambda step, steps, loss, epoch=epoch: progress(
                                       f"epoch {epoch} of {epochs}: step {step} of {steps}, "
                                       f"loss {loss:.3f}"))
                val_miou = validation.miou()
                saved = val_miou > best
                if saved:
                    best = val_miou
                    _save_atomically(model, out)
                full = None
                if epoch == epochs or (eval_every and epoch % eval_every == 0):
                    forget_inference_model(model)
                    full = evaluate(model, val)["miou"]
                yield EpochReport(epoch, epochs, loss, val_miou, saved, image_size, full)
        finally:
            batches.close()


def score_model_file(path: Path, cache: SampleCache, size: int, batch_size: int,
                     pool: ThreadPoolExecutor, distribution, class_names) -> tuple[float | None, str]:
    """(mean IoU of the model in ``path`` on ``cache``, as :class:`ResizedValidation` measures
    it at ``size``; "") or (None, why it cannot be scored: unreadable, other classes)."""
    from .model import ModelError, load_model, model_info

    try:
        existing = load_model(path)
    except ModelError as error:
        return None, str(error)
    if tuple(model_info(existing).class_names) != tuple(class_names):
        return None, (f"{path} has {len(model_info(existing).class_names)} classes, not the "
                      f"{len(class_names)} of the model being trained")
    return ResizedValidation(existing, cache, size, batch_size, pool, distribution).miou(), ""


def train_epoch(model, batches: Iterator[tuple[np.ndarray, np.ndarray]], steps: int,
                on_step: Callable[[int, int, float], None] | None = None) -> float:
    """Train ``model`` (compiled) on the next ``steps`` batches; the mean of their losses.
    ``on_step(step, steps, loss)`` after each batch."""
    losses = []
    for step in range(1, steps + 1):
        losses.append(float(np.ravel(model.train_on_batch(*next(batches)))[0]))
        if on_step is not None:
            on_step(step, steps, losses[-1])
    return float(np.mean(losses))


def _save_atomically(model, out: Path) -> None:
    """Write the model to a temporary ``.keras`` sibling, fsync it, rename it over ``out``
    (in float32 whatever precision it trains in: :func:`~napari_deeplab.model.save_model`)."""
    from .model import save_model

    files.write_file_atomically(out, lambda path: save_model(model, path))
