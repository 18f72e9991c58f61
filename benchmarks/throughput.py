"""Pre-labelling throughput: serial against pipelined ``predict``, with the host's CPU cost per stage.

    .venv/bin/python -m benchmarks.throughput [--photos 200] [--megapixel-photos 50]
        [--backend tensorflow jax] [--precision float32 bfloat16] [--batch-size 8]
        [--workers N] [--no-training] [--stand-in-model]

Photos: ``--photos`` CIHP-sized JPEGs (0.06-0.25 MP, resized copies of the three samples in
``tests/data/cihp_samples``, quality 90) and ``--megapixel-photos`` 1-megapixel ones
(866 x 1155). Model: DeepLabV3+ with random weights saved to a temporary ``.keras`` file
(speed does not depend on the weights; the JAX backend loads ``.keras`` files).

Each (backend, precision) runs in its own process with ``KERAS_BACKEND`` set, after one
untimed warm-up batch, through :func:`napari_deeplab.prelabel.prelabel_files` into a fresh
dataset folder:

- ``serial`` (``workers=1``): everything in one thread; each stage's CPU time is
  ``time.process_time`` around it (so it counts the threads OpenCV or the model start), which
  is the host's cost per photo: read (decode), resize (to the model input), model, upsample,
  encode (two PNGs, the photo copied, fsynced) and commit (group commits, their fsyncs);
- ``pipelined`` (``workers`` = the cores, or ``--workers``): the stages' thread CPU time
  (``time.thread_time``; the model's own threads not counted).

``--stand-in-model`` takes the model out of the measure: a small model with DeepLabV3+'s
interface (:func:`stand_in_model`) whose outputs for the first batch are replayed for every
batch, so the model stage costs nothing and photos/s is what the host side alone sustains,
serial and with ``--workers`` threads: what can feed a GPU.

"host" is the sum of the stages other than the model: the CPU one photo costs around the
model. Photos/s is the wall time from the first read to the last commit. The JAX path never
imports TensorFlow, so this runs on a machine that has JAX and no TensorFlow.

Training rows come from ``benchmarks/training_throughput.py``: its
``training_rows(args) -> list[dict]`` (given this script's options, ``--training-size``,
``--training-batch``, ``--training-steps`` and ``--training-photos`` passed through) gives rows
with any of :data:`COLUMNS` as keys (missing ones print as "-"); all rows are printed as one
table.
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
SAMPLES = REPO / "tests" / "data" / "cihp_samples" / "Images"
STAGES = ("read", "resize", "model", "upsample", "encode", "commit")
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
    *STAGES,
    "host",
)
"""The table's columns: per-stage figures are CPU milliseconds per photo."""
MEGAPIXEL_SHAPE = (866, 1155)


