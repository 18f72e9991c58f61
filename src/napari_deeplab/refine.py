"""Label-editing operations for correcting a pre-label: pure functions, numpy in, numpy out.

Each takes ``labels`` (H x W integer array of CIHP class ids) and returns a new array of the
same shape and dtype; ``mask`` (H x W bool, optional) limits the pixels that may change.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation

from .cihp import LEFT_RIGHT_PAIRS, NUM_CLASSES

_FOUR_NEIGHBOURS = ((slice(None, -1), slice(None)), (slice(1, None), slice(None)),
                    (slice(None), slice(None, -1)), (slice(None), slice(1, None)))


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


def _fill_from_surroundings(labels: np.ndarray, regions: np.ndarray, to_fill: np.ndarray) -> np.ndarray:
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
        for near, far in ((_FOUR_NEIGHBOURS[0], _FOUR_NEIGHBOURS[1]),
                          (_FOUR_NEIGHBOURS[1], _FOUR_NEIGHBOURS[0]),
                          (_FOUR_NEIGHBOURS[2], _FOUR_NEIGHBOURS[3]),
                          (_FOUR_NEIGHBOURS[3], _FOUR_NEIGHBOURS[2])):
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


def remove_small_regions(labels: np.ndarray, min_size: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Connected pieces of one class smaller than ``min_size`` pixels take the class that
    surrounds them most (4-connectivity). Returns an array like ``labels``."""
    labels = _check(labels, mask)
    regions = measure.label(labels, background=-1, connectivity=1) - 1  # every pixel in a region
    sizes = np.bincount(regions.ravel())
    return _limit(labels, _fill_from_surroundings(labels, regions, sizes < min_size), mask)


