"""Label-editing operations for correcting a pre-label: pure functions, numpy in, numpy out.

Each takes ``labels`` (H x W integer array of CIHP class ids) and returns a new array of the
same shape and dtype; ``mask`` (H x W bool, optional) limits the pixels that may change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import cg
from skimage import measure, segmentation

from .cihp import LEFT_RIGHT_SWAP, NUM_CLASSES

_FOUR_NEIGHBOURS = (
    (slice(None, -1), slice(None)),
    (slice(1, None), slice(None)),
    (slice(None), slice(None, -1)),
    (slice(None), slice(1, None)),
)


def _limit(labels: np.ndarray, changed: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``changed`` where ``mask`` allows it, ``labels`` elsewhere."""
    if mask is None:
        return changed.astype(labels.dtype, copy=False)
    return np.where(mask, changed, labels).astype(labels.dtype, copy=False)


def _check(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H x W, got shape {labels.shape}")
    if mask is not None and np.shape(mask) != labels.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from labels shape {labels.shape}")
    return labels


def _fill_from_surroundings(
    labels: np.ndarray, regions: np.ndarray, to_fill: np.ndarray
) -> np.ndarray:
    """Give each region with ``to_fill[region]`` the class that borders it most.

    ``regions``: H x W region ids (0..R-1); ``to_fill``: R bools. A region bordered only by
    other regions to fill takes its class once those have one (a few passes), else keeps its own.
    """
    out = labels.copy()
    pending = to_fill.copy()
    num_regions = len(to_fill)
    for _ in range(8):
        if not pending.any():
            break
        votes = np.zeros((num_regions, NUM_CLASSES), np.int64)
        for near, far in (
            (_FOUR_NEIGHBOURS[0], _FOUR_NEIGHBOURS[1]),
            (_FOUR_NEIGHBOURS[1], _FOUR_NEIGHBOURS[0]),
            (_FOUR_NEIGHBOURS[2], _FOUR_NEIGHBOURS[3]),
            (_FOUR_NEIGHBOURS[3], _FOUR_NEIGHBOURS[2]),
        ):
            source, neighbour = regions[near], regions[far]
            voting = pending[source] & ~pending[neighbour]
            np.add.at(votes, (source[voting], out[far][voting]), 1)
        decided = pending & (votes.sum(axis=1) > 0)
        if not decided.any():
            break
        winner = votes.argmax(axis=1)
        take = decided[regions]
        out[take] = winner[regions[take]]
        pending &= ~decided
    return out


def person_area(labels: np.ndarray) -> int:
    """The number of non-background pixels of ``labels`` (H x W ints): the size of the people in
    the photo, which sizes relative to the person are fractions of (at least 1)."""
    return max(int(np.count_nonzero(np.asarray(labels))), 1)


def _size(labels: np.ndarray, pixels, fraction, name: str):
    """A size in pixels: ``fraction`` of the person's area when given, else ``pixels``."""
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"{name} is a fraction of the person's area (0..1), got {fraction}")
        return fraction * person_area(labels)
    return pixels


def _regions(labels: np.ndarray):
    """(H x W region ids 0..R-1: connected pieces of one class, 4-connectivity; R sizes; R
    classes; R bools: the largest piece of its class)."""
    regions = measure.label(labels, background=-1, connectivity=1) - 1
    num_regions = int(regions.max()) + 1
    sizes = np.bincount(regions.ravel(), minlength=num_regions)
    region_class = np.zeros(num_regions, np.int64)
    region_class[regions.ravel()] = labels.ravel()
    order = np.lexsort((-sizes, region_class))  # by class, the largest first
    first = np.ones(num_regions, bool)
    first[1:] = region_class[order][1:] != region_class[order][:-1]
    largest = np.zeros(num_regions, bool)
    largest[order[first]] = True
    return regions, sizes, region_class, largest


