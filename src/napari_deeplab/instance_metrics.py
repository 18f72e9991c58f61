"""Instance-level scores of human parsing, computed as CIHP's benchmark computes them.

APʳ (region-level AP) follows CIHP_PGN's ``evaluation/test_inst_part_ap.py``:

* for each of the 19 part classes, every predicted part instance of that class in every image
  is ranked by its score (``np.argsort(scores)[::-1]``, as the script ranks them);
* a predicted instance is a hit at threshold t when its best IoU with any ground-truth
  instance of the same class in the same image is **over** t. There is no one-to-one
  matching: two predictions that both overlap one ground-truth instance are both hits, and a
  ground-truth instance is never "used up";
* recall = hits / ground-truth instances of the class (all images), precision = hits / ranked
  so far; the class AP is the VOC all-point interpolated area under that curve. Without
  one-to-one matching the recall, and so the AP, can exceed 1 (more hits than true
  instances, e.g. one person proposed as two who both overlap it enough); so does the script's;
* the script's figure is the mean over thresholds 0.1 ... 0.9 of the mean over the 19 classes.

Where a class has no ground-truth instance at all (never on CIHP's 5000 validation photos,
often on a handful of samples) the script's AP of that class is 0 when nothing was predicted
for it and NaN (0 / 0) when something was, and it enters its mean either way. We report that
figure as ``ap_official`` and, as the headline ``ap``, the same mean over the classes that have
ground truth: the two agree whenever every class is present, as on CIHP's validation set.

AP^p (person-level) is the same loop over person instances (the ``Human_ids`` masks, one
class). CIHP_PGN ships no person-level script; this is *not* MHP's AP^p, which matches people
by the mean part IoU inside them.

A predicted instance's score is the mean model confidence over its pixels when a confidence
map is given, else 1.0 for every instance (then ties are ranked by ``argsort`` of equal
values over the images in the order given; the script's image order is ``os.listdir``'s).

Instance maps are H x W integer maps (0 background); their tables say each value's class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .cihp.labels import CLASS_NAMES, NUM_CLASSES

IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The IoU thresholds of CIHP's APʳ (a hit needs an IoU over the threshold)."""

PART_CLASSES: tuple[int, ...] = tuple(range(1, NUM_CLASSES))
"""The 19 part classes APʳ averages over (not the background)."""

PERSON_CLASS = 1
"""The one class of the person instances AP^p ranks."""

IGNORE_CLASS = 255
"""Unlabelled pixels of a parts map: no part instance there."""


def part_instance_map(
    category_ids: np.ndarray, human_ids: np.ndarray
) -> tuple[np.ndarray, dict[int, int]]:
    """The part instances of parts x people, numbered ``person * 20 + class``.

    The same instances, in the same order, as :func:`~napari_deeplab.cihp.part_instances`
    (whose ``Instance_ids`` values are ordered by person, then class), without the 255 an 8-bit
    map holds: a model's prediction may have more. ``category_ids``: H x W uint8 class ids
    (255 = unlabelled, no instance there); ``human_ids``: H x W uint8 people. Returns (H x W
    uint16 instance map, 0 background; {value: class}).
    """
    parts, people = np.asarray(category_ids), np.asarray(human_ids)
    if parts.shape != people.shape or parts.ndim != 2:
        raise ValueError(f"parts {parts.shape} and people {people.shape}: expected one H x W shape")
    both = (parts > 0) & (parts != IGNORE_CLASS) & (people > 0)
    instance_map = people.astype(np.uint16) * NUM_CLASSES  # at most 255 * 20 + 19
    instance_map += parts.astype(np.uint16)
    instance_map[~both] = 0
    values = np.flatnonzero(np.bincount(instance_map.ravel()))
    return instance_map, {int(v): int(v) % NUM_CLASSES for v in values if v != 0}


