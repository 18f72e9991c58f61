"""Fine-tuning throughput: our input pipeline against Keras ``fit`` on arrays already in memory.

    .venv/bin/python -m benchmarks.training_throughput [--training-size 256] [--training-batch 4]
        [--training-steps 12] [--training-photos 24] [--backend tensorflow jax]
        [--precision float32 bfloat16] [--workers N]

Samples: ``--training-photos`` copies of the three CIHP samples in ``tests/data/cihp_samples``
(photo and mask, under new ids) in a temporary dataset. Model: DeepLabV3+ with random weights,
batch norm frozen, Adam, the loss of :func:`napari_deeplab.training.finetune`, in the given
precision (:func:`napari_deeplab.model.with_precision`). Each (backend, precision) runs in its own
process with ``KERAS_BACKEND`` set:

- ``fit (arrays in memory)``: ``model.fit(x, y)`` on the photos already resized to the training
  size (numpy float32, no augmentation): the goal's reference;
- ``pipeline``: what ``finetune`` trains with: :class:`~napari_deeplab.training.SampleCache`
  (decoded once; the first, untimed epoch decodes), :class:`~napari_deeplab.training.AugmentedBatches`
  (crop, flip, jitter in ``--workers`` threads, two batches ahead) and ``train_on_batch``.

Both first train one untimed epoch (compilation, decoding); then photos/s is
``--training-steps`` x batch photos over the wall time. "vs fit" is pipeline photos/s over fit
photos/s (goal: at least 1 / 1.2 = 0.83). The JAX process never imports TensorFlow.
``training_rows(args)`` is what ``benchmarks/throughput.py`` puts into its table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "cihp_samples"
COLUMNS = (
    "task",
    "backend",
    "precision",
    "photos",
    "size",
    "mode",
    "workers",
    "batch",
    "photos/s",
    "vs fit",
)


def make_dataset(folder: Path, count: int) -> Path:
    """A Training split in ``folder`` with ``count`` samples copied from the CIHP samples."""
    split = folder / "Training"
    (split / "Images").mkdir(parents=True)
    (split / "Category_ids").mkdir()
    sources = sorted(path.stem for path in (SAMPLES / "Images").glob("*.jpg"))
    ids = [f"copy{i:05d}" for i in range(count)]
    for i, sample_id in enumerate(ids):
        source = sources[i % len(sources)]
        shutil.copy(SAMPLES / "Images" / f"{source}.jpg", split / "Images" / f"{sample_id}.jpg")
        shutil.copy(
            SAMPLES / "Category_ids" / f"{source}.png", split / "Category_ids" / f"{sample_id}.png"
        )
    (split / "train_id.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def _child(options: dict) -> None:
    """In a process of its own (``KERAS_BACKEND`` set): time fit and the pipeline; print rows."""
    from concurrent.futures import ThreadPoolExecutor

    import keras
    import numpy as np

    from napari_deeplab import cihp
    from napari_deeplab.model import build_model, with_precision
    from napari_deeplab.training import (
        IGNORE_CLASS,
        AugmentedBatches,
        SampleCache,
        freeze_batch_norm,
        locate_dataset,
        resize_labels,
        resize_photo,
        train_epoch,
        training_cache_side,
    )

    size, batch, steps, workers = (options[k] for k in ("size", "batch", "steps", "workers"))
    dataset = locate_dataset(options["root"], "Training")
    keras.utils.set_random_seed(0)
    model = with_precision(build_model(), options["precision"])
    freeze_batch_norm(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=IGNORE_CLASS
        ),
    )
    row = {
        "task": "training",
        "backend": keras.backend.backend(),
        "precision": options["precision"],
        "photos": len(dataset.ids),
        "size": f"{size} px",
        "batch": batch,
    }

    samples = [cihp.read_sample(dataset.root, i, dataset.split) for i in dataset.ids]
    x = np.stack([resize_photo(s.image, size) for s in samples])
    y = np.stack([resize_labels(s.category_ids, size) for s in samples])
    per_epoch = len(samples) // batch
    model.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=per_epoch, verbose=0)
    epochs = max(1, round(steps / per_epoch))
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, steps_per_epoch=per_epoch, verbose=0)
    fit_rate = epochs * per_epoch * batch / (time.perf_counter() - start)
    print(
        "ROW "
        + json.dumps(
            {
                **row,
                "mode": "fit (arrays in memory)",
                "workers": "-",
                "photos/s": round(fit_rate, 2),
            }
        ),
        flush=True,
    )

    with ThreadPoolExecutor(workers) as pool:
        augmented = AugmentedBatches(
            SampleCache(dataset, training_cache_side(size)), size, batch, pool
        )
        batches = augmented.batches()
        train_epoch(model, batches, augmented.steps_per_epoch)  # decodes every sample once
        start = time.perf_counter()
        train_epoch(model, batches, steps)
        rate = steps * batch / (time.perf_counter() - start)
        batches.close()
    print(
        "ROW "
        + json.dumps(
            {
                **row,
                "mode": "pipeline",
                "workers": workers,
                "photos/s": round(rate, 2),
                "vs fit": round(rate / fit_rate, 3),
            }
        ),
        flush=True,
    )


def training_rows(args) -> list[dict]:
    """The table's rows for each backend and precision in ``args`` (an ``argparse.Namespace``
    with any of ``backend``, ``precision``, ``workers``, ``training_size``, ``training_batch``,
    ``training_steps``, ``training_photos``; the defaults of :func:`main` for the others)."""
    defaults = vars(_parser().parse_args([]))
    option = {name: getattr(args, name, value) for name, value in defaults.items()}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="napari-deeplab-training-throughput-"))
    try:
        photos = max(option["training_photos"], option["training_batch"])
        root = make_dataset(work / "dataset", photos)
        for backend in option["backend"]:
            for precision in option["precision"]:
                child = {
                    "root": str(root),
                    "precision": precision,
                    "size": option["training_size"],
                    "batch": option["training_batch"],
                    "steps": option["training_steps"],
                    "workers": option["workers"],
                }
                env = {
                    **os.environ,
                    "KERAS_BACKEND": backend,
                    "TF_CPP_MIN_LOG_LEVEL": "3",
                    "PYTHONPATH": str(REPO / "src"),
                    "NAPARI_DEEPLAB_CACHE": str(work / "cache"),
                }
                run = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(child)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                found = [
                    json.loads(line[4:])
                    for line in run.stdout.splitlines()
                    if line.startswith("ROW ")
                ]
                if run.returncode or len(found) < 2:
                    print(
                        f"training {backend} {precision}: failed\n{run.stderr[-3000:]}",
                        file=sys.stderr,
                    )
                rows += found
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training-size", type=int, default=256, help="square side (px)")
    parser.add_argument("--training-batch", type=int, default=4)
    parser.add_argument("--training-steps", type=int, default=12, help="timed steps")
    parser.add_argument(
        "--training-photos",
        type=int,
        default=24,
        help="samples in the dataset (copies of the three CIHP samples)",
    )
    parser.add_argument(
        "--backend", nargs="+", default=["tensorflow", "jax"], choices=("tensorflow", "jax")
    )
    parser.add_argument(
        "--precision", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16")
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="augmentation threads (default: the cores)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    rows = training_rows(args)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "-")) for column in COLUMNS) + " |")


if __name__ == "__main__":
    main()
