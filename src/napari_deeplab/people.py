"""People (person instances) from a parts map, and their edits: pure numpy functions.

A people map is H x W uint8: 0 background, 1..N people, numbered consecutively. It is
consistent with a parts map (H x W uint8 CIHP class ids) when every part pixel belongs to a
person and no background pixel does (`consistent`; `repair` makes it so).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

HEAD_CLASSES = (1, 2, 13)  # hat, hair, face (cihp/labels.py)
_EIGHT = np.ones((3, 3), bool)


def _check(array: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected an H x W map, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} shape {array.shape} differs from the parts' {shape}")
    return array


def _renumber(people: np.ndarray) -> np.ndarray:
    """Ids made consecutive 1..N in the order of their old ids; H x W uint8."""
    present = np.unique(people)
    present = present[present > 0]
    table = np.zeros(max(int(people.max()), 0) + 1, np.int64)
    table[present] = np.arange(1, len(present) + 1)
    return np.minimum(table[people], 255).astype(np.uint8)


def _fill_nearest(people: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``where`` pixels (bool H x W) given the id of the nearest pixel with a person."""
    people = people.copy()
    if where.any() and (people > 0).any():
        nearest = ndi.distance_transform_edt(
            people == 0, return_distances=False, return_indices=True
        )
        people[where] = people[tuple(index[where] for index in nearest)]
    return people


def _flood(mask: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Marker watershed of ``mask`` (bool) on a flat cost, compact: each pixel goes to the
    seed nearest to it (Euclidean) among those it reaches inside the mask.
    ``markers``: int H x W, 0 unseeded."""
    return watershed(np.zeros(mask.shape, np.uint8), markers, mask=mask, compactness=1.0)


def propose_people(labels: np.ndarray, min_head: int = 30, min_size: int = 200) -> np.ndarray:
    """Propose people from a parts map, separating people who touch.

    ``labels``: H x W uint8 class ids. Each group of head pixels (hat, hair, face; 8-connected,
    groups under ``min_head`` pixels ignored) seeds one person; a marker watershed over the
    person mask (each pixel to the nearest seed it reaches) gives every part pixel to a seed; pieces no seed
    reaches join the nearest person. Without any head, each connected region of at least
    ``min_size`` pixels is a person. Returns H x W uint8: 0 background, 1..N people numbered
    from the largest; the count is ``people.max()``.
    """
    labels = _check(labels, "parts")
    person = labels > 0
    if not person.any():
        return np.zeros(labels.shape, np.uint8)
    heads, count = ndi.label(np.isin(labels, HEAD_CLASSES), structure=_EIGHT)
    if count:
        sizes = np.bincount(heads.ravel())[1:]
        keep = np.zeros(count + 1, bool)
        keep[1:] = sizes >= min_head
        heads[~keep[heads]] = 0
    if not heads.any():
        heads, count = ndi.label(person, structure=_EIGHT)
        sizes = np.bincount(heads.ravel())[1:]
        big = np.zeros(count + 1, bool)
        big[1:] = sizes >= min(min_size, sizes.max())
        heads[~big[heads]] = 0
    people = _flood(person, heads)
    people = _fill_nearest(people, person & (people == 0))
    sizes = np.bincount(people.ravel())
    sizes[0] = 0
    order = np.argsort(-sizes, kind="stable")
    table = np.zeros(len(sizes), np.int64)
    present = order[sizes[order] > 0]
    table[present] = np.arange(1, len(present) + 1)
    return np.minimum(table[people], 255).astype(np.uint8)


def merge_people(people: np.ndarray, a: int, b: int) -> np.ndarray:
    """Person ``b`` joins person ``a``; the ids above ``b`` move down by one.

    ``people``: H x W uint8 people map. Returns a new H x W uint8 map (ids stay 1..N).
    """
    people = _check(people, "people")
    if a == b or not (people == b).any():
        return people.copy()
    merged = np.where(people == b, a, people)
    return _renumber(merged)


def remove_person(people: np.ndarray, person: int) -> np.ndarray:
    """Person ``person`` is no longer one: its pixels become 0, the ids above move down.

    Their parts must be erased too (or the pixels given to someone: `repair`), for the
    map to stay `consistent`. Returns a new H x W uint8 map.
    """
    people = _check(people, "people")
    return _renumber(np.where(people == person, 0, people))


def new_person(people: np.ndarray, labels: np.ndarray, region_mask: np.ndarray) -> np.ndarray:
    """The part pixels inside ``region_mask`` (bool H x W) become a new person N + 1,
    taken from whoever had them; a person left with no pixel is dropped (ids renumbered).

    ``people``, ``labels``: H x W uint8. Returns a new H x W uint8 map.
    """
    people = _check(people, "people")
    labels = _check(labels, "parts", people.shape)
    region = _check(region_mask, "region", people.shape).astype(bool) & (labels > 0)
    if not region.any():
        return people.copy()
    out = people.astype(np.int64)
    out[region] = int(people.max()) + 1
    return _renumber(out)


def split_person(
    people: np.ndarray, labels: np.ndarray, person: int, stroke_or_seeds: np.ndarray
) -> np.ndarray:
    """Split ``person`` in two by a watershed of its part pixels from two seeds.

    ``stroke_or_seeds``: H x W, either bool (a stroke drawn across the person: the two largest
    pieces of the person left by the stroke are the seeds) or integer (1 marks the seed that
    keeps ``person``, 2 the seed of the new person N + 1; other values ignored). Returns a new
    H x W uint8 map; unchanged when there are not two seeds inside the person.
    """
    people = _check(people, "people")
    labels = _check(labels, "parts", people.shape)
    marks = _check(stroke_or_seeds, "stroke", people.shape)
    mask = (people == person) & (labels > 0)
    if marks.dtype == bool:
        pieces, count = ndi.label(mask & ~marks, structure=_EIGHT)
        if count < 2:
            return people.copy()
        sizes = np.bincount(pieces.ravel())[1:]
        first, second = np.argsort(-sizes, kind="stable")[:2] + 1
        seeds = np.where(pieces == first, 1, np.where(pieces == second, 2, 0))
    else:
        seeds = np.where(mask & np.isin(marks, (1, 2)), marks, 0).astype(np.int64)
        if not ((seeds == 1).any() and (seeds == 2).any()):
            return people.copy()
    halves = _flood(mask, seeds)
    out = people.astype(np.int64)
    out[mask & (halves == 2)] = int(people.max()) + 1
    return _renumber(out)


def consistent(people: np.ndarray, labels: np.ndarray) -> bool:
    """True when every part pixel (``labels`` > 0) has a person, no background pixel has one
    and the ids are 1..N with none missing. Both H x W uint8."""
    people = _check(people, "people")
    labels = _check(labels, "parts", people.shape)
    ids = np.unique(people[people > 0])
    return bool(
        np.array_equal(people > 0, labels > 0) and np.array_equal(ids, np.arange(1, len(ids) + 1))
    )


def repair(people: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The nearest consistent map: background pixels lose their person, part pixels without
    one join the nearest person (all proposed afresh when there is none), ids renumbered.

    ``people``, ``labels``: H x W uint8. Returns a new H x W uint8 map.
    """
    people = _check(people, "people")
    labels = _check(labels, "parts", people.shape)
    part = labels > 0
    kept = np.where(part, people, 0)
    if part.any() and not kept.any():
        return propose_people(labels)
    return _renumber(_fill_nearest(kept, part & (kept == 0)))
