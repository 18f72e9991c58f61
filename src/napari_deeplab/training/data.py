"""The data of fine-tuning: locating and checking the samples, decoding them once, augmenting
them into batches ahead of the training.

Every sample is decoded once (:class:`SampleCache`, in memory or in ``.npy`` files on disk),
augmented by a pool of threads (numpy and OpenCV release the GIL), deterministically for a
seed whatever the number of threads, and prefetched while the model trains
(:class:`AugmentedBatches`). Nothing here needs Keras.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import cihp, files, photos
from ..inference import resize_bilinear, to_rgb

HELD_OUT_FRACTION = 0.2
"""Share of the training samples held out for validation when there is no validation split."""

IGNORE_CLASS = 255
"""Mask value meaning "not labelled": left out of the loss and of the IoU (as the common
human-parsing tools treat it). Any other value outside the model's classes is refused."""


def flip_left_right(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a photo and its mask; the person's left and right classes swap.

    Parameters
    ----------
    image : ndarray
        H x W or H x W x C photo, any dtype.
    labels : ndarray
        H x W class ids in 0..255, any integer dtype.

    Returns
    -------
    (ndarray, ndarray)
        The photo mirrored (a view), and the mask mirrored with
        :data:`~napari_deeplab.cihp.LEFT_RIGHT_SWAP` applied, in ``labels``' dtype.
    """
    return image[:, ::-1], cihp.LEFT_RIGHT_SWAP[labels[:, ::-1]].astype(labels.dtype, copy=False)


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of class ids, half-pixel centred (no blending of ids).

    Parameters
    ----------
    labels : ndarray
        H x W class ids, any dtype.
    size : int or (int, int)
        The side of the square result in pixels, or its (height, width).

    Returns
    -------
    ndarray
        ``size`` x ``size`` (or height x width) ids, in ``labels``' dtype.
    """
    height, width = (int(v) for v in np.broadcast_to(size, 2))
    rows = np.minimum(
        ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(int), labels.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(int), labels.shape[1] - 1
    )
    return labels[np.ix_(rows, cols)]


def resize_photo(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A photo resized bilinearly without antialiasing, without keeping aspect.

    OpenCV's ``INTER_LINEAR`` on float32 equals :func:`~napari_deeplab.inference.model_input`
    (the seed's ``tf.image.resize``) within 1e-4, several times faster.

    Parameters
    ----------
    image : ndarray
        H x W (x 1, 3 or 4) photo in any form :func:`~napari_deeplab.inference.to_rgb` takes.
    size : int or (int, int)
        The side of the square result in pixels, or its (height, width).

    Returns
    -------
    ndarray
        ``size`` x ``size`` (or height x width) x 3 float32 RGB in 0..255.
    """
    height, width = (int(v) for v in np.broadcast_to(size, 2))
    return resize_bilinear(to_rgb(image).astype(np.float32), width, height)


CROP_SCALE = (0.75, 1.0)
"""Side of the random crop, as a share of the photo's side (drawn once for both sides): small
enough to vary the framing, large enough to keep most of the person."""

FLIP_PROBABILITY = 0.5
"""Chance of a horizontal flip: people face left as often as right."""

CONTRAST_RANGE = (0.8, 1.2)
"""Contrast factor drawn per photo, around mid-grey: the spread of ordinary photos' exposure."""

BRIGHTNESS_RANGE = (-20.0, 20.0)
"""Brightness shift drawn per photo, in 0..255 units (about 8% of the range either way)."""

MID_GREY = 127.5
"""The value a contrast change leaves in place, so that it does not shift the brightness."""


def augment(
    image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop (:data:`CROP_SCALE`), horizontal flip with the left and right classes
    swapped (:data:`FLIP_PROBABILITY`) and colour jitter (:data:`CONTRAST_RANGE`,
    :data:`BRIGHTNESS_RANGE`), resized to ``size`` x ``size``. OpenCV and in-place numpy: a few
    ms a photo at 512 px on one core.

    Parameters
    ----------
    image : ndarray
        H x W photo in any form :func:`~napari_deeplab.inference.to_rgb` takes.
    labels : ndarray
        H x W class ids in 0..255.
    size : int
        Side of the result in pixels.
    rng : numpy.random.Generator
        Draws the crop, the flip and the jitter.

    Returns
    -------
    (ndarray, ndarray)
        ``size`` x ``size`` x 3 float32 RGB in 0..255, and ``size`` x ``size`` uint8 class ids.
    """
    height, width = labels.shape
    scale = rng.uniform(*CROP_SCALE)
    crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    flip = rng.random() < FLIP_PROBABILITY
    contrast, brightness = rng.uniform(*CONTRAST_RANGE), rng.uniform(*BRIGHTNESS_RANGE)
    x = resize_photo(image[top : top + crop_h, left : left + crop_w], size)
    y = cv2.resize(
        np.ascontiguousarray(labels[top : top + crop_h, left : left + crop_w], np.uint8),
        (size, size),
        interpolation=cv2.INTER_NEAREST_EXACT,
    )
    if flip:  # resizing with half-pixel centres is mirror-symmetric: flip the small result
        x, y = cv2.flip(x, 1), cv2.LUT(cv2.flip(y, 1), cihp.LEFT_RIGHT_SWAP)
    np.multiply(x, np.float32(contrast), out=x)
    np.add(x, np.float32(MID_GREY * (1 - contrast) + brightness), out=x)
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
    location = cihp.locate(root, split)
    if location.split is not None and not location.folder.is_dir():
        return Dataset(location.root, split, [])
    return _listed_dataset(location.root, location.split)


def _listed_dataset(root: Path, split: str | None) -> Dataset:
    folder = cihp.split_folder(root, split)
    try:
        listed = cihp.list_samples(root, split)
    except OSError as error:  # IsADirectoryError, PermissionError, ... on the id list
        where = error.filename or folder
        raise cihp.DatasetError(
            f"cannot read the id list {where} ({error.strerror or error}); "
            "it must be a readable text file, one sample id a line"
        ) from None
    except UnicodeDecodeError:
        raise cihp.DatasetError(
            f"the id list in {folder} is not text; it must be a text file, one sample id a line"
        ) from None
    ids = list(dict.fromkeys(listed))
    seen: set[str] = set()
    repeated = []  # each repetition of an id, in order
    for sample_id in listed:
        if sample_id in seen:
            repeated.append(sample_id)
        seen.add(sample_id)
    duplicates = tuple(dict.fromkeys(repeated))
    return Dataset(root, split, ids, duplicates)


def training_and_validation(root, split: str, val_split: str | None) -> tuple[Dataset, Dataset]:
    """The training samples and the validation samples (a held-out share if no split has them)."""
    train = locate_dataset(root, split)
    if not train.ids:
        raise cihp.DatasetError(
            f"no labelled samples in {Path(root) / split}; give a CIHP root "
            "or split folder with Images/ and Category_ids/"
        )
    val = locate_dataset(root, val_split) if val_split else Dataset(train.root, None, [])
    if val.ids and val.split is not None:
        return train, val
    count = max(1, int(round(len(train.ids) * HELD_OUT_FRACTION))) if len(train.ids) > 1 else 0
    held = train.ids[:: max(1, len(train.ids) // count)][:count] if count else []
    kept = [i for i in train.ids if i not in held] or train.ids
    return Dataset(train.root, train.split, kept), Dataset(
        train.root, train.split, held or train.ids
    )


class SampleProblems(cihp.DatasetError):
    """Samples that cannot be trained on or scored; ``problems``: one line per bad sample."""

    def __init__(self, problems: list[str], where: str):
        self.problems = problems
        self.summary = (
            f"{len(problems)} bad sample{'s' if len(problems) > 1 else ''} in {where}; "
            "fix or remove them (nothing was trained or scored)"
        )
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


CLASSES_SHOWN = 5
"""Out-of-range classes a problem line names before "...": enough to see the pattern."""


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
    except photos.PhotoTooLargeError as error:
        return str(error)
    except photos.PhotoError as error:
        return f"cannot read the photo {photo}: {error}"
    try:
        with photos.open_image(mask_path) as mask:
            if mask.size != photo_size:
                return (
                    f"mask {mask.width} x {mask.height} differs from photo {photo_size[0]} x "
                    f"{photo_size[1]} ({photo.name})"
                )
            labels = np.asarray(mask)
    except (OSError, cihp.DatasetError):
        return f"cannot read the mask {mask_path}"
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        return f"mask {mask_path.name} is not a single-channel image of class ids"
    values = (
        np.flatnonzero(np.bincount(labels.ravel(), minlength=num_classes))
        if labels.dtype == np.uint8
        else np.unique(labels)
    )
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_CLASS]
    if bad:
        shown = ", ".join(map(str, bad[:CLASSES_SHOWN])) + (
            ", ..." if len(bad) > CLASSES_SHOWN else ""
        )
        return (
            f"class {shown} out of range 0..{num_classes - 1} in {mask_path.name} "
            f"({IGNORE_CLASS} = ignore)"
        )
    return None


def require_good_samples(*datasets: Dataset, num_classes: int = cihp.NUM_CLASSES) -> None:
    """Raise :class:`SampleProblems` listing every bad sample of ``datasets``."""
    problems = list(dict.fromkeys(p for d in datasets for p in check_samples(d, num_classes)))
    if problems:
        raise SampleProblems(
            problems,
            ", ".join(dict.fromkeys(str(cihp.split_folder(d.root, d.split)) for d in datasets)),
        )


CACHE_MEMORY_ENV = "NAPARI_DEEPLAB_TRAINING_CACHE_MB"
"""Memory (MB) a split's decoded samples may take before they are cached on disk instead."""

FALLBACK_CACHE_MEMORY = 2 << 30
"""The memory budget where the free memory cannot be read (no ``os.sysconf``): 2 GiB."""

FREE_MEMORY_SHARE = 4
"""The cache takes at most 1 / this of the free memory: the model, its gradients and the
augmented batches need the rest."""

MIB = 1 << 20
"""Bytes in a MiB, the unit of :data:`CACHE_MEMORY_ENV`."""


def cache_memory_budget() -> int:
    """Bytes a split's decoded samples may take in memory: ``$NAPARI_DEEPLAB_TRAINING_CACHE_MB``,
    else a quarter of the memory free now, else (no ``os.sysconf``) 2 GiB."""
    override = os.environ.get(CACHE_MEMORY_ENV)
    if override:
        return int(float(override) * MIB)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // FREE_MEMORY_SHARE
    except (AttributeError, ValueError, OSError):
        return FALLBACK_CACHE_MEMORY


def training_cache_side(image_size: int) -> int:
    """The largest side a training photo needs: a crop of at least ``CROP_SCALE[0]`` of it is
    resized to ``image_size``, so more than ``image_size / 0.75`` pixels is never used."""
    return math.ceil(image_size / CROP_SCALE[0])


SAMPLE_CHANNELS = 4
"""A cached sample's channels: the photo's red, green and blue, then the class ids."""

_WHERE_DIGITS, _STAMP_DIGITS = 24, 12
"""Hex digits of a cache file's name that tell its sample (96 bits: no two samples collide)
and that sample's version (48 bits: an edit is never taken for the last one)."""


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

    def __init__(
        self,
        dataset: Dataset,
        max_side: int,
        *,
        memory_budget: int | None = None,
        folder: str | os.PathLike | None = None,
    ):
        self.dataset, self.max_side = dataset, max_side
        split = cihp.split_folder(dataset.root, dataset.split)
        self.paths = [
            (
                cihp.find_image(dataset.root, sample_id, dataset.split),
                split / "Category_ids" / f"{sample_id}.png",
            )
            for sample_id in dataset.ids
        ]
        self.shapes = []
        for photo, _ in self.paths:
            width, height = photos.photo_size(photo)
            self.shapes.append((min(height, max_side), min(width, max_side)))
        needed = sum(height * width * SAMPLE_CHANNELS for height, width in self.shapes)
        budget = cache_memory_budget() if memory_budget is None else memory_budget
        self.in_memory = needed <= budget
        self.folder: Path | None = None
        if not self.in_memory:
            from ..model import cache_dir

            self.folder = Path(folder) if folder is not None else cache_dir() / "training-samples"
            self.folder.mkdir(parents=True, exist_ok=True)
            files.remove_stale_temporaries(self.folder)  # of a run that was killed while writing
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
            raise SampleProblems(
                problems, str(cihp.split_folder(self.dataset.root, self.dataset.split))
            )

    def _problem(self, index: int) -> str | None:
        try:
            self[index]
        except (ValueError, OSError) as error:  # photos.PhotoError, PhotoTooLargeError
            return sample_problem_line(self.dataset, self.dataset.ids[index], str(error))
        return None

    def _decode(self, index: int) -> np.ndarray:
        sample = cihp.read_sample(self.dataset.root, self.dataset.ids[index], self.dataset.split)
        photo = sample.image  # H x W x 3 uint8: photos.read_photo
        # check_samples found each mask: one removed since fails just below, as before
        labels: np.ndarray = sample.category_ids  # type: ignore[assignment]
        shape = self.shapes[index]
        if photo.shape[:2] != shape:
            photo = np.round(resize_photo(photo, shape)).astype(np.uint8)
            labels = resize_labels(labels, shape)
        return np.concatenate([photo, labels.astype(np.uint8)[..., None]], axis=-1)

    def _from_disk(self, index: int) -> np.ndarray:
        assert self.folder is not None  # set whenever the samples are not kept in memory
        photo, mask = self.paths[index]
        where = hashlib.sha256(f"{photo.resolve()}\n{mask.resolve()}\n{self.max_side}".encode())
        stamp = hashlib.sha256(
            str([(p.stat().st_size, p.stat().st_mtime_ns) for p in (photo, mask)]).encode()
        )
        prefix = where.hexdigest()[:_WHERE_DIGITS]
        path = self.folder / f"{prefix}-{stamp.hexdigest()[:_STAMP_DIGITS]}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # not cached yet, or a damaged file: decode again
            pass
        array = self._decode(index)
        files.write_file_atomically(path, lambda staged: np.save(staged, array, allow_pickle=False))
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

    def __init__(
        self,
        cache: SampleCache,
        size: int,
        batch_size: int,
        pool: ThreadPoolExecutor,
        *,
        seed: int = 0,
        prefetch: int = 2,
        shard: tuple[int, int] = (0, 1),
    ):
        if batch_size % shard[1]:
            raise ValueError(f"a batch of {batch_size} cannot be split over {shard[1]} processes")
        self.cache, self.size, self.batch_size, self.pool = cache, size, batch_size, pool
        self.seed, self.prefetch, self.shard = seed, max(1, prefetch), shard
        self.steps_per_epoch = max(1, len(cache) // batch_size)
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def sample_indices(self, epoch: int, step: int) -> np.ndarray:
        """The indices of the samples of this process's part of batch ``step`` of ``epoch``."""
        if self._order[0] != epoch:
            self._order = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(len(self.cache)),
            )
        order = self._order[1]
        assert order is not None  # set with the epoch just above
        batch = np.resize(order, max(self.batch_size, len(order)))  # repeats if too few samples
        part = self.batch_size // self.shard[1]
        first = step * self.batch_size + self.shard[0] * part
        return batch[first : first + part]

    def batches(self, first_epoch: int = 1) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
        """The batches of epoch ``first_epoch``, then of the epochs after it, without end;
        close the generator to stop the threads' work ahead."""
        pending: deque = deque()
        planned = (
            (epoch, step)
            for epoch in itertools.count(first_epoch)
            for step in range(self.steps_per_epoch)
        )
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
            x[slot], y[slot] = augment(
                sample[..., :3],
                sample[..., 3],
                self.size,
                np.random.default_rng([self.seed, epoch, int(index)]),
            )

        return (
            x,
            y,
            [self.pool.submit(fill, slot, int(index)) for slot, index in enumerate(indices)],
        )


class NoLabelledPixels(cihp.DatasetError):
    """Every mask pixel of a dataset is 255 (ignore): there is nothing to score or learn."""

    def __init__(self, dataset: Dataset):
        super().__init__(
            f"no labelled pixels in {cihp.split_folder(dataset.root, dataset.split)}: "
            f"every mask pixel of its {len(dataset.ids)} samples is {IGNORE_CLASS} "
            "(ignore); label some pixels (0..19) first"
        )


def require_labelled_pixels(cache: SampleCache) -> None:
    """Raise :class:`NoLabelledPixels` when every mask pixel of ``cache`` is 255."""
    if not any((cache[i][..., 3] != IGNORE_CLASS).any() for i in range(len(cache))):
        raise NoLabelledPixels(cache.dataset)