def _smallest_neighbour(regions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """R values: the smallest of ``sizes`` (R values) over the regions each region touches
    (4-connectivity)."""
    smallest = np.full(len(sizes), np.iinfo(np.int64).max, np.int64)
    for near, far in (
        (_FOUR_NEIGHBOURS[0], _FOUR_NEIGHBOURS[1]),
        (_FOUR_NEIGHBOURS[2], _FOUR_NEIGHBOURS[3]),
    ):
        a, b = regions[near], regions[far]
        differ = a != b
        a, b = a[differ], b[differ]
        np.minimum.at(smallest, a, sizes[b])
        np.minimum.at(smallest, b, sizes[a])
    return smallest


def _protected_parts(labels, regions, sizes, region_class, largest, part_fraction):
    """Regions that are a person class's largest piece and at least ``part_fraction`` of the
    person or 1/20 of the smallest region they touch that is not under that fraction
    (sunglasses in a small face; not a speck beside another speck)."""
    parts = largest & (region_class > 0)
    if part_fraction is None or not parts.any():
        return parts
    floor = part_fraction * person_area(labels)
    big = np.where(sizes >= floor, sizes, np.iinfo(np.int64).max)  # specks are no neighbours
    return parts & ((sizes >= floor) | (20 * sizes >= _smallest_neighbour(regions, big)))


def remove_small_regions(
    labels: np.ndarray,
    min_size: int | None = 40,
    mask: np.ndarray | None = None,
    *,
    min_fraction: float | None = None,
    part_fraction: float | None = 0.001,
) -> np.ndarray:
    """Connected pieces of one class (4-connectivity) smaller than the size take the class that
    surrounds them most.

    ``labels``: H x W integer class ids; ``mask``: H x W bool, the pixels that may change.
    The size is ``min_size`` pixels, or, when ``min_fraction`` is given, that fraction of the
    person's area (:func:`person_area`: the non-background pixels), so the same setting fits a
    person close up and one three times smaller. Returns an array like ``labels``.

    Never removed: the largest piece of each person class (the only piece of a class is its
    largest), so a small true part (a shoe, sunglasses, an arm of a small person) survives any
    size. The exception is a largest piece under ``part_fraction`` of the person's area
    (1/1000) and under 1/20 of the smallest region it touches (of those over 1/1000): no body
    part is that small beside its neighbours (sunglasses are a tenth of a face), but a speck
    of a class that the model put where there is none is (None: no exception).
    """
    labels = _check(labels, mask)
    size = _size(labels, min_size, min_fraction, "min_fraction")
    if size is None:
        raise ValueError("give min_size or min_fraction")
    regions, sizes, region_class, largest = _regions(labels)
    small = (sizes < size) & ~_protected_parts(
        labels, regions, sizes, region_class, largest, part_fraction
    )
    return _limit(labels, _fill_from_surroundings(labels, regions, small), mask)


_GAP_ELONGATION = 3.0
"""Background that clothing encloses is a gap (kept), not a hole, from this length-to-width
ratio."""
_GAP_CLASSES = (5, 6, 7, 9, 12)
"""Upper-clothes, dress, coat, pants, skirt: the classes that wrap around the slits between
legs and between an arm and the body (cihp/labels.py)."""


def _inside_its_counterpart(touching: np.ndarray, region_class: np.ndarray) -> np.ndarray:
    """R bools: the region is of a left or right class and touches only its counterpart
    (``touching``: R x C bools, the classes each region touches)."""
    known = region_class < len(LEFT_RIGHT_SWAP)
    counterpart = LEFT_RIGHT_SWAP[np.where(known, region_class, 0)]
    sided = known & (counterpart != region_class)
    rows = np.arange(len(region_class))
    return sided & touching[rows, counterpart] & (touching.sum(axis=1) == 1)


def _elongation(regions: np.ndarray, num_regions: int) -> np.ndarray:
    """R values: each region's length over its width, the square root of the ratio of its
    pixel coordinates' principal variances (1 for a square or a disc, at least 1)."""
    ys, xs = np.indices(regions.shape, dtype=np.float64)
    flat = regions.ravel()
    count = np.bincount(flat, minlength=num_regions).astype(np.float64)

    def mean(values):
        return np.bincount(flat, values.ravel(), minlength=num_regions) / count

    my, mx = mean(ys), mean(xs)
    vyy = mean(ys * ys) - my * my + 1 / 12  # a pixel is a unit square, not a point
    vxx = mean(xs * xs) - mx * mx + 1 / 12
    vxy = mean(ys * xs) - my * mx
    spread = np.sqrt(np.maximum(((vyy - vxx) / 2) ** 2 + vxy * vxy, 0))
    major, minor = (vyy + vxx) / 2 + spread, np.maximum((vyy + vxx) / 2 - spread, 1e-12)
    return np.sqrt(major / minor)


def fill_holes(
    labels: np.ndarray,
    max_size: int | None = None,
    mask: np.ndarray | None = None,
    *,
    max_fraction: float | None = None,
    part_fraction: float | None = 0.001,
    gap_fraction: float = 0.002,
) -> np.ndarray:
    """Holes up to the size take the class around them.

    ``labels``: H x W integer class ids; ``mask``: H x W bool, the pixels that may change.
    The size is ``max_size`` pixels (any size when None), or, when ``max_fraction`` is given,
    that fraction of the person's area (:func:`person_area`). Returns an array like ``labels``.

    The rule: a hole is a connected piece (4-connectivity) that does not reach the image border
    and is one of

    - a piece of a person class that one other class encloses (a speck of face inside a coat),
      unless it is the largest piece of its class and at least ``part_fraction`` of the person
      or 1/20 of the smallest region over that it touches (sunglasses inside a face, a glove
      inside a sleeve: a true part is where its class is; a speck is a stray copy of a class
      that is elsewhere, or of none);
    - background that one class encloses (a hole in a coat);
    - background enclosed by several classes and smaller than ``gap_fraction`` of the person
      (a hole on the boundary between two parts; 1/500 of the person).

    Not holes: background seen between an arm and the body, between the legs (it reaches the
    border or is bounded by several parts and larger than a hole), a piece that touches
    several other classes (a glove at the end of an arm touches the arm and the background),
    a piece of a left or right class that its counterpart encloses (a piece of the left arm
    seen through the right arm: which side is which is for :func:`swap_left_right`), and
    background that one piece of clothing encloses but that is at least ``_GAP_ELONGATION``
    times longer than wide (the slit between two trouser legs, a sleeve held against a coat;
    a model's holes in clothes are blobs). Other gaps that one class alone encloses look like
    holes and are filled up to the size: ``max_fraction`` keeps that size in step with the
    person.
    The reason: a model leaves holes as small blobs inside one part; the true small parts and
    gaps that one or several classes enclose are either the one place of their class or
    bounded by several parts, and removing them costs more than leaving a hole.
    """
    labels = _check(labels, mask)
    max_size = _size(labels, max_size, max_fraction, "max_fraction")
    regions, sizes, region_class, largest = _regions(labels)
    num_regions = len(sizes)
    border = np.zeros(num_regions, bool)
    border[np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])] = True
    touching = np.zeros((num_regions, max(NUM_CLASSES, int(labels.max()) + 1)), bool)
    for near, far in (
        (_FOUR_NEIGHBOURS[0], _FOUR_NEIGHBOURS[1]),
        (_FOUR_NEIGHBOURS[2], _FOUR_NEIGHBOURS[3]),
    ):
        a, b = regions[near], regions[far]
        differ = a != b
        touching[a[differ], labels[far][differ]] = True
        touching[b[differ], labels[near][differ]] = True
    enclosed_by_one = touching.sum(axis=1) == 1
    person = region_class > 0
    part = _protected_parts(labels, regions, sizes, region_class, largest, part_fraction)
    part |= _inside_its_counterpart(touching, region_class)
    gap = (
        (region_class == 0)
        & np.isin(touching.argmax(axis=1), _GAP_CLASSES)
        & (_elongation(regions, num_regions) >= _GAP_ELONGATION)
    )
    holes = ~border & np.where(
        person,
        enclosed_by_one & ~part,
        ~touching[:, 0] & ~gap & (enclosed_by_one | (sizes < gap_fraction * person_area(labels))),
    )
    if max_size is not None:
        holes &= sizes <= max_size
    return _limit(labels, _fill_from_surroundings(labels, regions, holes), mask)


