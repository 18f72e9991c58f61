"""Take the README's screenshots: each of the four widgets in use on the CIHP photo 0005008.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshot.py \\
        --fit-demo-model /tmp/demo.keras          # or --model SRC for a model you have

writes docs/images/human-parts.png, refine-parts.png, review-queue.png, fine-tune.png,
review-claimed.png and review-refused.png, each a shown napari window (1400 x 900) with one
widget docked from the Plugins menu and used as an annotator would:

- Human parts: Run with the model on the photo (parts and confidence layers), a class picked;
- Refine parts: a parts layer made by Human parts, a rectangle drawn in the selection layer,
  Smooth applied to it;
- Review queue: a queue over a folder of the three CIHP sample photos, the first accepted,
  the pre-labelled draft of 0005008 shown;
- Fine-tune: a few epochs on a dataset made of the three samples, with its plot;
- Review queue shared by a team (alice in this napari, bob in a second process): bob holds
  0002190 and the list says so; then an Accept refused because bob wrote the sample into the
  dataset since it was shown, with Keep mine / Open theirs. These two need no model (their
  drafts are the ground-truth masks, saved beforehand): ``--only review-claimed
  review-refused`` takes them without --model.

Without network the seed weights cannot be had, so ``--fit-demo-model OUT.keras`` first fits
a model (random start) to the three CIHP sample photos in tests/data/cihp_samples for a few
minutes on the CPU, in a child process (TensorFlow never loads in napari's), and uses it: its
"predictions" on those photos are close to their ground truth because it has seen them, which
is what the pictures are for (showing the widgets and the layers), not a measure of a model.

The widgets work in a scratch folder (the script's working directory, removed at the end), and
every path is typed relative to it (``photos``, ``datasets/cihp``, ``models/demo.keras``), so
no temporary path shows in a field or status line. The recent-model and recent-dataset lists
live there too (``$NAPARI_DEEPLAB_CONFIG``): the user's own are neither shown nor changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from napari_deeplab.cihp import ANNOTATOR_ENV

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "cihp_samples"
PHOTO_ID = "0005008"
WINDOW = (1400, 900)
SHOTS = (
    "human-parts",
    "refine-parts",
    "review-queue",
    "fine-tune",
    "review-claimed",
    "review-refused",
)
TEAM_SHOTS = ("review-claimed", "review-refused")  # no model: the drafts are saved beforehand
ME, OTHER = "alice", "bob"  # the annotator in this napari, and the one in the second process
DEMO_MODEL = "models/demo.keras"  # the paths as typed in the fields, relative to the scratch folder
DATASET, PHOTOS, TUNED, REVIEWED = (
    "datasets/cihp",
    "photos",
    "models/tuned.keras",
    "datasets/reviewed",
)
TEAM = "datasets/team"

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
masks = [Image.open(samples / "Category_ids" / (p.stem + ".png")) for p in photos]
y = np.stack([np.asarray(m.resize((size, size), Image.NEAREST)) for m in masks])
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

# the other annotator: a second process that claims a photo of the queue and holds it until its
# stdin closes, or writes a sample into the dataset (as another tool would) and ends
OTHER_ANNOTATOR = """
import sys
import numpy as np
from PIL import Image
from napari_deeplab import cihp
from napari_deeplab.review import ReviewQueue
action, photos, root, sample_id = sys.argv[1:5]
queue = ReviewQueue(photos, root)
if action == "claim":
    held = queue.claim(sample_id)
    print("claimed" if held is None else held.describe(), flush=True)
    sys.stdin.read()
    queue.release(sample_id)
else:
    photo = queue.item(sample_id).photo
    labels = np.array(Image.open(sys.argv[5]))
    labels[labels == 13] = 2  # their correction: the face painted as hair
    cihp.write_sample(root, sample_id, labels, image_path=photo, writer_tool="napari writer")
"""


# --- the scratch folder ------------------------------------------------------------------------


def make_scratch(model: Path | None) -> Path:
    """A scratch folder with ``photos/`` (the three CIHP photos), ``datasets/cihp`` (the three
    samples as Training and Validation splits), ``models/demo.keras`` (if a model is given)
    and ``config/``."""
    scratch = Path(tempfile.mkdtemp(prefix="napari-deeplab-screenshots-"))
    (scratch / PHOTOS).mkdir()
    for photo in sorted((SAMPLES / "Images").glob("*.jpg")):
        shutil.copy(photo, scratch / PHOTOS)
    for split, id_file in (("Training", "train_id.txt"), ("Validation", "val_id.txt")):
        folder = scratch / DATASET / split
        shutil.copytree(SAMPLES / "Images", folder / "Images")
        shutil.copytree(SAMPLES / "Category_ids", folder / "Category_ids")
        ids = sorted(p.stem for p in (SAMPLES / "Images").glob("*.jpg"))
        (folder / id_file).write_text("".join(f"{i}\n" for i in ids))
    (scratch / DEMO_MODEL).parent.mkdir()
    if model is not None:
        try:
            os.link(model, scratch / DEMO_MODEL)
        except OSError:
            shutil.copy(model, scratch / DEMO_MODEL)
    (scratch / "config").mkdir()
    return scratch


# --- driving the viewer ------------------------------------------------------------------------


def settle(seconds: float = 0.5) -> None:
    """Let Qt process events (repaints, results handed over in later turns) for a while."""
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_until(condition, what: str, timeout: float = 900) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.time()
    while not condition():
        if time.time() - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.01)
    settle()


def run(runner, what: str) -> str:
    """Press the widget's Run (Train, ...) button and wait for the job to end; its status."""
    runner.run_button.native.click()
    wait_until(lambda: not runner.running, what)
    status = runner.status.value
    if status.startswith("Failed") or status == "Cancelled":
        raise RuntimeError(f"{what}: {status}")
    return status