def fill_holes(labels: np.ndarray, max_size: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Holes up to ``max_size`` pixels (any size when None) take the class around them.

    A hole is a connected piece enclosed by one class (a speck of face inside a coat), or a
    piece of background enclosed by the person (a gap between body parts that does not reach
    the image border).
    """
    labels = _check(labels, mask)
    regions = measure.label(labels, background=-1, connectivity=1) - 1
    num_regions = regions.max() + 1
    sizes = np.bincount(regions.ravel(), minlength=num_regions)
    region_class = np.zeros(num_regions, labels.dtype)
    region_class[regions.ravel()] = labels.ravel()
    border = np.zeros(num_regions, bool)
    border[np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])] = True
    # how many distinct classes touch each region from outside
    neighbours = set()
    for near, far in ((_FOUR_NEIGHBOURS[0], _FOUR_NEIGHBOURS[1]), (_FOUR_NEIGHBOURS[2], _FOUR_NEIGHBOURS[3])):
        a, b = regions[near].ravel(), regions[far].ravel()
        differ = a != b
        neighbours.update(zip(a[differ].tolist(), labels[far].ravel()[differ].tolist()))
        neighbours.update(zip(b[differ].tolist(), labels[near].ravel()[differ].tolist()))
    touching = np.zeros((num_regions, NUM_CLASSES), bool)
    if neighbours:
        pairs = np.array(list(neighbours))
        touching[pairs[:, 0], pairs[:, 1]] = True
    enclosed_by_one = touching.sum(axis=1) == 1
    background_gap = (region_class == 0) & ~touching[:, 0]
    holes = ~border & (enclosed_by_one | background_gap)
    if max_size is not None:
        holes &= sizes <= max_size
    return _limit(labels, _fill_from_surroundings(labels, regions, holes), mask)


def smooth(labels: np.ndarray, radius: int = 1, mask: np.ndarray | None = None,
           keep_fraction: float = 0.5) -> np.ndarray:
    """Majority filter over a (2 ``radius`` + 1)-pixel square that removes jagged edges and speckle.

    A pixel changes to the window's majority class only if its own class fills less than
    ``keep_fraction`` of the window, so parts thicker than about that fraction of the window
    (a thin arm, a strap) are kept instead of eroded.
    """
    labels = _check(labels, mask)
    size = 2 * int(radius) + 1
    best_class = np.zeros_like(labels)
    best_score = np.zeros(labels.shape, np.float32)
    own_score = np.zeros(labels.shape, np.float32)
    others = np.zeros(labels.shape, np.float32)  # the background's share is what is left
    # each class is filtered within its bounding box grown by the radius, not the whole image
    for value, box in enumerate(ndi.find_objects(labels.astype(np.intp) + 1)):
        if box is None or value == 0:
            continue
        grown = tuple(slice(max(b.start - size, 0), b.stop + size) for b in box)
        is_class = labels[grown] == value
        score = ndi.uniform_filter(is_class.astype(np.float32), size=size, mode="nearest")
        better = score > best_score[grown]
        best_class[grown][better] = value
        best_score[grown][better] = score[better]
        own_score[grown][is_class] = score[is_class]
        others[grown] += score
    background = 1.0 - others
    is_background = labels == 0
    own_score[is_background] = background[is_background]
    best_class[background > best_score] = 0
    changed = np.where(own_score < keep_fraction, best_class, labels)
    return _limit(labels, changed, mask)


def swap_left_right(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Swap the left and right classes (arms, legs, shoes), the model's most common confusion."""
    labels = _check(labels, mask)
    table = np.arange(max(NUM_CLASSES, int(labels.max()) + 1), dtype=labels.dtype)
    for left, right in LEFT_RIGHT_PAIRS:
        table[left], table[right] = right, left
    return _limit(labels, table[labels], mask)


def relabel(labels: np.ndarray, source: int, target: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Class ``source`` becomes class ``target``."""
    labels = _check(labels, mask)
    return _limit(labels, np.where(labels == source, target, labels), mask)


def _random_walk(photo: np.ndarray, seeds: np.ndarray, beta: float) -> np.ndarray:
    """scikit-image's random walker on ``photo`` (H x W [x C]); ``seeds`` holds class id + 1
    (0: to decide). Returns class ids (seeds passed as consecutive markers and mapped back)."""
    from skimage.segmentation import random_walker

    classes = np.unique(seeds[seeds > 0])
    if len(classes) == 1:
        return np.full(seeds.shape, classes[0] - 1, np.int32)
    markers = np.where(seeds > 0, np.searchsorted(classes, seeds) + 1, 0)
    photo = np.asarray(photo, np.float32)
    if photo.ndim == 3:
        photo = photo[..., :3]
    photo = photo / max(float(photo.max()), 1e-6)
    with warnings.catch_warnings():  # sharp edges (high beta) leave probabilities a hair off [0, 1]
        warnings.filterwarnings("ignore", "The probability range is outside", UserWarning)
        walked = random_walker(photo, markers, beta=beta, mode="cg_j", tol=1e-3,
                               channel_axis=-1 if photo.ndim == 3 else None)
    return classes[walked - 1] - 1


def snap_to_image(labels: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None, *,
                  band: int = 3, beta: float = 3000.0) -> np.ndarray:
    """Move label boundaries onto the image's own edges, keeping each region's class.

    Pixels within ``band`` pixels of a label boundary are labelled again by a random walker
    on the image (scikit-image), seeded by the rest of each region; a region thinner than
    the band keeps its core as seeds, so small true parts are not swallowed.
    ``image``: H x W x 3 (or H x W) photo, any dtype.
    """
    labels = _check(labels, mask)
    image = np.asarray(image)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image shape {image.shape[:2]} differs from labels shape {labels.shape}")
    boundary = segmentation.find_boundaries(labels, mode="inner")
    if not boundary.any():
        return labels.copy()
    distance = ndi.distance_transform_edt(~boundary)
    regions = measure.label(labels, background=-1, connectivity=1)
    thickest = ndi.maximum(distance, regions, np.arange(regions.max() + 1))
    seeded = distance >= np.minimum(band, np.asarray(thickest)[regions])
    if mask is not None:
        seeded |= ~np.asarray(mask, bool)
    if seeded.all():
        return labels.copy()
    rows, cols = np.nonzero(~seeded)
    box = (slice(max(rows.min() - 1, 0), rows.max() + 2), slice(max(cols.min() - 1, 0), cols.max() + 2))
    seeds = np.where(seeded[box], labels[box].astype(np.int32) + 1, 0)
    walked = _random_walk(image[box], seeds, beta)
    changed = labels.copy()
    changed[box] = walked
    return _limit(labels, changed, mask)


def refine_with_scribbles(labels: np.ndarray, image: np.ndarray, scribbles: np.ndarray,
                          mask: np.ndarray | None = None, *, margin: int = 6,
                          beta: float = 3000.0) -> np.ndarray:
    """Relabel the regions the annotator's strokes lie in, then fit their edges to the image.

    ``scribbles``: H x W, 0 where nothing is drawn, else the class id of the stroke. Each
    connected region of the current labels that strokes of one class touch takes that class
    (one stroke fixes a whole wrongly labelled region); a region touched by strokes of
    several classes is split between them. Pixels within ``margin`` of the changed regions'
    edges are then labelled again by a random walker on the image seeded by the strokes and
    the labels around, so the new boundaries follow the image.
    """
    labels = _check(labels, mask)
    scribbles = np.asarray(scribbles)
    if scribbles.shape != labels.shape:
        raise ValueError(f"scribbles shape {scribbles.shape} differs from labels shape {labels.shape}")
    drawn = scribbles > 0
    if not drawn.any():
        return labels.copy()
    regions = measure.label(labels, background=-1, connectivity=1)
    stroke_classes = np.zeros((regions.max() + 1, NUM_CLASSES), bool)
    stroke_classes[regions[drawn], scribbles[drawn]] = True
    count = stroke_classes.sum(axis=1)
    out = labels.copy()
    single = count == 1
    out[single[regions]] = stroke_classes.argmax(axis=1)[regions][single[regions]]
    split = (count > 1)[regions]
    out[drawn] = scribbles[drawn]
    changed = (out != labels) | split
    if mask is not None:
        changed &= np.asarray(mask, bool)
    unknown = split | (ndi.binary_dilation(segmentation.find_boundaries(np.where(changed, out, -1),
                                                                        mode="thick") & changed,
                                           iterations=margin))
    unknown &= ~drawn
    if mask is not None:
        unknown &= np.asarray(mask, bool)
    if unknown.any():
        rows, cols = np.nonzero(unknown)
        box = (slice(max(rows.min() - 1, 0), rows.max() + 2), slice(max(cols.min() - 1, 0), cols.max() + 2))
        seeds = np.where(unknown[box], 0, out[box].astype(np.int32) + 1)
        out[box] = np.where(unknown[box], _random_walk(np.asarray(image)[box], seeds, beta), out[box])
    return _limit(labels, out, mask)


def people_from_parts(labels: np.ndarray, min_size: int = 200) -> np.ndarray:
    """Propose person instances from a parts map: each connected non-background region is a
    person (8-connectivity); pieces under ``min_size`` pixels join the person nearest to them.

    Returns H x W uint8: 0 background, 1..N people, numbered from the largest. People who
    touch in the photo come out as one and are split by hand.
    """
    labels = _check(labels, None)
    person = labels > 0
    pieces, count = ndi.label(person, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros(labels.shape, np.uint8)
    sizes = np.bincount(pieces.ravel())[1:]
    order = np.argsort(-sizes)
    big = order[sizes[order] >= min_size]
    if len(big) == 0:
        big = order[:1]
    number = np.zeros(count + 1, np.int64)
    number[big + 1] = np.arange(1, len(big) + 1)
    people = number[pieces]
    stray = person & (people == 0)
    if stray.any():
        nearest = ndi.distance_transform_edt(people == 0, return_distances=False, return_indices=True)
        people[stray] = people[tuple(index[stray] for index in nearest)]
    return np.minimum(people, 255).astype(np.uint8)