_THICK_EXTRA = 2
"""A piece may be smoothed if it holds a (4 radius + 2 this - 1)-square of its class."""
_SPECK = 0.5
"""... or if it is smaller than this share of the window (a speck)."""
_MAJORITY = 0.55
"""A pixel takes the window's majority class only if that class fills this share of it."""


def _window_offsets(radius: int):
    span = range(-radius, radius + 1)
    offsets = [(dy, dx) for dy in span for dx in span]
    index = {offset: i for i, offset in enumerate(offsets)}
    shapes = []  # the shapes a part keeps: (radius+1)-squares and centred lines holding the pixel
    for y0 in range(-radius, 1):
        for x0 in range(-radius, 1):
            shapes.append(
                [index[(y0 + dy, x0 + dx)] for dy in range(radius + 1) for dx in range(radius + 1)]
            )
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shapes.append([index[(k * dy, k * dx)] for k in span])
    return offsets, shapes


def smooth(
    labels: np.ndarray, radius: int = 1, mask: np.ndarray | None = None, keep_fraction: float = 0.5
) -> np.ndarray:
    """Majority filter over a (2 ``radius`` + 1)-pixel square that removes jagged edges and speckle,
    keeping thin parts, corners and the parts of small people.

    ``labels``: H x W integer class ids; ``mask``: H x W bool, the pixels that may change.
    Returns an array like ``labels``. A pixel takes the window's majority class only if

    - its own class fills less than ``keep_fraction`` of the window and the majority class
      more than half of it;
    - it lies neither in a (``radius`` + 1)-square of its class (a corner, a part that wide)
      nor in the middle of a straight line of its class across the window (horizontal,
      vertical or diagonal: an arm or a strap one pixel wide);
    - its piece (connected, one class) is a speck (under half the window) or is thick enough
      to have a jagged edge: it holds a (4 ``radius`` + 3)-square of its class. The thin parts
      of a small person (under 7 pixels wide at radius 1) are never eroded.

    What changes are stray pixels, spurs and notches on the edges of large parts.
    """
    labels = _check(labels, mask)
    radius = max(int(radius), 1)
    size = 2 * radius + 1
    # the pixels whose window holds more than one class: the only ones that can change
    values = labels if labels.dtype.itemsize <= 2 else labels.astype(np.int32)
    mixed = ndi.maximum_filter(values, size=size, mode="nearest") != ndi.minimum_filter(
        values, size=size, mode="nearest"
    )
    if mask is not None:
        mixed &= np.asarray(mask, bool)
    # the pieces that may change: specks, and pieces thick enough to have a jagged edge
    wide = 4 * radius + 2 * _THICK_EXTRA - 1
    interior = ndi.maximum_filter(values, size=wide, mode="nearest") == ndi.minimum_filter(
        values, size=wide, mode="nearest"
    )
    regions = measure.label(labels, background=-1, connectivity=1)
    may = np.bincount(regions[interior], minlength=regions.max() + 1) > 0
    may |= np.bincount(regions.ravel()) < _SPECK * size * size
    mixed &= may[regions]
    rows, cols = np.nonzero(mixed)
    changed = labels.copy()
    if len(rows) == 0:
        return changed
    padded = np.pad(labels, radius, mode="edge").astype(np.int32, copy=False)
    offsets, shapes = _window_offsets(radius)
    num_classes = max(NUM_CLASSES, int(labels.max()) + 1)
    chunk = max(1, 4_000_000 // len(offsets))
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk] + radius, cols[start : start + chunk] + radius
        window = np.stack([padded[r + dy, c + dx] for dy, dx in offsets], axis=1)
        own = window[:, len(offsets) // 2]
        same = window == own[:, None]
        weak = same.sum(axis=1) < keep_fraction * len(offsets)
        if not weak.any():
            continue
        same, window, own = same[weak], window[weak], own[weak]
        kept = np.zeros(len(own), bool)
        for shape in shapes:
            kept |= same[:, shape].all(axis=1)
        change = ~kept
        if not change.any():
            continue
        window, own = window[change], own[change]
        counts = np.bincount(
            (np.arange(len(own))[:, None] * num_classes + window).ravel(),
            minlength=len(own) * num_classes,
        ).reshape(len(own), num_classes)
        clear = counts.max(axis=1) >= _MAJORITY * len(offsets)
        where = np.flatnonzero(weak)[change][clear]
        at = (rows[start : start + chunk][where], cols[start : start + chunk][where])
        changed[at] = counts.argmax(axis=1)[clear]
    return changed


def swap_left_right(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Swap the left and right classes (arms, legs, shoes), the model's most common confusion.

    ``labels``: H x W integer class ids; ``mask``: H x W bools, where to swap (None:
    everywhere). Returns H x W of ``labels``' dtype; values outside the swap table (a napari
    layer's ids beyond 255) are kept."""
    labels = _check(labels, mask)
    if labels.dtype == np.uint8:
        swapped = LEFT_RIGHT_SWAP[labels]
    else:
        inside = (labels >= 0) & (labels < len(LEFT_RIGHT_SWAP))
        swapped = np.where(inside, LEFT_RIGHT_SWAP[np.where(inside, labels, 0)], labels)
    return _limit(labels, swapped, mask)


def relabel(
    labels: np.ndarray, source: int, target: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """Class ``source`` becomes class ``target``."""
    labels = _check(labels, mask)
    return _limit(labels, np.where(labels == source, target, labels), mask)


def _random_walk(photo: np.ndarray, seeds: np.ndarray, beta: float) -> np.ndarray:
    """scikit-image's random walker on ``photo`` (H x W [x C]); ``seeds`` holds class id + 1
    (0: to decide). Returns class ids (seeds passed as consecutive markers and mapped back)."""
    classes = np.unique(seeds[seeds > 0])
    if len(classes) == 1:
        return np.full(seeds.shape, classes[0] - 1, np.int32)
    markers = np.where(seeds > 0, np.searchsorted(classes, seeds) + 1, 0)
    return classes[_walk_markers(photo, markers, beta) - 1] - 1


def _walk_markers(photo: np.ndarray, markers: np.ndarray, beta: float) -> np.ndarray:
    """scikit-image's random walker (mode ``cg_j``, tolerance 1e-3) on ``photo`` (H x W [x C],
    its first 3 channels) scaled to [0, 1], from ``markers`` as it takes them (1..N seeded,
    0 to decide, negative outside the walk)."""
    from skimage.segmentation import random_walker

    photo = np.asarray(photo, np.float32)
    if photo.ndim == 3:
        photo = photo[..., :3]
    photo = photo / max(float(photo.max()), 1e-6)
    with warnings.catch_warnings():  # sharp edges (high beta) leave probabilities a hair off [0, 1]
        warnings.filterwarnings("ignore", "The probability range is outside", UserWarning)
        return random_walker(
            photo,
            markers,
            beta=beta,
            mode="cg_j",
            tol=1e-3,
            channel_axis=-1 if photo.ndim == 3 else None,
        )


def _band_walk(
    photo: np.ndarray,
    seeds: np.ndarray,
    beta: float,
    tol: float = 1e-3,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The random walker of :func:`_random_walk` (scikit-image's, mode ``cg_j``: the same
    edge weights, the same Jacobi-preconditioned conjugate gradient and tolerance per class)
    with the linear system built for the pixels to decide only, not for every pixel of the
    photo: a band a few pixels wide around the boundaries is a small share of a photo, and
    building the whole photo's graph was most of the time (:func:`_class_cg` solves the
    classes). ``progress(done, total)`` is called as classes are solved.
    """
    classes = np.unique(seeds[seeds > 0])
    if len(classes) == 1:
        return np.full(seeds.shape, classes[0] - 1, np.int32)
    photo = np.asarray(photo, np.float32)
    photo = photo[..., :3] if photo.ndim == 3 else photo[..., None]
    photo = photo / max(float(photo.max()), 1e-6)
    # scikit-image: exp(-beta / (10 std) / sqrt(channels) * squared gradient summed over channels)
    scale = -beta / (10 * float(photo.std()))
    if photo.shape[-1] > 1:
        scale /= np.sqrt(photo.shape[-1])
    unknown = seeds == 0
    count = int(unknown.sum())
    index = np.full(seeds.shape, -1, np.int64)
    index[unknown] = np.arange(count)
    rows, cols, values, diagonal = [], [], [], np.zeros(count)
    seeded_rows, seeded_class, seeded_weight = [], [], []
    for first, second in (
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ):
        involved = unknown[first] | unknown[second]
        squared = ((photo[first][involved] - photo[second][involved]) ** 2).sum(axis=-1)
        weight = np.exp(scale * squared) + 1e-10
        a, b = index[first][involved], index[second][involved]
        both = (a >= 0) & (b >= 0)
        rows += [a[both], b[both]]
        cols += [b[both], a[both]]
        values += [-weight[both], -weight[both]]
        np.add.at(diagonal, a[a >= 0], weight[a >= 0])
        np.add.at(diagonal, b[b >= 0], weight[b >= 0])
        for this, other, other_seed in (
            (a, b, seeds[second][involved]),
            (b, a, seeds[first][involved]),
        ):
            edge = (this >= 0) & (other < 0)
            seeded_rows.append(this[edge])
            seeded_class.append(np.searchsorted(classes, other_seed[edge]))
            seeded_weight.append(weight[edge])
    everything = np.arange(count)
    laplacian = sparse.csr_array(
        (
            np.concatenate([*values, diagonal]),
            (np.concatenate([*rows, everything]), np.concatenate([*cols, everything])),
        ),
        shape=(count, count),
    )
    right = sparse.csc_array(
        (
            np.concatenate(seeded_weight),
            (np.concatenate(seeded_rows), np.concatenate(seeded_class)),
        ),
        shape=(count, len(classes)),
    )
    probability = _class_cg(laplacian, right.toarray(), diagonal, tol, progress)
    out = seeds.astype(np.int32) - 1
    out[unknown] = classes[np.argmax(probability, axis=0)] - 1
    return out


def _distance_below(boundary: np.ndarray, band: int) -> np.ndarray:
    """The Euclidean distance of each pixel to the nearest ``boundary`` pixel where it is
    under ``band``, else ``band``: exactly ``min(distance_transform_edt(~boundary), band)``,
    from the few offsets closer than ``band`` rather than a transform of the whole photo."""
    distance = np.full(boundary.shape, float(band))
    height, width = boundary.shape
    offsets = sorted(
        (dy * dy + dx * dx, dy, dx)
        for dy in range(-band, band + 1)
        for dx in range(-band, band + 1)
        if dy * dy + dx * dx < band * band
    )
    for squared, dy, dx in reversed(offsets):  # nearest last: it wins
        target = (slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0)))
        source = (slice(max(-dy, 0), height + min(-dy, 0)), slice(max(-dx, 0), width + min(-dx, 0)))
        distance[target][boundary[source]] = np.sqrt(squared)
    return distance


def _class_cg(
    matrix,
    right: np.ndarray,
    diagonal: np.ndarray,
    tol: float,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``matrix @ x = right[:, k]`` for every column k, by ``scipy.sparse.linalg.cg`` with the
    Jacobi preconditioner, one column after another, as scikit-image's ``cg_j`` mode solves
    them (one column's vectors stay in the CPU's cache: faster than all columns at once).
    Returns the solutions as rows (classes x pixels); ``progress(done, total)`` after each."""
    count, columns = right.shape
    jacobi = sparse.dia_array((1.0 / diagonal, 0), shape=(count, count))
    solution = np.zeros((columns, count))
    for k in range(columns):
        if right[:, k].any():
            solution[k], _ = cg(matrix, right[:, k], rtol=tol, atol=0, M=jacobi)
        if progress is not None:
            progress(k + 1, columns)
    return solution


def snap_to_image(
    labels: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    band: int = 3,
    beta: float = 3000.0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Move label boundaries onto the image's own edges, keeping each region's class.

    Pixels within ``band`` pixels of a label boundary are labelled again by a random walker
    on the image (scikit-image's, solved for the band's pixels only: :func:`_band_walk`),
    seeded by the rest of each region; a region thinner than the band keeps its core as
    seeds, so small true parts are not swallowed. ``image``: H x W x 3 (or H x W) photo, any
    dtype. ``progress(done, total)`` is called as the classes are solved (it may raise to stop).
    """
    labels = _check(labels, mask)
    image = np.asarray(image)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image shape {image.shape[:2]} differs from labels shape {labels.shape}")
    boundary = segmentation.find_boundaries(labels, mode="inner")
    if not boundary.any():
        return labels.copy()
    distance = _distance_below(boundary, band)
    regions = measure.label(labels, background=-1, connectivity=1)
    seeded = distance >= band
    # a region thinner than the band keeps its core (its pixels farthest from the boundary)
    thick = np.zeros(regions.max() + 1, bool)
    thick[regions[seeded]] = True
    thin = ~thick[regions]
    if thin.any():
        thin_regions, thin_distance = regions[thin], distance[thin]
        thickest = np.zeros(regions.max() + 1)
        np.maximum.at(thickest, thin_regions, thin_distance)
        seeded[thin] = thin_distance >= thickest[thin_regions]
    if mask is not None:
        seeded |= ~np.asarray(mask, bool)
    if seeded.all():
        return labels.copy()
    rows, cols = np.nonzero(~seeded)
    box = (
        slice(max(rows.min() - 1, 0), rows.max() + 2),
        slice(max(cols.min() - 1, 0), cols.max() + 2),
    )
    seeds = np.where(seeded[box], labels[box].astype(np.int32) + 1, 0)
    walked = _band_walk(image[box], seeds, beta, progress=progress)
    changed = labels.copy()
    changed[box] = walked
    return _limit(labels, changed, mask)


def _crossed_regions(
    regions: np.ndarray, region_class: np.ndarray, scribbles: np.ndarray, crossing: float
) -> tuple[np.ndarray, list]:
    """(R x classes bools: the regions each stroke class crosses, see refine_with_scribbles;
    the strokes drawn on the background instead)."""
    from skimage.morphology import skeletonize

    num_regions = len(region_class)
    crossed = np.zeros((num_regions, max(NUM_CLASSES, int(scribbles.max()) + 1)), bool)
    grow = []  # (background region, class, stroke box, stroke) of strokes drawn on background
    strokes, count = ndi.label(scribbles > 0, structure=np.ones((3, 3)))
    boxes = ndi.find_objects(strokes)
    diameters = {}
    for number, box in enumerate(boxes, start=1):
        stroke = strokes[box] == number
        values = scribbles[box][stroke]
        for value in np.unique(values):  # each class of a stroke on its own
            drawn = stroke & (scribbles[box] == value)
            under = regions[box][drawn]
            pixels = np.bincount(under, minlength=num_regions)
            line = skeletonize(drawn)
            length = np.bincount(regions[box][line], minlength=num_regions)
            touched = np.flatnonzero(pixels)
            main = touched[np.argmax(pixels[touched])]
            through = []
            for region in touched:
                if region_class[region] in (value, 0):  # the background is never taken whole
                    continue
                if region not in diameters:
                    diameters[region] = _diameter(regions, region)
                if length[region] > crossing * diameters[region]:
                    through.append(region)
            if not through and region_class[main] not in (value, 0):
                through = [main]  # a short stroke inside one region
            crossed[through, value] = True
            if not through and region_class[main] == 0:
                grow.append((main, value, box, drawn))
    return crossed, grow


def _diameter(regions: np.ndarray, region: int | np.integer) -> float:
    """The diameter of the largest disc inside one region (the image border bounds it)."""
    rows, cols = np.nonzero(regions == region)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    inside = np.pad(regions[box] == region, 1)
    return 2.0 * float(ndi.distance_transform_edt(inside).max())


def refine_with_scribbles(
    labels: np.ndarray,
    image: np.ndarray,
    scribbles: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    crossing: float = 0.5,
    beta: float = 3000.0,
    margin: int = 6,
) -> np.ndarray:
    """The regions the annotator's strokes cross take the strokes' class, whole.

    ``labels``: H x W integer class ids; ``image``: H x W x 3 (or H x W) photo, any dtype;
    ``scribbles``: H x W ints, 0 where nothing is drawn, else the class id of the stroke;
    ``mask``: H x W bool, the pixels that may change (the selection, the clicked region).
    Returns an array like ``labels``.

    A region is a connected piece of one class (4-connectivity). A stroke (8-connected pixels
    of one class) crosses a region of another class when the stroke runs inside it for more
    than ``crossing`` times its thickness (the diameter of the largest disc inside it: through
    it, or deep into it), or, for a stroke that crosses none, when it is the region that holds
    most of the stroke (a short stroke inside a large region). A stroke's
    end that spills over onto a neighbour does not count, nor a short stretch across a wide
    region (the background between two pieces), so a stroke through several pieces of the
    wrong class fixes each piece it crosses and nothing between them.

    - A region crossed by strokes of one class takes that class entirely: its outline stays
      where it was, the boundary with the classes around it (which follows the photo as the
      model saw it); where a neighbour already has that class the two merge.
    - A region crossed by strokes of several classes is split between them inside its
      outline by a random walker on the photo (scikit-image), seeded by the strokes, so the
      new boundary follows the image.
    - The background is never taken whole: a stroke drawn on it (a part the model missed)
      gives its class to the background within ``margin`` pixels of it, as far as the photo's
      edges let a random walker take it.
    - Nothing else changes: not the regions a stroke only touches, not the pixels outside the
      crossed regions (and the band around a stroke on the background), not those outside
      ``mask``. Strokes of different classes on different regions all take effect.
    """
    labels = _check(labels, mask)
    scribbles = np.asarray(scribbles)
    if scribbles.shape != labels.shape:
        raise ValueError(
            f"scribbles shape {scribbles.shape} differs from labels shape {labels.shape}"
        )
    if not (scribbles > 0).any():
        return labels.copy()
    regions, _, region_class, _ = _regions(labels)
    crossed, grow = _crossed_regions(regions, region_class, scribbles, crossing)
    count = crossed.sum(axis=1)
    out = labels.copy()
    single = count == 1
    take = single[regions]
    out[take] = crossed.argmax(axis=1)[regions[take]]
    for region in np.flatnonzero(count > 1):
        inside = regions == region
        rows, cols = np.nonzero(inside)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        here = inside[box]
        allowed = crossed[region][scribbles[box]] & (scribbles[box] > 0) & here
        seeds = np.where(allowed, scribbles[box].astype(np.int32) + 1, 0)
        seeds[~here] = -1  # outside the region: not part of the walk
        walked = _random_walk_inside(np.asarray(image)[box], seeds, beta)
        out[box][here] = walked[here]
    margin = int(margin)
    for region, value, box, drawn in grow:  # a part the model missed: grown from the stroke
        grown = tuple(slice(max(b.start - margin, 0), b.stop + margin) for b in box)
        stroke = np.zeros(labels[grown].shape, bool)
        inner = tuple(
            slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown, strict=True)
        )
        stroke[inner] = drawn
        here = regions[grown] == region
        near = ndi.binary_dilation(stroke, iterations=margin) & here & ~stroke
        seeds = np.where(stroke, value + 1, np.where(near, 0, labels[grown].astype(np.int32) + 1))
        walked = _random_walk(np.asarray(image)[grown], seeds, beta)
        out[grown][near | (stroke & here)] = walked[near | (stroke & here)]
    return _limit(labels, out, mask)


def _random_walk_inside(photo: np.ndarray, seeds: np.ndarray, beta: float) -> np.ndarray:
    """Random walker where ``seeds`` is -1 outside the region, 0 to decide, class + 1 seeded."""
    classes = np.unique(seeds[seeds > 0])
    if len(classes) == 1:
        return np.full(seeds.shape, classes[0] - 1, np.int32)
    markers = np.where(seeds > 0, np.searchsorted(classes, seeds) + 1, np.minimum(seeds, 0))
    walked = _walk_markers(photo, markers, beta)
    return np.where(walked > 0, classes[np.maximum(walked, 1) - 1] - 1, 0)