def new_viewer():
    import napari

    viewer = napari.Viewer(show=True, title="napari-deeplab")
    viewer.window._qt_window.resize(*WINDOW)
    settle()
    return viewer


def restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def save_screenshot(viewer, path: Path) -> None:
    """The whole window as a PNG, losslessly smaller: RGB (the window is opaque) and Pillow's
    optimize (a tenth to a fifth less)."""
    viewer.screenshot(str(path), canvas_only=False)
    with Image.open(path) as picture:
        picture = picture.convert("RGB")
    picture.save(path, optimize=True)


def dock(viewer, name: str):
    """Plugins > napari-deeplab > ``name``: (dock widget, widget)."""
    return viewer.window.add_plugin_dock_widget("napari-deeplab", name)


def open_photo(viewer):
    (layer,) = viewer.open(f"{PHOTOS}/{PHOTO_ID}.jpg")
    return layer


def prelabel(viewer, widget) -> str:
    widget.model.source = DEMO_MODEL
    return run(widget.runner, "Human parts")


# --- the four pictures -------------------------------------------------------------------------


def human_parts(viewer) -> str:
    open_photo(viewer)
    _, widget = dock(viewer, "Human parts")
    status = prelabel(viewer, widget)
    widget.legend.select(13)  # face: what the annotator paints with next
    return status


def refine_parts(viewer) -> str:
    photo = open_photo(viewer)
    human, widget = dock(viewer, "Human parts")
    prelabel(viewer, widget)
    viewer.window.remove_dock_widget(human)  # the parts layer stays; now only Refine parts
    settle()
    _, widget = dock(viewer, "Refine parts")
    widget.draw_selection.native.click()  # adds '<photo> parts selection', rectangle mode
    selection = viewer.layers[f"{photo.name} parts selection"]
    height, width = photo.data.shape[:2]
    selection.add_rectangles([[0.45 * height, 0.1 * width], [0.95 * height, 0.9 * width]])
    widget.radius.value = 2
    widget.buttons["smooth"].native.click()
    wait_until(lambda: not widget.runner.running, "Refine parts")
    return widget.runner.status.value


def review_queue(viewer) -> str:
    _, widget = dock(viewer, "Review queue")
    widget.photos.line_edit.value = PHOTOS  # typed: FileEdit.value would make them absolute
    widget.dataset.line_edit.value = REVIEWED
    widget.model.source = DEMO_MODEL
    widget.open_button.native.click()
    wait_until(lambda: not widget.prelabelling, "Review queue pre-labelling")
    widget.accept_button.native.click()  # the first photo's draft is fine: export it, show the next
    wait_until(lambda: not widget.prelabelling, "Review queue pre-labelling ahead")
    if widget.shown_id != PHOTO_ID:
        raise RuntimeError(f"Review queue shows {widget.shown_id}, not {PHOTO_ID}")
    return widget.status.value


def other_annotator(action: str, sample_id: str, **popen) -> subprocess.Popen:
    """Start :data:`OTHER_ANNOTATOR` as bob (his name in the queue's claims and the dataset's
    writer records)."""
    env = {**os.environ, ANNOTATOR_ENV: OTHER}
    mask = SAMPLES / "Category_ids" / f"{sample_id}.png"
    return subprocess.Popen(
        [sys.executable, "-c", OTHER_ANNOTATOR, action, PHOTOS, TEAM, sample_id, str(mask)],
        env=env,
        **popen,
    )


def open_team_queue(viewer):
    """The queue of ``photos`` into ``datasets/team``, each photo's draft (the ground-truth
    mask, as the model's pre-label) saved beforehand; docked and opened as alice."""
    from qtpy.QtCore import Qt

    from napari_deeplab.review import ReviewQueue

    earlier = ReviewQueue(PHOTOS, TEAM)
    for item in earlier.items:
        mask = np.array(Image.open(SAMPLES / "Category_ids" / f"{item.sample_id}.png"))
        earlier.save_draft(item.sample_id, mask, corrected=False)
    dock_widget, widget = dock(viewer, "Review queue")
    # wide enough for the list's "claimed by bob@host (process N) since hh:mm:ss UTC"
    viewer.window._qt_window.resizeDocks([dock_widget], [570], Qt.Orientation.Horizontal)
    widget.photos.line_edit.value = PHOTOS
    widget.dataset.line_edit.value = TEAM
    widget.open_button.native.click()
    settle()
    return widget


