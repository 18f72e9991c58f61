"""Take the README's screenshot: the Human parts widget docked beside a CIHP photo and its parts.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshot.py --model SRC

Without network the seed weights cannot be had, so ``--fit-demo-model OUT.keras`` first
fits a model (random start) to the three CIHP sample photos in ../shared/data for a few
minutes on the CPU and uses it: its "predictions" on those photos are close to their ground
truth because it has seen them, which is what the picture is for (showing the widget and the
layer), not a measure of the model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "cihp_samples"

FIT = """
import sys, numpy as np, keras
from pathlib import Path
from PIL import Image
from napari_deeplab.model import build_model
from napari_deeplab.inference import model_input
size, out, samples, steps = 256, sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
photos = sorted((samples / "Images").glob("*.jpg"))
x = np.stack([model_input(np.asarray(Image.open(p)), size) for p in photos])
y = np.stack([np.asarray(Image.open(samples / "Category_ids" / (p.stem + ".png")).resize((size, size), Image.NEAREST)) for p in photos])
model = build_model(input_size=size)
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x, y = np.concatenate([x, x[:, :, ::-1]]), np.concatenate([y, y[:, :, ::-1]])
model.fit(x, y, batch_size=3, epochs=steps // 4, verbose=2)
# then with batch norm in inference mode, so that training and prediction agree
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False
model.compile(keras.optimizers.Adam(3e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=3, epochs=steps // 4, verbose=2)
model.save(out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model source to run in the widget")
    parser.add_argument("--fit-demo-model", metavar="OUT.keras",
                        help="first fit a demo model to the CIHP sample photos and use it")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "widget.png"))
    args = parser.parse_args()
    model = args.model
    if args.fit_demo_model:
        subprocess.run([sys.executable, "-c", FIT, args.fit_demo_model, str(SAMPLES),
                        str(args.steps)], check=True)
        model = args.fit_demo_model

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-deeplab")
    viewer.window._qt_window.resize(1500, 860)
    viewer.open_sample("napari-deeplab", "cihp-photo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeplab", "Human parts")
    widget.model_combo.setCurrentText(model)
    widget.run()
    app = QApplication.instance()
    start = time.time()
    while widget.is_running() and time.time() - start < 600:
        app.processEvents()
        time.sleep(0.01)
    widget.legend.setCurrentRow(13)
    for _ in range(100):
        app.processEvents()
        time.sleep(0.01)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"saved {args.out}: {widget.status.text()}")
    viewer.close()


if __name__ == "__main__":
    main()
