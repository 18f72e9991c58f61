"""Precision at k of the label-noise audit on noise injected into real masks.

    .venv/bin/python -m benchmarks.audit            # CIHP samples (tests/data) and LIP samples
    .venv/bin/python -m benchmarks.audit --oracle   # the oracle model only (no Keras)

Every sample appears up to four times: clean, and with one kind of injected noise each (its largest
left/right limb given the mirrored class, its hair or face erased, its upper clothes painted as
coat; kinds a sample lacks are left out). The audit ranks the masks by total strength;
precision at k is the fraction of the k first that are noisy, k the number of noisy masks (a
perfect audit: 1.0; ranking by chance: the noisy share, e.g. 64 of 90). Two models: the
**oracle** (its argmax is the clean mask, less sure at the parts' edges: the upper bound, a
model that is right wherever it is confident) and the **random-weight** stand-in (DeepLabV3+
with random weights, run on the photos: what the audit gives with a model that knows nothing).
The LIP masks (``../shared/data/lip_samples``) are read in place, never copied.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from benchmarks import cpu_name
from napari_deeplab import audit
from napari_deeplab.cihp import LEFT_RIGHT_SWAP

HERE = Path(__file__).resolve().parents[1]
DATASETS = {
    "CIHP (tests/data)": HERE / "tests" / "data" / "cihp_samples",
    "LIP (../shared)": HERE.parent / "shared" / "data" / "lip_samples",
}
LIMBS = (14, 15, 16, 17, 18, 19)


def _largest(mask: np.ndarray, classes) -> np.ndarray | None:
    best = None
    for class_id in classes:
        pieces, count = ndi.label(mask == class_id)
        if count:
            sizes = np.bincount(pieces.ravel())[1:]
            piece = pieces == sizes.argmax() + 1
            if best is None or piece.sum() > best.sum():
                best = piece
    return best


def noisy_versions(clean: np.ndarray) -> dict[str, np.ndarray]:
    """The clean H x W uint8 mask with each kind of noise injected (kinds absent: left out)."""
    versions = {}
    limb = _largest(clean, LIMBS)
    if limb is not None:
        versions["swap"] = np.where(limb, LEFT_RIGHT_SWAP[clean], clean).astype(np.uint8)
    head = _largest(clean, (2, 13))
    if head is not None:
        versions["erase"] = np.where(head, 0, clean).astype(np.uint8)
    clothes = _largest(clean, (5,))
    if clothes is not None:
        versions["wrong class"] = np.where(clothes, 7, clean).astype(np.uint8)
    return versions


def oracle(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (the clean mask) and confidence (0.95, 0.5 at the parts' edges)."""
    edge = ndi.maximum_filter(clean, size=3) != ndi.minimum_filter(clean, size=3)
    return clean, np.where(edge, 0.5, 0.95).astype(np.float32)


def precision_at_k(dataset: Path, model=None) -> tuple[float, int, float]:
    """(precision at k, the number of masks ranked, seconds per sample audited)."""
    from napari_deeplab.photos import read_photo

    found, noisy = {}, set()
    start, audited = time.perf_counter(), 0
    for mask_path in sorted((dataset / "Category_ids").glob("*.png")):
        clean = np.array(Image.open(mask_path))
        if model is None:
            labels, confidence = oracle(clean)
        else:
            from napari_deeplab.inference import segment

            photo = next((dataset / "Images").glob(mask_path.stem + ".*"))
            labels, confidence = segment(read_photo(photo), model)
        for kind, mask in {"clean": clean, **noisy_versions(clean)}.items():
            key = f"{mask_path.stem}:{kind}"
            found[key] = audit.suspect_regions(mask, labels, confidence)
            audited += 1
            if kind != "clean":
                noisy.add(key)
    ranking = [key for key, _ in audit.rank_samples(found)]
    k = len(noisy)
    return len(noisy & set(ranking[:k])) / k, len(ranking), (time.perf_counter() - start) / audited


def main(argv: list[str]) -> None:
    print(f"CPU: {cpu_name()}")
    models = {"oracle": None}
    if "--oracle" not in argv:
        from napari_deeplab.model import build_model

        models["random weights"] = build_model()
    print("| dataset | model | masks ranked | precision at k (k = noisy) | s per mask |")
    print("|---|---|---|---|---|")
    for name, folder in DATASETS.items():
        if not (folder / "Category_ids").is_dir():
            print(f"| {name} | (not found: {folder}) | | | |")
            continue
        for model_name, model in models.items():
            precision, count, seconds = precision_at_k(folder, model)
            print(f"| {name} | {model_name} | {count} | {precision:.2f} | {seconds:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
