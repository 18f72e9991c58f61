"""Inference speed and labels per Keras backend and precision: TensorFlow and JAX, float32 and
bfloat16 (``--precision``).

    .venv/bin/python -m benchmarks.precision [--model SRC] [--size 512] [--batch 4] [--repeats 10]

For each backend that is installed, a fresh process (``KERAS_BACKEND`` is read when Keras is
imported) loads the model in both precisions and reports:

- the bare model's speed: ``inference_model`` (batch norm folded, argmax and softmax in the
  graph) on a ``--batch`` of ``--size`` x ``--size`` inputs, median of ``--repeats`` calls
  after two warm-up calls, as photos/s;
- the labels of the three CIHP samples in ``tests/data`` at full resolution (``segment``),
  compared pixel by pixel with float32 on the same backend, and with TensorFlow float32.

``--model`` takes what ``load_model`` takes; by default, the seed-format model with random
weights that the tests use (speed does not depend on the weights, but with random weights the
logits lie close together, so the agreement is a lower bound of a trained model's). The CPU's
model name and whether it has AVX-512 BF16 or AMX are printed, since bfloat16's speed depends
on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "cihp_samples" / "Images"
SAMPLE_IDS = ("0002190", "0005008", "0026375")
BACKENDS = ("tensorflow", "jax")
PRECISIONS = ("float32", "bfloat16")


def _child(model_source: str, size: int, batch: int, repeats: int, labels_out: str) -> None:
    """In a fresh process under one backend: time both precisions, save labels; print JSON."""
    import keras
    import numpy as np
    from PIL import Image

    from napari_deeplab.inference import inference_model, segment
    from napari_deeplab.model import load_model

    photos = [np.asarray(Image.open(SAMPLES / f"{i}.jpg")) for i in SAMPLE_IDS]
    inputs = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    rows, labels = [], {}
    for precision in PRECISIONS:
        model = load_model(model_source, precision=precision)
        runnable = inference_model(model)
        for _ in range(2):  # compile (JAX) or trace (TensorFlow), then one more
            runnable.predict_on_batch(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runnable.predict_on_batch(inputs)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        rows.append(
            {
                "backend": keras.backend.backend(),
                "precision": precision,
                "batch_s": seconds,
                "photos_per_s": batch / seconds,
            }
        )
        for sample_id, photo in zip(SAMPLE_IDS, photos, strict=True):
            labels[f"{precision}/{sample_id}"] = segment(photo, model)[0]
    np.savez_compressed(labels_out, **labels)
    print(json.dumps(rows))


def _agreement(labels, reference) -> float:
    """Share of all pixels of the samples whose labels are the same."""
    same = sum(int((labels[i] == reference[i]).sum()) for i in SAMPLE_IDS)
    return same / sum(reference[i].size for i in SAMPLE_IDS)


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in info.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(features) or 'no AVX2'}"


def _default_model(folder: Path) -> str:
    """The tests' seed-format model with random weights, converted once to ``.keras``."""
    from napari_deeplab.model import load_model, save_model
    from tests.seed_reference import save_seed_checkpoint

    path = folder / "seed-random.keras"
    save_model(load_model(save_seed_checkpoint(folder / "seed")), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model (default: random seed weights)")
    parser.add_argument("--size", type=int, default=512, help="model input side (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="photos per model call (default 4)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls (default 10)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.size, args.batch, args.repeats, args.child[1])
        return
    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "NAPARI_DEEPLAB_CACHE": str(scratch / "cache"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        model = args.model or _default_model(scratch)
        rows, labels = [], {}
        for backend in BACKENDS:
            if importlib.util.find_spec(backend) is None:
                print(f"{backend}: not installed, left out")
                continue
            out = scratch / f"{backend}.npz"
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    model,
                    str(out),
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--repeats",
                    str(args.repeats),
                ],
                env={**env, "KERAS_BACKEND": backend},
                capture_output=True,
                text=True,
            )
            if run.returncode:
                sys.exit(f"{backend} failed:\n{run.stderr[-3000:]}")
            rows += json.loads(run.stdout.strip().splitlines()[-1])
            with np.load(out) as saved:
                for precision in PRECISIONS:
                    labels[backend, precision] = {i: saved[f"{precision}/{i}"] for i in SAMPLE_IDS}

    print(f"CPU: {_cpu()}")
    print(
        f"model: {args.model or 'seed architecture, random weights'}; input {args.size} x "
        f"{args.size}, batch {args.batch}, median of {args.repeats}"
    )
    reference = labels.get(("tensorflow", "float32"))
    print(
        "| backend | precision | photos/s | ms per batch | labels = float32 (same backend) "
        "| labels = TensorFlow float32 |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        key = row["backend"], row["precision"]
        same_backend = _agreement(labels[key], labels[row["backend"], "float32"])
        against_tf = (
            "-" if reference is None else f"{100 * _agreement(labels[key], reference):.3f}%"
        )
        print(
            f"| {row['backend']} | {row['precision']} | {row['photos_per_s']:.2f} | "
            f"{1000 * row['batch_s']:.0f} | {100 * same_backend:.3f}% | {against_tf} |"
        )


if __name__ == "__main__":
    main()
