"""Each refinement operation against the model mistake it is for, on real CIHP ground truth.

    .venv/bin/python benchmarks/refine.py

For every CIHP sample in ../shared/data/cihp_samples: corrupt the ground-truth mask the way a
model errs, apply the matching operation, and report the mean IoU against the ground truth
before and after (mean over the samples), and what the operation does to the uncorrupted mask.
Then time each operation on a 12-megapixel mask (a sample scaled up; "speckled": with the
speckle corruption everywhere, the worst case), and the two image-driven ones (snap,
scribbles) on a 1-megapixel selection.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from napari_deeplab import refine
from napari_deeplab.cihp import LEFT_RIGHT_PAIRS

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "cihp_samples"


def mean_iou(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the classes present in either of the per-class intersection over union."""
    classes = np.union1d(np.unique(labels), np.unique(truth))
    return float(np.mean([((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum()
                          for c in classes]))


def speckle(truth, rng):
    """Islands of 3x3 to 5x5 pixels of a random other class, as a noisy model leaves."""
    out = truth.copy()
    for _ in range(truth.size // 2000):
        y, x = rng.integers(0, truth.shape[0] - 5), rng.integers(0, truth.shape[1] - 5)
        size = rng.integers(3, 6)
        out[y:y + size, x:x + size] = rng.integers(0, 20)
    return out


def holes(truth, rng):
    """Background-coloured holes of 3x3 to 6x6 pixels inside the person."""
    out = truth.copy()
    ys, xs = np.nonzero(ndi.binary_erosion(truth > 0, iterations=4))
    for i in rng.choice(len(ys), size=min(len(ys), truth.size // 3000), replace=False):
        size = rng.integers(3, 7)
        out[ys[i]:ys[i] + size, xs[i]:xs[i] + size] = 0
    return out


def jagged(truth, rng):
    """Boundaries frayed: each boundary pixel takes a random neighbour's class."""
    out = truth.copy()
    edge = np.nonzero(ndi.morphological_gradient(truth, size=3) > 0)
    pick = rng.random(len(edge[0])) < 0.5
    dy, dx = rng.integers(-2, 3, pick.sum()), rng.integers(-2, 3, pick.sum())
    y = np.clip(edge[0][pick] + dy, 0, truth.shape[0] - 1)
    x = np.clip(edge[1][pick] + dx, 0, truth.shape[1] - 1)
    out[edge[0][pick], edge[1][pick]] = truth[y, x]
    return out


def shifted(truth, rng):
    """The whole mask 3 pixels off the photo (boundaries beside the image's edges)."""
    return np.roll(truth, (3, 3), axis=(0, 1))


def limb_swapped(truth, rng):
    """One limb's left and right swapped; returns the mask and the limb's region."""
    out = truth.copy()
    for left, right in LEFT_RIGHT_PAIRS:
        if (truth == left).any():
            pieces, count = ndi.label(truth == left)
            region = pieces == 1
            out[region] = right
            return out, ndi.binary_dilation(region, iterations=2)
    return out, np.zeros(truth.shape, bool)


def wrong_region(truth, rng):
    """The largest part region (one class, connected) given another class; a stroke of the
    right class drawn on it. Returns the mask and the scribbles."""
    from skimage import measure

    regions = measure.label(truth, background=0, connectivity=1)
    values, counts = np.unique(regions[regions > 0], return_counts=True)
    region = regions == values[np.argmax(counts)]
    true_class = int(truth[region][0])
    around = set(np.unique(truth[ndi.binary_dilation(region, iterations=2)]).tolist())
    wrong = next(c for c in (5, 7, 6, 12, 9, 11) if c not in around)  # not merging with a neighbour
    out = truth.copy()
    out[region] = wrong
    scribble = np.zeros(truth.shape, np.uint8)
    core = ndi.binary_erosion(region, iterations=3)
    ys, xs = np.nonzero(core)
    row = ys[len(ys) // 2]
    on_row = xs[ys == row]
    scribble[row, on_row[: max(1, len(on_row) // 2)]] = true_class  # a short horizontal stroke
    return out, scribble


def main() -> None:
    paths = sorted((SAMPLES / "Category_ids").glob("*.png"))
    if not paths:
        raise SystemExit(f"no CIHP samples in {SAMPLES}")
    rng = np.random.default_rng(0)
    rows = {}

    def record(name, truth, corrupted, fixed, clean):
        rows.setdefault(name, []).append((mean_iou(corrupted, truth), mean_iou(fixed, truth),
                                          None if clean is None else mean_iou(clean, truth)))

    for path in paths:
        truth = np.asarray(Image.open(path))
        photo = np.asarray(Image.open(SAMPLES / "Images" / f"{path.stem}.jpg"))
        bad = speckle(truth, rng)
        record("remove_small_regions(min_size=40) vs speckle", truth, bad,
               refine.remove_small_regions(bad, 40), refine.remove_small_regions(truth, 40))
        bad = holes(truth, rng)
        record("fill_holes(max_size=60) vs holes", truth, bad, refine.fill_holes(bad, 60),
               refine.fill_holes(truth, 60))
        bad = jagged(truth, rng)
        record("smooth(radius=1) vs jagged edges", truth, bad, refine.smooth(bad, 1),
               refine.smooth(truth, 1))
        bad = shifted(truth, rng)
        record("snap_to_image vs boundaries 3 px off", truth, bad, refine.snap_to_image(bad, photo),
               refine.snap_to_image(truth, photo))
        bad, limb = limb_swapped(truth, rng)
        record("swap_left_right(mask=limb) vs one limb swapped", truth, bad,
               refine.swap_left_right(bad, mask=limb), None)
        bad, scribble = wrong_region(truth, rng)
        record("refine_with_scribbles vs a region of the wrong class", truth, bad,
               refine.refine_with_scribbles(bad, photo, scribble), None)

    print(f"mean IoU against the ground truth, mean over {len(paths)} CIHP samples")
    print(f"{'operation vs corruption':<55} | corrupted | after | won back | on a clean mask")
    for name, values in rows.items():
        corrupted, fixed, clean = (np.mean([v[i] for v in values]) if values[0][i] is not None
                                   else None for i in range(3))
        won = (fixed - corrupted) / (1 - corrupted) if corrupted < 1 else 1.0
        clean_text = "-" if clean is None else f"{clean:.4f}"
        print(f"{name:<55} | {corrupted:9.4f} | {fixed:.4f} | {won:7.0%} | {clean_text}")

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
        ("fill_holes, 12 MP", lambda: refine.fill_holes(big, 60)),
        ("fill_holes, 12 MP speckled", lambda: refine.fill_holes(noisy, 60)),
        ("smooth, 12 MP", lambda: refine.smooth(big, 1)),
        ("smooth, 12 MP speckled", lambda: refine.smooth(noisy, 1)),
        ("swap_left_right, 12 MP", lambda: refine.swap_left_right(big)),
        ("relabel, 12 MP", lambda: refine.relabel(big, 5, 7)),
        ("snap_to_image, 1 MP selection", lambda: refine.snap_to_image(
            big[selection], big_photo[selection])),
        ("refine_with_scribbles, 1 MP selection", lambda: refine.refine_with_scribbles(
            big[selection], big_photo[selection], scribble[selection])),
    ]
    print()
    for name, run in timings:
        start = time.perf_counter()
        run()
        print(f"{name:<40} {time.perf_counter() - start:6.2f} s")


if __name__ == "__main__":
    main()
