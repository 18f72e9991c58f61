"""Make the people of the three CIHP samples (``cihp_samples/Human_ids``, ``Humans``,
``Instance_ids`` with its ``.txt``, ``Instances``): Propose people on each sample's
ground-truth parts, then the fixes below, made by looking at the photos (tests/data/README.md).

Run from the repository root: ``python tests/data/make_cihp_people.py``. The files are written
by ``cihp.write_sample`` into a scratch dataset and copied from there, so they are exactly what
the project writes.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from napari_deeplab import cihp
from napari_deeplab import people as P

SAMPLES = Path(__file__).resolve().parent / "cihp_samples"
TRUE_COUNTS = {"0002190": 2, "0005008": 7, "0026375": 3}
FOLDERS = ("Human_ids", "Humans", "Instance_ids", "Instances")


def _right_of(shape, points) -> np.ndarray:
    """bool H x W: the pixels right of the polyline through ``points`` ((x, y), y increasing),
    in the rows it spans."""
    xs, ys = np.array(points, float).T
    bound = np.interp(np.arange(shape[0]), ys, xs)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows >= ys.min()) & (rows <= ys.max()) & (cols >= bound[:, None])


def fixed_people(sample_id: str, parts: np.ndarray) -> np.ndarray:
    """Propose people on ``parts`` (H x W uint8), then the hand fixes of the sample; people
    numbered 1..N from left to right (by mean column). H x W uint8."""
    people = P.propose_people(parts)
    cols = np.arange(parts.shape[1])[None, :]
    rows = np.arange(parts.shape[0])[:, None]
    if sample_id == "0002190":
        # the striped shirt seen from behind (person 2) reaches left to its own outline; the
        # man on the left keeps his head, neck, shirt left of it and his arm (class 15)
        striped = _right_of(
            parts.shape,
            [
                (112, 90),
                (100, 95),
                (83, 100),
                (67, 105),
                (50, 117),
                (38, 128),
                (32, 140),
                (30, 173),
                (28, 199),
            ],
        )
        people[striped & (parts > 0) & (parts != 15)] = 2
    elif sample_id == "0005008":
        # seven people side by side; the watershed's cuts are diagonal where they touch
        people[(people == 1) & (cols >= 105) & (rows >= 80) & (rows <= 200)] = 2  # fringe
        people[(people == 2) & (cols >= 167)] = 7  # the yellow jacket's left side and legs
        people[(people == 4) & (cols < 321)] = 5  # the cowboy's right side and legs
        people[(people == 3) & (cols >= 453)] = 6  # the blanket coat's left side
    # 0026375: the proposal is right as it is (three children at a table)
    ids = [k for k in range(1, int(people.max()) + 1) if (people == k).any()]
    order = sorted(ids, key=lambda k: np.nonzero(people == k)[1].mean())
    table = np.zeros(256, np.uint8)
    table[order] = np.arange(1, len(order) + 1)
    return table[people]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for sample_id, count in TRUE_COUNTS.items():
            parts = np.asarray(Image.open(SAMPLES / "Category_ids" / f"{sample_id}.png"))
            people = fixed_people(sample_id, parts)
            assert people.max() == count and P.consistent(people, parts), sample_id
            cihp.write_sample(
                scratch,
                sample_id,
                parts,
                image_path=SAMPLES / "Images" / f"{sample_id}.jpg",
                human_ids=people,
            )
            for folder in FOLDERS:
                (SAMPLES / folder).mkdir(exist_ok=True)
                for path in (Path(scratch) / "Training" / folder).glob(f"{sample_id}.*"):
                    shutil.copyfile(path, SAMPLES / folder / path.name)
            print(sample_id, "people", count, np.bincount(people.ravel())[1:].tolist())


if __name__ == "__main__":
    main()
