"""How the dataset's commit protocol and checks scale with the number of listed samples.

For a split of 1,000, 10,000 and 100,000 listed samples (tiny 8 x 8 PNGs, the id list written
directly) this prints, in milliseconds unless said otherwise:

- ``write_sample``: one new sample written through the commit protocol (median of ``--writes``);
- ``group commit / sample``: ``--group`` samples staged and committed together, per sample;
- ``check split``: :func:`napari_deeplab.training.check_samples` over the whole split, what
  ``evaluate`` and ``finetune`` do before training (find every sample's photo and mask, read
  the headers and the mask), in seconds. With ``--check-limit`` only that many samples are
  checked and the time is scaled to the whole split (marked ``~``).

The empty split is the reference row. Usage::

    python -m benchmarks.dataset_scale [--sizes 1000 10000 100000] [--folder /tmp/scale]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import cpu_name
from napari_deeplab import cihp

SIDE = 8
"""Height and width of the benchmark's photos and masks."""


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(root: Path, count: int) -> list[str]:
    """A Training split of ``count`` listed samples (photo and mask), written directly."""
    split = root / "Training"
    for folder in ("Images", "Category_ids"):
        (split / folder).mkdir(parents=True, exist_ok=True)
    photo = _png(np.zeros((SIDE, SIDE, 3), np.uint8))
    mask = _png(np.ones((SIDE, SIDE), np.uint8))
    ids = [f"{i:07d}" for i in range(count)]
    for sample_id in ids:
        (split / "Images" / f"{sample_id}.png").write_bytes(photo)
        (split / "Category_ids" / f"{sample_id}.png").write_bytes(mask)
    (split / cihp.SPLIT_ID_FILES["Training"]).write_text("".join(f"{i}\n" for i in ids))
    return ids


def time_writes(root: Path, writes: int) -> float:
    """Median ms of one ``write_sample`` of a new sample (after one warm-up write)."""
    labels, image = np.ones((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE, 3), np.uint8)
    cihp.write_sample(root, "w-warm-up", labels, image=image)
    times = []
    for i in range(writes):
        start = time.perf_counter()
        cihp.write_sample(root, f"w-{i:04d}", labels, image=image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_group(root: Path, group: int, rounds: int = 3) -> float:
    """Best ms per sample of staging and committing ``group`` new samples together."""
    labels, image = np.ones((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE, 3), np.uint8)
    best = float("inf")
    for r in range(rounds):
        start = time.perf_counter()
        staged = [
            cihp.stage_sample(root, f"g-{r}-{i:04d}", labels, image=image) for i in range(group)
        ]
        assert cihp.commit_samples(staged) == [None] * group
        best = min(best, (time.perf_counter() - start) / group)
    return 1000 * best


def time_check(root: Path, ids: list[str], limit: int | None) -> tuple[float, bool]:
    """Seconds to check the split (scaled from ``limit`` samples when given and smaller)."""
    from napari_deeplab import training

    chosen = (
        ids if limit is None or limit >= len(ids) else ids[:: max(1, len(ids) // limit)][:limit]
    )
    start = time.perf_counter()
    problems = training.check_samples(training.Dataset(root, "Training", chosen))
    elapsed = time.perf_counter() - start
    assert not problems, problems[:3]
    return elapsed * len(ids) / max(1, len(chosen)), len(chosen) < len(ids)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--writes", type=int, default=15)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--check-limit", type=int, default=None)
    parser.add_argument("--folder", type=Path, default=None, help="where to build the splits")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="dataset-scale-", dir=args.folder))
    print(f"{'listed':>8} {'write_sample ms':>16} {'group ms/sample':>16} {'check split s':>14}")
    try:
        for count in [0, *args.sizes]:
            root = base / str(count)
            start = time.perf_counter()
            ids = make_split(root, count)
            made = time.perf_counter() - start
            write_ms = time_writes(root, args.writes)
            group_ms = time_group(root, args.group)
            ids = cihp.list_samples(root, "Training")
            check_s, scaled = time_check(root, ids, args.check_limit) if count else (0.0, False)
            print(
                f"{count:>8} {write_ms:>16.1f} {group_ms:>16.1f} "
                f"{('~' if scaled else '') + f'{check_s:.2f}':>14}   (split made in {made:.0f} s)",
                flush=True,
            )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"CPU: {cpu_name()}")


if __name__ == "__main__":
    main()