def person_instance_map(human_ids: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """The people as instances of one class: (``human_ids`` itself, {person: PERSON_CLASS})."""
    people = np.asarray(human_ids)
    sizes = np.bincount(people.ravel().astype(np.int64))
    return people, {int(v): PERSON_CLASS for v in np.flatnonzero(sizes) if v != 0}


def instance_scores(
    instance_map: np.ndarray, values: Sequence[int], confidence: np.ndarray | None = None
) -> list[float]:
    """Each instance's score: the mean of ``confidence`` (H x W floats, the model's top-class
    probability) over its pixels, or 1.0 for each when ``confidence`` is None."""
    if confidence is None:
        return [1.0] * len(values)
    flat = np.asarray(instance_map).ravel().astype(np.int64)
    length = max(int(flat.max()) + 1, max(values, default=0) + 1)
    sums = np.bincount(flat, weights=np.asarray(confidence, np.float64).ravel(), minlength=length)
    counts = np.bincount(flat, minlength=length)
    return [float(sums[v] / counts[v]) if counts[v] else 0.0 for v in values]


class APAccumulator:
    """The ranked predictions of CIHP's AP loop, accumulated image by image.

    ``classes``: the class ids averaged over; ``class_names``: their names, in that order.
    """

    def __init__(self, classes: Sequence[int], class_names: Sequence[str]):
        self.classes = tuple(classes)
        self.class_names = tuple(class_names)
        self.scores: dict[int, list[float]] = {c: [] for c in self.classes}
        self.best_ious: dict[int, list[float]] = {c: [] for c in self.classes}
        self.truth_counts: dict[int, int] = dict.fromkeys(self.classes, 0)
        self.images = 0

    def add_image(
        self,
        truth_map: np.ndarray,
        truth_classes: Mapping[int, int],
        predicted_map: np.ndarray,
        predicted_classes: Mapping[int, int],
        predicted_scores: Mapping[int, float],
    ) -> None:
        """Add one image: two H x W integer instance maps (0 background), each value's class,
        and each predicted value's score. Values absent from their map are no instance (the
        script reads the instances off the maps); classes not in ``classes`` are left out."""
        truth, truth_values = _compact(truth_map)
        predicted, predicted_values = _compact(predicted_map)
        if truth.shape != predicted.shape:
            raise ValueError(f"instance maps of {truth.size} and {predicted.size} pixels")
        rows, columns = len(truth_values), len(predicted_values)
        overlap = np.bincount(truth * columns + predicted, minlength=rows * columns)
        overlap = overlap.reshape(rows, columns)  # pixels of each (truth, predicted) value pair
        truth_area, predicted_area = overlap.sum(1), overlap.sum(0)
        truth_row = {int(v): row for row, v in enumerate(truth_values)}
        truth_of_class: dict[int, list[int]] = {c: [] for c in self.classes}
        for value, class_id in sorted(truth_classes.items()):
            if class_id in truth_of_class and value != 0 and value in truth_row:
                truth_of_class[class_id].append(truth_row[value])
        for class_id, found in truth_of_class.items():
            self.truth_counts[class_id] += len(found)
        predicted_column = {int(v): column for column, v in enumerate(predicted_values)}
        for value, class_id in sorted(predicted_classes.items()):  # the script's order: by value
            if class_id not in truth_of_class or value == 0 or value not in predicted_column:
                continue  # values absent from the map are no instance
            column = predicted_column[value]
            matches = np.asarray(truth_of_class[class_id], np.int64)
            if len(matches):
                intersection = overlap[matches, column]
                union = truth_area[matches] + predicted_area[column] - intersection
                best = float(np.max(intersection / union))
            else:
                best = 0.0
            self.scores[class_id].append(float(predicted_scores[value]))
            self.best_ious[class_id].append(best)
        self.images += 1

    def average_precision(self, thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
        """classes x thresholds float64: each class's AP at each threshold, as the script
        computes it (NaN for a class with predictions but no ground truth, 0 for a class with
        neither)."""
        table = np.zeros((len(self.classes), len(thresholds)))
        for row, class_id in enumerate(self.classes):
            table[row] = class_average_precision(
                self.scores[class_id], self.best_ious[class_id], self.truth_counts[class_id],
                thresholds,
            )  # fmt: skip
        return table

    def summary(self, thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
        """Every figure, JSON-ready (NaN written as None).

        ``ap``: mean over thresholds of the mean AP over the classes with ground truth (None
        when none has); ``ap_official``: the script's figure, the mean over all the classes;
        ``per_threshold``: [{``iou``, ``ap``, ``ap_official``}] one per threshold;
        ``per_class``: {name: [AP per threshold] or None without ground truth};
        ``truth_instances`` and ``predicted_instances``: {name: count}; ``images``.
        """
        table = self.average_precision(thresholds)
        present = np.array([self.truth_counts[c] > 0 for c in self.classes])
        by_threshold = table[present].mean(0) if present.any() else None
        official = table.mean(0)
        return {
            "ap": None if by_threshold is None else float(by_threshold.mean()),
            "ap_official": _number(official.mean()),
            "per_threshold": [
                {
                    "iou": float(t),
                    "ap": None if by_threshold is None else float(by_threshold[k]),
                    "ap_official": _number(official[k]),
                }
                for k, t in enumerate(thresholds)
            ],
            "per_class": {
                name: ([float(v) for v in table[row]] if present[row] else None)
                for row, name in enumerate(self.class_names)
            },
            "truth_instances": {
                name: self.truth_counts[c]
                for name, c in zip(self.class_names, self.classes, strict=True)
            },
            "predicted_instances": {
                name: len(self.scores[c])
                for name, c in zip(self.class_names, self.classes, strict=True)
            },
            "images": self.images,
        }


def _compact(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the map's pixels, flat int64, renumbered 0..n-1 in value order; the n values present)."""
    flat = np.asarray(instance_map).ravel()
    values = np.flatnonzero(np.bincount(flat))
    table = np.zeros(int(values[-1]) + 1 if len(values) else 1, np.int64)
    table[values] = np.arange(len(values))
    return table[flat], values


def _number(value) -> float | None:
    return None if np.isnan(value) else float(value)


def class_average_precision(
    scores: Sequence[float],
    best_ious: Sequence[float],
    truth_count: int,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
    """One class's AP at each threshold (float64, one per threshold).

    ``scores`` and ``best_ious``: one per predicted instance, in the order they were found;
    ``truth_count``: the class's ground-truth instances over all images.
    """
    scores_array = np.asarray(scores, np.float64)
    ious = np.asarray(best_ious, np.float64)
    if len(scores_array) == 0:
        return np.zeros(len(thresholds))
    if truth_count == 0:
        return np.full(len(thresholds), np.nan)  # the script's recall 0 / 0
    order = np.argsort(scores_array)[::-1]
    result = np.zeros(len(thresholds))
    for k, threshold in enumerate(thresholds):
        hits = (ious > threshold).astype(np.int64)[order]
        true_positives = np.cumsum(hits)
        false_positives = np.cumsum(1 - hits)
        recall = true_positives / float(truth_count)
        precision = true_positives / np.maximum(
            true_positives + false_positives, np.finfo(np.float64).eps
        )
        result[k] = voc_average_precision(recall, precision)
    return result


def voc_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP: the area under the precision envelope (the best
    precision at this recall or more), summed where the recall changes."""
    recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


class InstanceEvaluation:
    """APʳ (parts x people) and AP^p (people) over images, added one by one."""

    def __init__(self):
        self.parts = APAccumulator(PART_CLASSES, [CLASS_NAMES[c] for c in PART_CLASSES])
        self.people = APAccumulator((PERSON_CLASS,), ("person",))

    def add(
        self,
        truth_parts: np.ndarray,
        truth_people: np.ndarray,
        predicted_parts: np.ndarray,
        predicted_people: np.ndarray,
        confidence: np.ndarray | None = None,
    ) -> None:
        """Add one image: H x W uint8 parts (class ids) and people (0 background, 1..N) of
        the ground truth and of the prediction, and optionally the prediction's H x W float
        confidence (the scores; 1.0 each without)."""
        truth_map, truth_classes = part_instance_map(truth_parts, truth_people)
        predicted_map, predicted_classes = part_instance_map(predicted_parts, predicted_people)
        values = sorted(predicted_classes)
        scores = dict(zip(values, instance_scores(predicted_map, values, confidence), strict=True))
        self.parts.add_image(truth_map, truth_classes, predicted_map, predicted_classes, scores)
        truth_map, truth_classes = person_instance_map(truth_people)
        predicted_map, predicted_classes = person_instance_map(predicted_people)
        values = sorted(predicted_classes)
        scores = dict(zip(values, instance_scores(predicted_map, values, confidence), strict=True))
        self.people.add_image(truth_map, truth_classes, predicted_map, predicted_classes, scores)

    def summary(self, thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
        """{``ap_r``: APʳ, ``ap_p``: AP^p}, each as :meth:`APAccumulator.summary` gives it."""
        return {"ap_r": self.parts.summary(thresholds), "ap_p": self.people.summary(thresholds)}


def format_instance_summary(summary: dict) -> str:
    """The lines ``evaluate`` prints: APʳ and AP^p, then their table by IoU threshold."""
    ap_r, ap_p = summary["ap_r"], summary["ap_p"]

    def shown(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        f"{'APr':>14}  {shown(ap_r['ap'])}  (part instances; classes with ground truth)",
        f"{'':>14}  {shown(ap_r['ap_official'])}  (all 19 classes: CIHP_PGN's figure; - = NaN)",
        f"{'APp':>14}  {shown(ap_p['ap'])}  (person instances, same loop)",
        f"{'IoU':>14}  {'APr':>7} {'APr(19)':>7} {'APp':>7}",
    ]
    for part_row, person_row in zip(ap_r["per_threshold"], ap_p["per_threshold"], strict=True):
        lines.append(
            f"{part_row['iou']:>14.1f}  {shown(part_row['ap']):>7} "
            f"{shown(part_row['ap_official']):>7} {shown(person_row['ap']):>7}"
        )
    if any(
        (row[key] or 0) > 1
        for summary_ in (ap_r, ap_p)
        for row in summary_["per_threshold"]
        for key in ("ap", "ap_official")
    ):
        lines.append(
            f"{'':>14}  an AP over 1: more predictions hit than there are true instances "
            "(no one-to-one matching, as in CIHP's script)"
        )
    truth = sum(ap_r["truth_instances"].values())
    predicted = sum(ap_r["predicted_instances"].values())
    lines.append(
        f"{'instances':>14}  {truth} part and {sum(ap_p['truth_instances'].values())} person "
        f"in the ground truth, {predicted} and {sum(ap_p['predicted_instances'].values())} "
        f"predicted ({ap_r['images']} images)"
    )
    return "\n".join(lines)
