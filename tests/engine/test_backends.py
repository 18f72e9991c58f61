"""Keras on JAX: ``predict``, ``evaluate`` and ``finetune`` from a ``.keras`` model in a process
where TensorFlow cannot be imported (a GPU machine has JAX and no TensorFlow), and the labels
of both backends compared on the CIHP samples.

These tests run TensorFlow (this process) against JAX (a subprocess) themselves, so the JAX
pass of CI (``-m keras``) leaves them out: they are marked ``backends``, not ``keras``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from napari_deeplab.cihp import read_id_list
from napari_deeplab.inference import segment
from napari_deeplab.model import cache_dir, load_model, model_precision
from tests.conftest import SAMPLE_IDS

pytestmark = pytest.mark.backends

REPO = Path(__file__).resolve().parents[2]

BLOCK_TENSORFLOW = """
import importlib.abc, json, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())  # as on a machine where it is not installed
from napari_deeplab.cli import main
"""

WITHOUT_TENSORFLOW = (
    BLOCK_TENSORFLOW
    + """
codes = [main(argv) for argv in json.loads(sys.argv[1])]
import keras
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow")
print(json.dumps({"codes": codes, "backend": keras.backend.backend(), "tensorflow": loaded}))
"""
)


@pytest.fixture(scope="module")
def jax_run(model_file, seed_checkpoint, cihp_samples, tmp_path_factory):
    """``predict``, ``evaluate``, a 1-epoch ``finetune`` and ``predict`` from the seed
    SavedModel (nothing converted in the cache), all under JAX without TensorFlow, in one
    subprocess. Returns (its result, its stdout's last line as JSON, the work folder)."""
    work = tmp_path_factory.mktemp("jax")
    commands = [
        [
            "predict",
            str(cihp_samples / "Images"),
            "--model",
            str(model_file),
            "--out",
            str(work / "predicted"),
            "--batch-size",
            "1",
        ],
        [
            "evaluate",
            str(cihp_samples),
            "--split",
            "Training",
            "--model",
            str(model_file),
            "--json",
        ],
        [
            "finetune",
            str(cihp_samples),
            "--model",
            str(model_file),
            "--out",
            str(work / "tuned.keras"),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--image-size",
            "64",
        ],
        [
            "predict",
            str(cihp_samples / "Images" / "0005008.jpg"),
            "--model",
            str(seed_checkpoint),
            "--out",
            str(work / "from_seed"),
        ],
    ]
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": str(REPO / "src"),
        "NAPARI_DEEPLAB_CACHE": str(work / "empty-cache"),  # nothing converted
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir() / "jax"),
    }  # the session's
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=work,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run, json.loads(run.stdout.strip().splitlines()[-1]), work


def test_predict_evaluate_and_finetune_run_on_jax_without_tensorflow(jax_run, cihp_samples):
    run, summary, work = jax_run
    assert summary["backend"] == "jax" and summary["tensorflow"] == []
    assert summary["codes"] == [0, 0, 0, 2], run.stderr[-3000:]
    assert read_id_list(work / "predicted", "Training") == list(SAMPLE_IDS)
    scores = json.loads(run.stdout[run.stdout.index("{") : run.stdout.index("\n}") + 2])
    assert 0 <= scores["miou"] <= 1 and set(scores["per_class"]) >= {"background", "face"}
    assert "epoch 1/1: loss" in run.stdout
    tuned = load_model(work / "tuned.keras")  # written by JAX, read here by TensorFlow
    assert model_precision(tuned) == "float32"
    # the seed SavedModel needs TensorFlow to be converted: one line says how to do without it
    lines = [line for line in run.stderr.splitlines() if line.startswith("napari-deeplab: error")]
    assert len(lines) == 1 and "converting the seed SavedModel needs TensorFlow" in lines[0]
    assert "napari-deeplab convert" in lines[0] and not (work / "from_seed").exists()


def test_jax_and_tensorflow_give_the_same_labels_on_the_cihp_samples(
    jax_run, model_file, cihp_samples
):
    assert keras.backend.backend() == "tensorflow", "run this module under TensorFlow (the default)"
    _, _, work = jax_run
    model = load_model(model_file)
    for sample_id in SAMPLE_IDS:
        photo = np.asarray(Image.open(cihp_samples / "Images" / f"{sample_id}.jpg"))
        labels, _ = segment(photo, model)
        on_jax = np.asarray(
            Image.open(work / "predicted" / "Training" / "Category_ids" / f"{sample_id}.png")
        )
        agreement = (labels == on_jax).mean()
        assert agreement >= 0.999, f"{sample_id}: {agreement:.5f} of the pixels agree"
        assert len(np.unique(labels)) > 1  # not two constant maps


def test_without_tensorflow_the_default_backend_says_what_to_install(cihp_samples, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("KERAS_BACKEND", None)
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCK_TENSORFLOW + "sys.exit(main(sys.argv[1:]))",
            "predict",
            str(cihp_samples / "Images"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "TensorFlow is not installed" in line and "KERAS_BACKEND=jax" in line
    assert not (tmp_path / "out").exists()
