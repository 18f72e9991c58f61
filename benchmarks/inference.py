"""End-to-end time per photo and peak memory: our ``predict`` path against the seed's own inference.

    .venv/bin/python -m benchmarks.inference [--checkpoint SEED_SAVEDMODEL] [--repeats N]

Both paths run on the same seed-format checkpoint (by default one made here with random
weights: speed does not depend on the weights). "End to end" is photo file -> full-resolution
labels: reading the JPEG, preprocessing, the model, and getting labels back to the photo's size.

- ours: ``napari_deeplab.inference.segment`` (logits upsampled to full resolution, bilinearly)
- seed: the Keras example's inference, run by Keras 2 (``tf_keras``) on the SavedModel:
  resize to 512x512, scale to [-1, 1], ``predict``, argmax, labels resized back (nearest).

Each (path, size) runs in a fresh process, so its peak resident memory (``ru_maxrss``, the whole
process: Python, TensorFlow, the model) is its own. Each path is warmed up with one untimed run
on the photo (the steady state of a batch job); the times are the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"0.25 MP": (433, 577), "1 MP": (866, 1155), "12 MP": (3000, 4000), "24 MP": (4000, 6000)}
REPO = Path(__file__).resolve().parents[1]
SOURCE_PHOTO = REPO / "src" / "napari_deeplab" / "data" / "cihp_0005008.jpg"


def _make_photos(folder: Path) -> dict[str, Path]:
    from PIL import Image

    source = Image.open(SOURCE_PHOTO).convert("RGB")
    photos = {}
    for name, (height, width) in SIZES.items():
        path = folder / f"photo_{height}x{width}.jpg"
        source.resize((width, height), Image.BILINEAR).save(path, quality=90)
        photos[name] = path
    return photos


def _child(path_kind: str, checkpoint: str, photo: str, repeats: int) -> None:
    """Run in a fresh process: load, warm up, time ``repeats`` runs; print JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from napari_deeplab.prelabel import read_photo

    if path_kind == "ours":
        from napari_deeplab.inference import segment
        from napari_deeplab.model import load_model

        model = load_model(checkpoint)

        def run(path):
            return segment(read_photo(path), model)[0]
    else:
        from tests.seed_reference import load_seed_checkpoint, seed_reference_predict

        model = load_seed_checkpoint(checkpoint)

        def run(path):
            return seed_reference_predict(model, read_photo(path)[..., :3])

    run(photo)  # warm-up: traces the model function and sizes the allocator for this photo
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        labels = run(photo)
        times.append(time.perf_counter() - start)
    assert labels.shape == read_photo(photo).shape[:2]
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": float(np.median(times)), "peak_bytes": peak_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a seed-format SavedModel folder (default: made here)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size (default 5)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child[:2], args.child[2], args.repeats)
        return

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ.setdefault("NAPARI_DEEPLAB_CACHE", str(scratch / "cache"))
        checkpoint = args.checkpoint
        if checkpoint is None:
            from tests.seed_reference import save_seed_checkpoint

            checkpoint = str(save_seed_checkpoint(scratch / "seed"))
        photos = _make_photos(scratch)
        print(f"checkpoint: {checkpoint}; {os.cpu_count()} CPUs; median of {args.repeats} runs")
        print(
            f"{'photo':>8} | {'ours s':>7} | {'seed s':>7} | {'speed-up':>8} | "
            f"{'ours peak GB':>12} | {'seed peak GB':>12}"
        )
        for name, photo in photos.items():
            result = {}
            for kind in ("ours", "seed"):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.inference",
                        "--repeats",
                        str(args.repeats),
                        "--child",
                        kind,
                        checkpoint,
                        str(photo),
                    ],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            ours, seed = result["ours"], result["seed"]
            print(
                f"{name:>8} | {ours['seconds']:7.3f} | {seed['seconds']:7.3f} | "
                f"{seed['seconds'] / ours['seconds']:7.2f}x | {ours['peak_bytes'] / 1e9:12.2f} | "
                f"{seed['peak_bytes'] / 1e9:12.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