def make_photos(folder: Path, count: int, megapixel: bool, seed: int = 0) -> list[Path]:
    """``count`` JPEGs in ``folder`` made from the CIHP samples: CIHP-sized (0.06-0.25 MP, aspect
    0.6-1.6) or 1 MP. Returns their paths, in name order."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        if megapixel:
            height, width = MEGAPIXEL_SHAPE
        else:
            pixels, aspect = rng.uniform(0.06e6, 0.25e6), rng.uniform(0.6, 1.6)
            height, width = int((pixels * aspect) ** 0.5), int((pixels / aspect) ** 0.5)
        path = folder / f"photo{number:05d}.jpg"
        sources[number % len(sources)].resize((width, height), Image.BILINEAR).save(
            path, quality=90
        )
        paths.append(path)
    return paths


def stand_in_model():
    """A model of negligible cost with DeepLabV3+'s interface (N x 512 x 512 x 3 in 0..255 ->
    N x 512 x 512 x 20 logits, the 128 x 128 grid upsampled x4 in the graph, as the real one):
    4 x 4 average pooling, a random 1 x 1 convolution. Its class boundaries follow the photo's
    colours, so the upsampling has at least as much to do as with a real model's."""
    import keras

    from napari_deeplab.model import BilinearUpsampling, ModelInfo

    rgb = keras.Input(shape=(None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(rgb)
    x = keras.layers.AveragePooling2D(4)(x)
    x = keras.layers.Conv2D(20, 1, kernel_initializer=keras.initializers.RandomNormal(0, 4))(x)
    return keras.Model(rgb, ModelInfo()(BilinearUpsampling(4)(x)))


def _replay_model_outputs() -> None:
    """Make the model stage free: each batch size's first outputs are kept and returned again
    for every later batch of that size (the upsampling then has the stand-in's boundaries)."""
    from napari_deeplab import inference

    computed = inference.batch_outputs
    recorded: dict[int, list] = {}

    def replay(model, inputs):
        if len(inputs) not in recorded:
            recorded[len(inputs)] = computed(model, inputs)
        return recorded[len(inputs)]

    inference.batch_outputs = replay


def _child(options: dict) -> None:
    """In a fresh process (KERAS_BACKEND set): time serial and pipelined runs; print JSON rows."""
    from napari_deeplab.model import load_model
    from napari_deeplab.pipeline import StageClock
    from napari_deeplab.prelabel import prelabel_files

    if options["stand_in"]:
        model = stand_in_model()
        _replay_model_outputs()
    else:
        model = load_model(options["model"], precision=options["precision"])
    work = Path(options["work"])
    warm_up = sorted(Path(options["warm_up"]).glob("*.jpg"))
    for _ in prelabel_files(warm_up, model, work / "warm-up", batch_size=options["batch"]):
        pass
    for size, folder in options["sets"].items():
        photos = sorted(Path(folder).glob("*.jpg"))
        for mode, workers in (("serial", 1), ("pipelined", options["workers"])):
            clock = StageClock(process=workers == 1)
            out = work / f"{size}-{mode}"
            start = time.perf_counter()
            outcomes = list(
                prelabel_files(
                    photos, model, out, batch_size=options["batch"], workers=workers, clock=clock
                )
            )
            seconds = time.perf_counter() - start
            assert all(outcome.status == "written" for outcome in outcomes), outcomes
            stages = clock.milliseconds_per_item()
            row = {
                "task": "predict (stand-in model)" if options["stand_in"] else "predict",
                "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                "precision": options["precision"],
                "photos": len(photos),
                "size": size,
                "mode": mode,
                "workers": workers,
                "batch": options["batch"],
                "photos/s": len(photos) / seconds,
                **{stage: stages.get(stage) for stage in STAGES},
                "host": sum(stages.get(stage, 0.0) for stage in STAGES if stage != "model"),
            }
            print("ROW " + json.dumps(row), flush=True)
            shutil.rmtree(out)
    if os.environ.get("KERAS_BACKEND") == "jax" and "tensorflow" in sys.modules:
        raise SystemExit("TensorFlow was imported on the JAX path")


def _make_model(path: str) -> None:
    from napari_deeplab.model import build_model

    build_model().save(path)


def _run_child(args: list[str], backend: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True
    )


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """One markdown table of ``rows`` (dicts keyed by :data:`COLUMNS`)."""
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(_format(row.get(column)) for column in COLUMNS) + " |")


def _training_rows(args) -> list[dict]:
    if args.no_training:
        return []
    from benchmarks import training_throughput

    return training_throughput.training_rows(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="CIHP-sized photos (0 for none)")
    parser.add_argument("--megapixel-photos", type=int, default=50, help="1-MP photos (0 for none)")
    parser.add_argument(
        "--backend", nargs="+", default=["tensorflow", "jax"], choices=("tensorflow", "jax")
    )
    parser.add_argument(
        "--precision", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16")
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the pipelined runs (default: the cores)",
    )
    parser.add_argument("--model", default=None, help="a .keras model (default: random weights)")
    parser.add_argument("--no-training", action="store_true", help="leave out the training rows")
    parser.add_argument(
        "--stand-in-model",
        action="store_true",
        help="a model of negligible cost instead of DeepLabV3+: the photos/s the "
        "host side alone sustains (what feeds a GPU)",
    )
    for name, meaning in (
        ("size", "square side (px)"),
        ("batch", "batch size"),
        ("steps", "timed steps"),
        ("photos", "photos in the dataset"),
    ):
        parser.add_argument(
            f"--training-{name}",
            type=int,
            default=argparse.SUPPRESS,
            help=f"training rows: {meaning} (see training_throughput.py)",
        )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--make-model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if args.make_model:
        _make_model(args.make_model)
        return

    work = Path(tempfile.mkdtemp(prefix="napari-deeplab-throughput-"))
    try:
        sets = {}
        if args.photos:
            make_photos(work / "cihp-sized", args.photos, megapixel=False)
            sets["CIHP-sized"] = str(work / "cihp-sized")
        if args.megapixel_photos:
            make_photos(work / "1mp", args.megapixel_photos, megapixel=True)
            sets["1 MP"] = str(work / "1mp")
        make_photos(work / "warm-up", args.batch_size, megapixel=False, seed=1)
        model = args.model
        if model is None and sets and not args.stand_in_model:
            model = str(work / "random.keras")
            made = _run_child(["--make-model", model], args.backend[0])
            if made.returncode:
                raise SystemExit(f"could not build the model:\n{made.stderr[-3000:]}")
        rows = []
        for backend in args.backend if sets else []:
            for precision in args.precision:
                options = {
                    "model": model,
                    "precision": precision,
                    "sets": sets,
                    "work": str(work / f"{backend}-{precision}"),
                    "batch": args.batch_size,
                    "workers": args.workers,
                    "warm_up": str(work / "warm-up"),
                    "stand_in": args.stand_in_model,
                }
                run = _run_child(["--child", json.dumps(options)], backend)
                found = [
                    json.loads(line[4:])
                    for line in run.stdout.splitlines()
                    if line.startswith("ROW ")
                ]
                if run.returncode or not found:
                    print(f"{backend} {precision}: failed\n{run.stderr[-3000:]}", file=sys.stderr)
                for row in found:
                    print(
                        " ".join(f"{key}={_format(value)}" for key, value in row.items()),
                        file=sys.stderr,
                        flush=True,
                    )
                rows += found
        rows += _training_rows(args)
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
