"""How long the review queue takes to re-pre-label its untouched photos with another model.

    .venv/bin/python -m benchmarks.repre_label [--photos 100]

A queue of ``--photos`` CIHP-size photos (copies of the three photos of tests/data/cihp_samples,
cycled) whose drafts are only a model's (state pre-labelled), and a random-weight DeepLabV3+
standing in for the new model, saved as a .keras file. Re-pre-labelled the way the widget does
it: the photos read and segmented in the plugin's model process (:class:`ModelProcess`, the
path of pre-label-ahead), :func:`relabel_results` chunk by chunk, each draft replaced under the
queue's lock (:meth:`replace_untouched_draft`) and its score recorded in the dataset's scores
file. Prints the total, the model's share (the time waiting for segmentations) and the queue's
bookkeeping per photo (replace the draft, record the score). The model's load is timed apart
(a warm-up photo first), since the queue's model process usually has it loaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import cpu_name

HERE = Path(__file__).resolve().parents[1]
SAMPLES = HERE / "tests" / "data" / "cihp_samples" / "Images"
MAKE_MODEL = """
import sys, keras
from napari_deeplab.model import build_model
keras.utils.set_random_seed(1)
build_model().save(sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100)
    args = parser.parse_args()

    from napari_deeplab.review import ReviewQueue
    from napari_deeplab.review_queue_more import relabel_results
    from napari_deeplab.worker import ModelProcess

    scratch = Path(tempfile.mkdtemp(prefix="repre-label-"))
    try:
        model = scratch / "new.keras"
        subprocess.run([sys.executable, "-c", MAKE_MODEL, str(model)], check=True)
        photos = scratch / "photos"
        photos.mkdir()
        sources = sorted(SAMPLES.glob("*.jpg"))
        for i in range(args.photos):
            shutil.copy(sources[i % len(sources)], photos / f"{i:05d}.jpg")
        queue = ReviewQueue(photos, scratch / "dataset")
        for item in queue.items:
            with Image.open(item.photo) as photo:
                queue.save_draft(item.sample_id, np.zeros(photo.size[::-1], np.uint8), False)
        pixels = np.mean([np.prod(Image.open(p).size) for p in sources]) / 1e6

        process = ModelProcess()
        start = time.perf_counter()
        for _ in process.segment([np.zeros((64, 64, 3), np.uint8)], str(model)):
            pass
        load_s = time.perf_counter() - start

        ids = queue.untouched(str(model))
        assert len(ids) == args.photos, ids
        model_s = keep_s = 0.0
        start = time.perf_counter()
        waited = time.perf_counter()
        replaced = 0
        for result in relabel_results([queue.item(i) for i in ids], process.segment, str(model)):
            now = time.perf_counter()
            if not isinstance(result, tuple):
                continue
            model_s += now - waited
            sample_id, labels, entry = result
            replaced += queue.replace_untouched_draft(sample_id, labels)
            queue.record_scores({sample_id: entry}, str(model))
            waited = time.perf_counter()
            keep_s += waited - now
        total_s = time.perf_counter() - start
        process.close()
        assert replaced == args.photos
        cpu = cpu_name()
        print(
            f"{args.photos} untouched photos ({pixels:.2f} MP each), {cpu}, {os.cpu_count()} CPUs"
        )
        print(f"model load and warm-up: {load_s:.1f} s (once per model)")
        print(
            f"re-pre-label: {total_s:.1f} s total, {total_s / args.photos * 1000:.0f} ms/photo; "
            f"reading + model {model_s / args.photos * 1000:.0f} ms/photo, keeping (draft + "
            f"score) {keep_s / args.photos * 1000:.1f} ms/photo"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
