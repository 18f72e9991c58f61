"""APʳ and AP^p of Propose people on ground-truth parts: the upper bound of the heuristic.

    .venv/bin/python -m benchmarks.instances

The parts are the true ones; only the people are proposed (``people.propose_people``), and
the part instances (parts x people) are scored against the true ones as CIHP's evaluation
scores them (``instance_metrics``; every instance scored 1.0). Three sets:

* the CIHP samples of ``tests/data`` against their ``Human_ids``, where they have them;
* the 26 LIP masks (``../shared/data/lip_samples``, read in place): LIP photos hold one
  person, so the truth is one person per mask (what over-splitting costs);
* crowds composed from them: consecutive LIP masks cropped to their person, scaled to one
  height and set side by side, each overlapping the last by a quarter of its width (the one
  on the right in front): people who touch, the truth known by construction.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_deeplab.instance_metrics import InstanceEvaluation
from napari_deeplab.people import propose_people

HERE = Path(__file__).resolve().parents[1]
CIHP = HERE / "tests" / "data" / "cihp_samples"
LIP = HERE.parent / "shared" / "data" / "lip_samples"
CROWD_HEIGHT = 300
OVERLAP = 0.25


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _person(parts: np.ndarray) -> np.ndarray:
    """The mask cropped to its person and scaled (nearest) to CROWD_HEIGHT rows."""
    rows, columns = np.nonzero(parts)
    crop = parts[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    width = max(1, round(crop.shape[1] * CROWD_HEIGHT / crop.shape[0]))
    return np.asarray(Image.fromarray(crop).resize((width, CROWD_HEIGHT), Image.NEAREST))


def compose_crowd(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(parts, people) of the single-person ``masks`` set side by side, overlapping."""
    people_parts = [_person(m) for m in masks]
    starts, x = [], 0
    for piece in people_parts:
        starts.append(x)
        x += round(piece.shape[1] * (1 - OVERLAP))
    width = starts[-1] + people_parts[-1].shape[1]
    parts = np.zeros((CROWD_HEIGHT, width), np.uint8)
    people = np.zeros((CROWD_HEIGHT, width), np.uint8)
    for number, (start, piece) in enumerate(zip(starts, people_parts, strict=True), 1):
        window = (slice(None), slice(start, start + piece.shape[1]))
        parts[window] = np.where(piece > 0, piece, parts[window])
        people[window] = np.where(piece > 0, number, people[window])
    return parts, people


def score(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict, float, float, int, int]:
    """(summary, seconds proposing, seconds scoring, people proposed right in count, images)
    over (parts, true people) pairs."""
    evaluation, proposing, scoring, right = InstanceEvaluation(), 0.0, 0.0, 0
    for parts, truth in pairs:
        start = time.perf_counter()
        proposed = propose_people(parts)
        proposing += time.perf_counter() - start
        right += int(proposed.max()) == int(truth.max())
        start = time.perf_counter()
        evaluation.add(parts, truth, parts, proposed)
        scoring += time.perf_counter() - start
    start = time.perf_counter()
    summary = evaluation.summary()
    scoring += time.perf_counter() - start
    return summary, proposing, scoring, right, len(pairs)


def _report(name: str, pairs) -> None:
    if not pairs:
        print(f"{name:<34} no samples with people (Human_ids): nothing to score")
        return
    summary, proposing, scoring, right, images = score(pairs)
    people = summary["ap_p"]["truth_instances"]["person"]
    print(
        f"{name:<34} APr {summary['ap_r']['ap']:.4f}  APp {summary['ap_p']['ap']:.4f}  "
        f"count right {right}/{images} ({people} people)  propose "
        f"{1000 * proposing / images:.0f} ms/image, score {1000 * scoring / images:.0f} ms/image"
    )
    at = {row["iou"]: row["ap"] for row in summary["ap_r"]["per_threshold"]}
    print(f"{'':<34} APr at IoU 0.5 {at[0.5]:.4f}, 0.7 {at[0.7]:.4f}, 0.9 {at[0.9]:.4f}")


def main() -> None:
    cihp_parts = _masks(CIHP / "Category_ids")
    humans = CIHP / "Human_ids"
    cihp_pairs = [
        (parts, np.asarray(Image.open(humans / f"{key}.png")))
        for key, parts in cihp_parts.items()
        if (humans / f"{key}.png").exists()
    ]
    _report("CIHP samples (their Human_ids)", cihp_pairs)
    if not LIP.is_dir():
        print(f"{LIP} not found: LIP sets skipped")
        return
    lip = list(_masks(LIP / "Category_ids").values())
    _report("LIP masks (one person each)", [(m, (m > 0).astype(np.uint8)) for m in lip])
    for size in (2, 3):
        crowds = [compose_crowd(lip[i : i + size]) for i in range(0, len(lip) - size + 1, size)]
        _report(f"LIP crowds of {size}, touching", crowds)
    parts, people = compose_crowd(lip[:3])
    big_parts, big_people = (
        np.asarray(Image.fromarray(a).resize((4000, 3000), Image.NEAREST)) for a in (parts, people)
    )  # 12 MP
    evaluation = InstanceEvaluation()
    start, cpu = time.perf_counter(), time.process_time()
    evaluation.add(big_parts, big_people, big_parts, big_people)
    evaluation.summary()
    print(
        f"scoring one {big_parts.shape[1]} x {big_parts.shape[0]} image (APr and APp): "
        f"{time.perf_counter() - start:.2f} s ({time.process_time() - cpu:.2f} s of CPU)"
    )


if __name__ == "__main__":
    main()