def review_claimed(viewer) -> Iterator[str]:
    # bob holds 0002190 (the first photo) in his process, so alice's queue starts on 0005008
    bob = other_annotator(
        "claim", "0002190", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        answer = bob.stdout.readline().strip()
        if answer != "claimed":
            raise RuntimeError(f"{OTHER} did not claim 0002190: {answer or bob.wait()}")
        widget = open_team_queue(viewer)
        if widget.shown_id != PHOTO_ID:
            raise RuntimeError(f"Review queue shows {widget.shown_id}, not {PHOTO_ID}")
        widget.go_to(0)  # alice double-clicks bob's photo: refused, saying who has it
        settle()
        yield widget.status.value
    finally:
        bob.stdin.close()
        bob.wait(60)


def review_refused(viewer) -> Iterator[str]:
    from napari_deeplab._napari.review_widget import MIN_SEEN_S

    widget = open_team_queue(viewer)
    widget.go_to(1)
    if widget.shown_id != PHOTO_ID:
        raise RuntimeError(f"Review queue shows {widget.shown_id}, not {PHOTO_ID}")
    settle(MIN_SEEN_S + 0.5)  # looked at long enough to Accept
    bob = other_annotator("write", PHOTO_ID)  # meanwhile bob saves his 0005008 into the dataset
    if bob.wait(120):
        raise RuntimeError(f"{OTHER} could not write {PHOTO_ID} into {TEAM}")
    widget.accept_button.native.click()
    if not widget.choice_row.visible:
        raise RuntimeError(f"Accept was not refused: {widget.status.value}")
    yield widget.status.value


def fine_tune(viewer, epochs: int) -> str:
    # the photo and its corrected parts, as File > Open of the dataset's mask shows them
    viewer.open(f"{DATASET}/Training/Category_ids/{PHOTO_ID}.png", plugin="napari-deeplab")
    _, widget = dock(viewer, "Fine-tune")
    widget.dataset.folder = DATASET
    widget.model.source = DEMO_MODEL
    widget.out.value = TUNED
    widget.epochs.value = epochs
    widget.batch_size.value = 3
    widget.image_size.value = 256
    widget.learning_rate.value = 1e-4
    return run(widget.runner, "Fine-tune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras model to run in the widgets")
    parser.add_argument(
        "--fit-demo-model",
        metavar="OUT.keras",
        help="first fit a demo model to the CIHP sample photos, save and use it",
    )
    parser.add_argument("--steps", type=int, default=400, help="of the demo model's fit")
    parser.add_argument("--epochs", type=int, default=6, help="of the Fine-tune picture")
    parser.add_argument("--only", nargs="+", choices=SHOTS, default=list(SHOTS))
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    started = time.time()
    model = args.model
    if args.fit_demo_model:
        subprocess.run(
            [sys.executable, "-c", FIT, args.fit_demo_model, str(SAMPLES), str(args.steps)],
            check=True,
        )
        model = args.fit_demo_model
        print(f"fitted {model} in {time.time() - started:.0f} s", flush=True)
    needs_model = any(name not in TEAM_SHOTS for name in args.only)
    if model and not Path(model).expanduser().is_file() or needs_model and not model:
        parser.error("give --model FILE.keras or --fit-demo-model OUT.keras")
    out_dir = Path(args.out_dir).resolve()
    scratch = make_scratch(Path(model).expanduser().resolve() if model else None)
    os.environ["NAPARI_DEEPLAB_CONFIG"] = str(scratch / "config")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.chdir(scratch)
    takes = {
        "human-parts": human_parts,
        "refine-parts": refine_parts,
        "review-queue": review_queue,
        "fine-tune": lambda viewer: fine_tune(viewer, args.epochs),
        "review-claimed": review_claimed,
        "review-refused": review_refused,
    }
    try:
        for name in args.only:
            shot = time.time()
            viewer, shot_steps = new_viewer(), None
            try:
                if name in TEAM_SHOTS:
                    user = os.environ.get(ANNOTATOR_ENV)
                    os.environ[ANNOTATOR_ENV] = ME  # this napari's annotator
                    # a generator: the shot is taken while the other annotator holds his claim
                    shot_steps = takes[name](viewer)
                    status = next(shot_steps)
                else:
                    status = takes[name](viewer)
                viewer.reset_view()  # the whole photo beside the dock
                viewer.status = ""  # not the status of wherever the pointer last was
                settle(1.0)
                path = out_dir / f"{name}.png"
                if name in TEAM_SHOTS:
                    viewer.help = ""  # the layer's key help, cut off: the widget is the subject
                save_screenshot(viewer, path)
                print(f"saved {path} in {time.time() - shot:.0f} s: {status}", flush=True)
            finally:
                if shot_steps is not None:
                    shot_steps.close()  # the other annotator lets go
                if name in TEAM_SHOTS:
                    restore_env(ANNOTATOR_ENV, user)
                viewer.close()
                settle()
    finally:
        os.chdir(REPO)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
