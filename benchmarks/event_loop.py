"""The longest stall of napari's event loop while the Human parts widget predicts a 12 MP photo.

    xvfb-run -a .venv/bin/python benchmarks/event_loop.py [--model SRC] [--megapixels 12]

A 10 ms QTimer runs in the GUI thread of a shown viewer; its largest gap between two ticks
from pressing Run until the parts layer is drawn is the longest freeze the annotator feels.
The first run (model process start, model load, new layers) and a second run (the model
process warm, the prediction merged into the existing layer as one undo step) are reported
apart. Goal: under 100 ms. Without --model, a random-weight model is made in a child process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure_run(viewer, widget, app) -> tuple[float, float, list[float]]:
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    widget.run()
    while widget.is_running():
        app.processEvents()
        time.sleep(0.001)
    for _ in range(50):  # let the canvas draw the result
        app.processEvents()
        time.sleep(0.002)
    end = time.perf_counter()
    timer.stop()
    gaps = np.diff([start] + ticks + [end]) * 1000
    return end - start, float(gaps.max()), sorted(gaps)[-5:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model source (default: a random-weight .keras made here)")
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_deeplab._napari.prelabel_widget import PrelabelWidget
    from napari_deeplab._napari.sample_data import cihp_photo

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            model = str(Path(scratch) / "random.keras")
            make = ("import sys; from napari_deeplab.model import build_model; "
                    "build_model().save(sys.argv[1])")
            subprocess.run([sys.executable, "-c", make, model], check=True, capture_output=True)
        photo = cihp_photo()[0][0]
        height = int((args.megapixels * 1e6 * 3 / 4) ** 0.5)
        width = int(height * 4 / 3)
        big = np.asarray(Image.fromarray(photo).resize((width, height), Image.BILINEAR))

        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        viewer.add_image(big, name="photo")
        widget = PrelabelWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.model_combo.setCurrentText(model)
        print(f"photo {height} x {width} ({height * width / 1e6:.1f} MP); model {model}")
        for label in ("first run (process start, model load, new layers)",
                      "second run (warm, merged into the layer)"):
            seconds, worst, top = measure_run(viewer, widget, app)
            print(f"{label}: {seconds:.2f} s; longest event-loop stall {worst:.0f} ms "
                  f"(five longest: {', '.join(f'{g:.0f}' for g in top)} ms)", flush=True)
        viewer.close()


if __name__ == "__main__":
    main()
