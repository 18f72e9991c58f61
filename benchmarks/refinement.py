"""Each refinement operation against the model mistake it is for, on real CIHP ground truth.

    .venv/bin/python -m benchmarks.refinement          # everything
    .venv/bin/python -m benchmarks.refinement --snap   # Snap to image at 3 and 12 MP only

For every CIHP sample in tests/data/cihp_samples, at four scales: the mask as it is, scaled down
to 1/2 and 1/3 with nearest neighbour (people two or three times smaller: thin parts 1 to 3
pixels wide, as in crowd photos) and flipped left/right with the classes swapped
(``Category_ids_flipped``): corrupt the ground-truth mask the way a model errs, apply the
matching operation, and report the mean IoU against the ground truth before and after (mean over
the samples), and what the operation does to the uncorrupted mask (mean, and the worst sample).

The corruptions are the model's mistakes at the person's scale: their pixel sizes (speckle,
holes, how far a boundary frays or is off) scale with the mask, as do the sizes a user would
pick (``min_size`` and ``max_size`` with its area, ``radius`` with its width, at least 1). The
widget's defaults (40, 200, 1 pixels) are applied to the clean masks at every scale too.

Then each operation is timed on a 12-megapixel mask (a sample scaled up; "speckled": with the
speckle corruption everywhere, the worst case), and the two image-driven ones (snap,
scribbles) on a 1-megapixel selection.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import measure

from napari_deeplab import refine
from napari_deeplab.cihp import LEFT_RIGHT_PAIRS, LEFT_RIGHT_SWAP

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "cihp_samples"
LIP_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lip_samples"
"""26 manual LIP annotations (CIHP ids), evaluation only: read where they lie, never copied."""
DATASETS = {"CIHP": SAMPLES, "LIP": LIP_SAMPLES}
SCALES = {"full": 1.0, "1/2": 1 / 2, "1/3": 1 / 3, "flipped": 1.0}
WIDGET_DEFAULTS = {"min_size": 40, "max_size": 200, "radius": 1}
"""The refine widget's spin boxes as they open (pixels)."""
RELATIVE_DEFAULTS = {"min_fraction": 0.0005, "max_fraction": 0.002, "radius": 1}
"""The defaults proposed for the widget: sizes as fractions of the person's area."""
USER_SIZES = {"min_size": 40, "max_size": 60, "radius": 1}
"""What a user picks for a whole person at the samples' full size; scaled with the mask."""


def snap_to_image_reference(
    labels: np.ndarray, image: np.ndarray, band: int = 3, beta: float = 3000.0
) -> np.ndarray:
    """Snap to image as it was before it was made fast: scikit-image's ``random_walker`` over
    the bounding box of the band (the whole photo's graph built), the band from a full distance
    transform. ``refine.snap_to_image`` must give the same labels."""
    from skimage import segmentation

    boundary = segmentation.find_boundaries(labels, mode="inner")
    if not boundary.any():
        return labels.copy()
    distance = ndi.distance_transform_edt(~boundary)
    regions = measure.label(labels, background=-1, connectivity=1)
    thickest = ndi.maximum(distance, regions, np.arange(regions.max() + 1))
    seeded = distance >= np.minimum(band, np.asarray(thickest)[regions])
    if seeded.all():
        return labels.copy()
    rows, cols = np.nonzero(~seeded)
    box = (
        slice(max(rows.min() - 1, 0), rows.max() + 2),
        slice(max(cols.min() - 1, 0), cols.max() + 2),
    )
    seeds = np.where(seeded[box], labels[box].astype(np.int32) + 1, 0)
    out = labels.copy()
    out[box] = refine._random_walk(image[box], seeds, beta)
    return out


