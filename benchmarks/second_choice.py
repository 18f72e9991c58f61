"""Flip averaging's time cost and the runner-up map's memory (issue 22).

    .venv/bin/python -m benchmarks.second_choice [--repeats 3] [--megapixels 12]

- **TTA**: ``predict`` (:func:`napari_deeplab.prelabel.prelabel_files`, one batch, the
  machine's cores as workers) on the three photos of ``tests/data/cihp_samples`` with
  DeepLabV3+ of random weights (speed does not depend on the weights), ``--tta none`` against
  ``--tta flip``, each after an untimed warm-up; median wall seconds of ``--repeats`` runs.
- **Runner-up**: the model's logits of sample 0005008 upsampled to a ``--megapixels`` photo:
  the labels (:func:`~napari_deeplab.inference.upsample_logits`, no confidence) and the
  runner-up map (:func:`~napari_deeplab.second_choice.upsample_runner_up`): time, bytes kept
  per megapixel, and the working memory's peak above the result (``tracemalloc``, numpy's
  allocations).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "cihp_samples" / "Images"


def tta_rows(model, repeats: int) -> list[tuple[str, float]]:
    import os

    from napari_deeplab.prelabel import prelabel_files

    photos = sorted(SAMPLES.glob("*.jpg"))
    rows = []
    for tta in ("none", "flip"):
        times = []
        for attempt in range(repeats + 1):
            out = Path(tempfile.mkdtemp(prefix="tta-"))
            start = time.perf_counter()
            outcomes = list(
                prelabel_files(
                    photos, model, out, batch_size=4, workers=os.cpu_count() or 1, tta=tta
                )
            )
            elapsed = time.perf_counter() - start
            shutil.rmtree(out)
            assert all(o.status == "written" for o in outcomes), outcomes
            if attempt:  # the first builds the inference model
                times.append(elapsed)
        rows.append((tta, statistics.median(times) / len(photos)))
    return rows


def runner_up_rows(model, megapixels: float) -> list[tuple]:
    from PIL import Image

    from napari_deeplab.inference import batch_outputs, model_input, upsample_logits
    from napari_deeplab.model import model_info
    from napari_deeplab.second_choice import upsample_runner_up

    photo = np.asarray(Image.open(SAMPLES / "0005008.jpg"))
    inputs = model_input(photo, model_info(model).input_size)[None]
    logits, grid_labels, _ = batch_outputs(model, inputs)[0]
    height = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    shape = (height, int(round(megapixels * 1e6 / height)))
    rows = []
    for name, function in (
        ("labels", lambda: upsample_logits(logits, shape, grid_labels, confidence=False)[0]),
        ("runner-up", lambda: upsample_runner_up(logits, shape, grid_labels)),
    ):
        function()  # warm
        start = time.perf_counter()
        tracemalloc.start()
        result = function()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        elapsed = time.perf_counter() - start
        pixels = shape[0] * shape[1]
        rows.append((name, shape, elapsed, result.nbytes / pixels * 1e6, peak - result.nbytes))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args()
    from napari_deeplab.model import build_model

    model = build_model()
    rows = tta_rows(model, args.repeats)
    plain = rows[0][1]
    print("| --tta | s per photo | cost |\n|---|---|---|")
    for tta, seconds in rows:
        print(f"| {tta} | {seconds:.3f} | {seconds / plain:.2f}x |")
    print(
        "\n| map | photo | time | bytes kept per MP | working peak above it |\n|---|---|---|---|---|"
    )
    for name, shape, seconds, per_mp, working in runner_up_rows(model, args.megapixels):
        print(
            f"| {name} | {shape[1]} x {shape[0]} | {seconds:.3f} s | {per_mp:,.0f} "
            f"| {working / 1e6:.1f} MB |"
        )


if __name__ == "__main__":
    main()
