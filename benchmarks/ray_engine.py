"""The Ray engine against the local one: Ray's fixed overhead, and photos/s on this machine.

    .venv/bin/python -m benchmarks.ray_engine [--photos 200] [--batch-size 8] [--workers N]
        [--actors 1] [--ray-cpus N] [--address auto|HOST:PORT] [--model FILE.keras]

Photos: ``--photos`` CIHP-sized JPEGs (0.06-0.25 MP), made as ``benchmarks/throughput.py``
makes them. Model: DeepLabV3+ with random weights saved to a temporary ``.keras`` file (speed
does not depend on the weights), or ``--model``. Both engines write a fresh dataset folder
from the same photos, and the two folders are checked to be identical, byte for byte.

- ``local``: :func:`napari_deeplab.prelabel.prelabel_files` in this process with ``--workers``
  threads (default: the cores); "start" is loading the model.
- ``ray``: :func:`napari_deeplab.ray_engine.prelabel_with_ray` with ``--actors`` model actors
  on a local cluster of ``--ray-cpus`` logical CPUs (default twice the cores: the actors
  reserve fractional CPUs) or the cluster at ``--address``; "start" is ``ray.init``.

Each engine runs one job on the first batch of photos, then one on all of them (a Ray job
starts its model actors afresh: a process that imports the backend and loads the model; the
local engine's first job traces the model's graph, which each actor does too). "start": loading
the model (local) or ``ray.init`` (ray). "photos/s": all the photos over their job's time;
"beyond one batch": the photos after the first batch over the time the big job took beyond the
one-batch job. Ray's fixed overhead: its start plus its one-batch job, less the local one's.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    "engine",
    "photos",
    "workers",
    "batch",
    "start s",
    "one-batch job s",
    "job s",
    "photos/s",
    "beyond one batch photos/s",
)


def timed_job(outcomes, count: int) -> float:
    """Drain a job's ``outcomes``; its seconds. All ``count`` photos must be written."""
    started = time.perf_counter()
    statuses = [outcome.status for outcome in outcomes]
    seconds = time.perf_counter() - started
    assert statuses.count("written") == count, f"{statuses.count('written')} of {count} written"
    return seconds


def row(
    engine: str, photos: int, workers: int, batch: int, start: float, one_batch: float, job: float
) -> dict:
    beyond = (photos - batch) / (job - one_batch) if photos > batch and job > one_batch else None
    return {
        "engine": engine,
        "photos": photos,
        "workers": workers,
        "batch": batch,
        "start s": start,
        "one-batch job s": one_batch,
        "job s": job,
        "photos/s": photos / job,
        "beyond one batch photos/s": beyond,
    }


def run_local(photos, model_file, work: Path, batch, workers) -> dict:
    from napari_deeplab.model import load_model
    from napari_deeplab.prelabel import prelabel_files

    started = time.perf_counter()
    model = load_model(model_file)
    start = time.perf_counter() - started
    one_batch = timed_job(
        prelabel_files(
            photos[:batch], model, work / "one-batch", batch_size=batch, workers=workers
        ),
        len(photos[:batch]),
    )
    job = timed_job(
        prelabel_files(photos, model, work / "dataset", batch_size=batch, workers=workers),
        len(photos),
    )
    return row("local", len(photos), workers, batch, start, one_batch, job)


def run_ray(photos, model_file, work: Path, batch, actors, ray_cpus, address) -> dict:
    import ray

    from napari_deeplab.ray_engine import prelabel_with_ray

    started = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(
            num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
    start = time.perf_counter() - started
    try:

        def job(some, out):
            return timed_job(
                prelabel_with_ray(
                    [str(path) for path in some], model_file, out, batch_size=batch, workers=actors
                ),
                len(some),
            )

        one_batch = job(photos[:batch], work / "one-batch")
        seconds = job(photos, work / "dataset")
    finally:
        ray.shutdown()
    return row("ray", len(photos), actors, batch, start, one_batch, seconds)


def same_folders(left: Path, right: Path) -> bool:
    """Whether two dataset folders hold the same files with the same bytes (lock files aside)."""

    def files(root):
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".napari-deeplab.lock")
        )

    names = files(left)
    return names == files(right) and all(
        filecmp.cmp(left / name, right / name, shallow=False) for name in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="CIHP-sized photos (default 200)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the local engine (default: the cores)",
    )
    parser.add_argument("--actors", type=int, default=1, help="Ray model actors (default 1)")
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="logical CPUs of the local Ray cluster (default: twice the cores)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster instead of starting one (it must see the "
        "temporary folder: run on its head node)",
    )
    parser.add_argument("--model", default=None, help="a .keras model (default: random weights)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO / "src"))
    from benchmarks import throughput  # its photo maker and table printer

    work = Path(tempfile.mkdtemp(prefix="napari-deeplab-ray-benchmark-"))
    try:
        photos = throughput.make_photos(work / "photos", args.photos, megapixel=False)
        model_file = args.model
        if model_file is None:
            from napari_deeplab.model import build_model

            model_file = str(work / "random.keras")
            build_model().save(model_file)
        rows = [
            run_local(photos, model_file, work / "local", args.batch_size, args.workers),
            run_ray(
                photos,
                model_file,
                work / "ray",
                args.batch_size,
                args.actors,
                args.ray_cpus,
                args.address,
            ),
        ]
        identical = same_folders(work / "local" / "dataset", work / "ray" / "dataset")
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for values in rows:
            print(
                "| " + " | ".join(throughput._format(values[column]) for column in COLUMNS) + " |"
            )
        per_job = rows[1]["one-batch job s"] - rows[0]["one-batch job s"]
        print(
            f"\nRay's fixed overhead: {rows[1]['start s'] + per_job:.1f} s (ray.init "
            f"{rows[1]['start s']:.1f} s, then {per_job:.1f} s per job); "
            f"output identical to the local engine's: {'yes' if identical else 'NO'}"
        )
        if not identical:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