def mean_iou(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the classes present in either of the per-class intersection over union."""
    classes = np.union1d(np.unique(labels), np.unique(truth))
    return float(
        np.mean(
            [
                ((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum()
                for c in classes
            ]
        )
    )


def variants(samples: Path = SAMPLES, names=tuple(SCALES)):
    """Yield (scale name, scale, sample id, H x W uint8 truth, H x W x 3 uint8 photo)."""
    for path in sorted((samples / "Category_ids").glob("*.png")):
        truth = np.asarray(Image.open(path))
        photo = np.asarray(Image.open(samples / "Images" / f"{path.stem}.jpg").convert("RGB"))
        for name in names:
            scale = SCALES[name]
            if name == "flipped":
                flipped = samples / "Category_ids_flipped" / path.name
                yield (
                    name,
                    scale,
                    path.stem,
                    np.asarray(Image.open(flipped))
                    if flipped.exists()
                    else LEFT_RIGHT_SWAP[truth[:, ::-1]],
                    np.ascontiguousarray(photo[:, ::-1]),
                )
            else:
                size = (round(truth.shape[1] * scale), round(truth.shape[0] * scale))
                yield (
                    name,
                    scale,
                    path.stem,
                    np.asarray(Image.fromarray(truth).resize(size, Image.NEAREST)),
                    np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR)),
                )


def sizes(scale: float, base=USER_SIZES) -> dict:
    """The sizes a user would pick for a person ``scale`` times the samples' size."""
    return {
        "min_size": max(1, math.ceil(base["min_size"] * scale**2)),
        "max_size": max(1, math.ceil(base["max_size"] * scale**2)),
        "radius": max(1, round(base["radius"] * scale)),
    }


def _px(value: float, scale: float) -> int:
    return max(1, round(value * scale))


def speckle(truth, rng, scale=1.0):
    """Islands of 3x3 to 5x5 pixels (at full scale) of a random other class, as a noisy model
    leaves; as many per area at every scale."""
    out = truth.copy()
    low, high = _px(3, scale), _px(5, scale)
    for _ in range(truth.size // round(2000 * scale**2)):
        y, x = rng.integers(0, truth.shape[0] - high), rng.integers(0, truth.shape[1] - high)
        size = rng.integers(low, high + 1)
        out[y : y + size, x : x + size] = rng.integers(0, 20)
    return out


def holes(truth, rng, scale=1.0):
    """Background holes of 3x3 to 6x6 pixels (at full scale) inside the person."""
    out = truth.copy()
    ys, xs = np.nonzero(ndi.binary_erosion(truth > 0, iterations=_px(4, scale)))
    low, high = _px(3, scale), _px(6, scale)
    for i in rng.choice(
        len(ys), size=min(len(ys), truth.size // round(3000 * scale**2)), replace=False
    ):
        size = rng.integers(low, high + 1)
        out[ys[i] : ys[i] + size, xs[i] : xs[i] + size] = 0
    return out


def jagged(truth, rng, scale=1.0):
    """Boundaries frayed: half the boundary pixels take the class of a pixel up to 2 pixels
    (at full scale) away."""
    out = truth.copy()
    edge = np.nonzero(ndi.morphological_gradient(truth, size=3) > 0)
    pick = rng.random(len(edge[0])) < 0.5
    reach = _px(2, scale)
    dy, dx = (
        rng.integers(-reach, reach + 1, pick.sum()),
        rng.integers(-reach, reach + 1, pick.sum()),
    )
    y = np.clip(edge[0][pick] + dy, 0, truth.shape[0] - 1)
    x = np.clip(edge[1][pick] + dx, 0, truth.shape[1] - 1)
    out[edge[0][pick], edge[1][pick]] = truth[y, x]
    return out


def shifted(truth, rng, scale=1.0):
    """The whole mask 3 pixels (at full scale) off the photo (boundaries beside its edges)."""
    return np.roll(truth, (_px(3, scale), _px(3, scale)), axis=(0, 1))


def limb_swapped(truth, rng, scale=1.0):
    """One limb's left and right swapped; returns the mask and the limb's region."""
    out = truth.copy()
    for left, right in LEFT_RIGHT_PAIRS:
        for source, target in ((left, right), (right, left)):
            if (truth == source).any():
                pieces, count = ndi.label(truth == source)
                region = pieces == 1
                out[region] = target
                return out, ndi.binary_dilation(region, iterations=2)
    return out, np.zeros(truth.shape, bool)


def _largest_region(truth):
    regions = measure.label(truth, background=0, connectivity=1)
    values, counts = np.unique(regions[regions > 0], return_counts=True)
    region = regions == values[np.argmax(counts)]
    around = set(np.unique(truth[ndi.binary_dilation(region, iterations=2)]).tolist())
    wrong = next(c for c in (5, 7, 6, 12, 9, 11) if c not in around)  # not merging with a neighbour
    out = truth.copy()
    out[region] = wrong
    return region, int(truth[region][0]), out


def wrong_region(truth, rng, scale=1.0):
    """The largest part region (one class, connected) given another class; a short horizontal
    stroke of the right class drawn in it. Returns the mask and the scribbles."""
    region, true_class, out = _largest_region(truth)
    scribble = np.zeros(truth.shape, np.uint8)
    core = ndi.binary_erosion(region, iterations=_px(3, scale))
    ys, xs = np.nonzero(core if core.any() else region)
    row = ys[len(ys) // 2]
    on_row = xs[ys == row]
    scribble[row, on_row[: max(1, len(on_row) // 2)]] = true_class
    return out, scribble


def wrong_region_stroke(truth, rng, scale=1.0):
    """The largest part region given another class; one straight vertical stroke of the right
    class through it: along the column through its centre, the longest run inside it, from
    edge to edge (what an annotator draws). Returns the mask and the scribbles."""
    region, true_class, out = _largest_region(truth)
    scribble = np.zeros(truth.shape, np.uint8)
    column = int(round(np.nonzero(region)[1].mean()))
    runs = measure.label(region[:, column])
    if runs.max() == 0:
        column = int(np.nonzero(region)[1][0])
        runs = measure.label(region[:, column])
    longest = np.argmax(np.bincount(runs)[1:]) + 1
    scribble[runs == longest, column] = true_class
    return out, scribble


def clean_up(name, labels, params):
    """Apply one clean-up operation with ``params`` (min_size, max_size, radius)."""
    if name == "remove_small_regions":
        if "min_fraction" in params:
            return refine.remove_small_regions(labels, min_fraction=params["min_fraction"])
        return refine.remove_small_regions(labels, params["min_size"])
    if name == "fill_holes":
        if "max_fraction" in params:
            return refine.fill_holes(labels, max_fraction=params["max_fraction"])
        return refine.fill_holes(labels, params["max_size"])
    return refine.smooth(labels, params["radius"])


CASES = (
    ("remove_small_regions", "speckle", speckle),
    ("fill_holes", "holes", holes),
    ("smooth", "jagged edges", jagged),
    ("snap_to_image", "boundaries 3 px off", shifted),
    ("swap_left_right(mask=limb)", "one limb swapped", limb_swapped),
    ("refine_with_scribbles", "a region of the wrong class, short stroke", wrong_region),
    (
        "refine_with_scribbles",
        "a region of the wrong class, one straight stroke",
        wrong_region_stroke,
    ),
)


def evaluate(case, truth, photo, scale, rng):
    """(corrupted, after, clean with the user's sizes, clean with the widget's defaults)."""
    operation, _, corrupt = case
    params = sizes(scale)
    clean = widget = relative = None
    if operation in ("remove_small_regions", "fill_holes", "smooth"):
        bad = corrupt(truth, rng, scale)
        fixed = clean_up(operation, bad, params)
        clean = mean_iou(clean_up(operation, truth, params), truth)
        widget = mean_iou(clean_up(operation, truth, WIDGET_DEFAULTS), truth)
        relative = mean_iou(clean_up(operation, truth, RELATIVE_DEFAULTS), truth)
    elif operation == "snap_to_image":
        bad = corrupt(truth, rng, scale)
        fixed = refine.snap_to_image(bad, photo)
        clean = mean_iou(refine.snap_to_image(truth, photo), truth)
    elif operation.startswith("swap_left_right"):
        bad, limb = corrupt(truth, rng, scale)
        fixed = refine.swap_left_right(bad, mask=limb)
    else:
        bad, scribble = corrupt(truth, rng, scale)
        fixed = refine.refine_with_scribbles(bad, photo, scribble)
    return mean_iou(bad, truth), mean_iou(fixed, truth), clean, widget, relative


def table(samples: Path = SAMPLES) -> list[tuple]:
    """Rows (operation vs corruption, scale, corrupted, after, won back, clean mean, clean
    worst, worst clean with the widget's pixel defaults, worst clean with the relative
    defaults, worst won back of a sample) over the samples of ``samples``."""
    rows = []
    data = list(variants(samples))
    if not data:
        raise SystemExit(f"no samples in {samples}")
    for case in CASES:
        for scale_name, scale in SCALES.items():
            rng = np.random.default_rng(0)
            values = [
                evaluate(case, truth, photo, scale, rng)
                for name, s, _, truth, photo in data
                if name == scale_name
            ]
            corrupted, fixed = (float(np.mean([v[i] for v in values])) for i in (0, 1))
            won = (fixed - corrupted) / (1 - corrupted) if corrupted < 1 else 1.0
            clean = [v[2] for v in values if v[2] is not None]
            widget = [v[3] for v in values if v[3] is not None]
            relative = [v[4] for v in values if v[4] is not None]
            worst_won = min((v[1] - v[0]) / (1 - v[0]) if v[0] < 1 else 1.0 for v in values)
            rows.append(
                (
                    f"{case[0]} vs {case[1]}",
                    scale_name,
                    corrupted,
                    fixed,
                    won,
                    float(np.mean(clean)) if clean else None,
                    min(clean) if clean else None,
                    min(widget) if widget else None,
                    min(relative) if relative else None,
                    worst_won,
                )
            )
    return rows


def snap_timings() -> None:
    """Snap to image on a real mask off by 3 px (of the person), and also frayed, upscaled to 3
    and 12 MP: the fast version and the reference (scikit-image over the box), in this run, on
    this CPU; wall and CPU seconds (the CPUs are shared here: CPU time is the steadier)."""
    paths = sorted((SAMPLES / "Category_ids").glob("*.png"))
    truth = np.asarray(Image.open(paths[1]))
    photo = np.asarray(Image.open(SAMPLES / "Images" / f"{paths[1].stem}.jpg"))
    cases = [
        (size, corruption)
        for size in (("3 MP", (2000, 1500)), ("12 MP", (4000, 3000)))
        for corruption in ("off 3 px", "off 3 px, frayed")
    ]
    for (name, size), corruption in cases:
        big = np.asarray(Image.fromarray(truth).resize(size, Image.NEAREST))
        big_photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
        scale = size[0] / truth.shape[1]
        bad = shifted(big, None, scale)
        if corruption.endswith("frayed"):  # a model's ragged boundaries: a wider band
            bad = jagged(bad, np.random.default_rng(0), scale)
        name = f"{name}, {corruption}"
        times = {}
        for label, run in (("fast", refine.snap_to_image), ("reference", snap_to_image_reference)):
            start, cpu = time.perf_counter(), time.process_time()
            out = run(bad, big_photo)
            times[label] = (time.perf_counter() - start, time.process_time() - cpu)
            if label == "fast":
                fast = out
        same = bool(np.array_equal(fast, out))
        print(
            f"snap_to_image, {name:<24} fast {times['fast'][0]:6.2f} s ({times['fast'][1]:.2f} s "
            f"CPU)   reference {times['reference'][0]:6.2f} s ({times['reference'][1]:.2f} s CPU)"
            f"   same labels: {same}"
        )


def main() -> None:
    if "--snap" in sys.argv:
        snap_timings()
        return
    for dataset, samples in DATASETS.items():
        if dataset != "CIHP" and not samples.is_dir():
            print(f"\n{dataset}: {samples} is not here; skipped")
            continue
        rows = table(samples)
        count = len(list((samples / "Category_ids").glob("*.png")))
        print(
            f"\n{dataset} ({count} samples in {samples}): mean IoU against the ground truth, "
            "mean over the samples; clean: the operation on the uncorrupted mask (mean / worst "
            "sample; px: the widget's pixel defaults 40, 200, 1; rel: the relative defaults "
            "1/2000, 1/500 of the person, radius 1; worst sample)"
        )
        print(
            f"{'operation vs corruption':<72} | scale   | corrupted | after  | won back | "
            "clean  | worst  | px     | rel"
        )
        for name, scale, corrupted, fixed, won, clean, worst, widget, relative, _ in rows:
            text = [
                f"{value:.4f}" if value is not None else "  -   "
                for value in (clean, worst, widget, relative)
            ]
            print(
                f"{name:<72} | {scale:<7} | {corrupted:9.4f} | {fixed:.4f} | {won:7.0%}  | "
                + " | ".join(text)
            )

    rng = np.random.default_rng(0)
    paths = sorted((SAMPLES / "Category_ids").glob("*.png"))
    truth = np.asarray(Image.open(paths[1]))
    photo = np.asarray(Image.open(SAMPLES / "Images" / f"{paths[1].stem}.jpg"))
    big = np.asarray(Image.fromarray(truth).resize((4000, 3000), Image.NEAREST))
    big_photo = np.asarray(Image.fromarray(photo).resize((4000, 3000), Image.BILINEAR))
    noisy = speckle(big, rng)
    selection = (slice(1000, 2000), slice(1500, 2500))  # 1 megapixel
    scribble = np.zeros(big.shape, np.uint8)
    scribble[1400:1420, 1900:2100] = 7
    timings = [
        ("remove_small_regions, 12 MP", lambda: refine.remove_small_regions(big, 40)),
        ("remove_small_regions, 12 MP speckled", lambda: refine.remove_small_regions(noisy, 40)),
        (
            "remove_small_regions min_fraction, 12 MP",
            lambda: refine.remove_small_regions(
                big, min_fraction=RELATIVE_DEFAULTS["min_fraction"]
            ),
        ),
        ("fill_holes, 12 MP", lambda: refine.fill_holes(big, 200)),
        ("fill_holes, 12 MP speckled", lambda: refine.fill_holes(noisy, 200)),
        ("smooth, 12 MP", lambda: refine.smooth(big, 1)),
        ("smooth, 12 MP speckled", lambda: refine.smooth(noisy, 1)),
        ("smooth radius 3, 12 MP", lambda: refine.smooth(big, 3)),
        ("swap_left_right, 12 MP", lambda: refine.swap_left_right(big)),
        ("relabel, 12 MP", lambda: refine.relabel(big, 5, 7)),
        (
            "snap_to_image, 1 MP selection",
            lambda: refine.snap_to_image(big[selection], big_photo[selection]),
        ),
        (
            "refine_with_scribbles, 1 MP selection",
            lambda: refine.refine_with_scribbles(
                big[selection], big_photo[selection], scribble[selection]
            ),
        ),
    ]
    print()
    for name, run in timings:
        start = time.perf_counter()
        run()
        print(f"{name:<42} {time.perf_counter() - start:6.2f} s")


if __name__ == "__main__":
    main()
