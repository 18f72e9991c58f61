"""Data-parallel fine-tuning (keras.distribution on JAX): the same weights as on one device.

JAX reads ``XLA_FLAGS`` (two simulated CPU devices) and Keras ``KERAS_BACKEND`` when first
imported, so the training runs in a subprocess of its own, where TensorFlow cannot be imported
(as on a GPU machine that has only JAX).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from napari_deeplab.cli import main

REPO = Path(__file__).resolve().parents[2]

ON_ONE_AND_ON_TWO_DEVICES = """
import importlib.abc, json, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):  # as on a GPU machine with JAX only
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ImportError("no TensorFlow here")

sys.meta_path.insert(0, NoTensorFlow())
import jax, keras, numpy as np
from napari_deeplab.distributed import DevicesError
from napari_deeplab.model import build_model
from napari_deeplab.training import finetune, training_and_validation

train, val = training_and_validation(sys.argv[1], "Training", None)
keras.utils.set_random_seed(0)
start = build_model().get_weights()
models = {None: build_model(), 2: build_model()}  # made outside any distribution
refused = []
for devices, batch_size in ((3, 2), (2, 3)):  # more devices than there are; batch not divisible
    try:
        next(finetune(models[2], train, val, sys.argv[2] + "/refused.keras", epochs=1,
                      batch_size=batch_size, image_size=64, devices=devices))
    except DevicesError as error:
        refused.append(str(error))
weights, losses, placed_on = {}, {}, {}
for devices, model in models.items():
    model.set_weights(start)  # finetune lays the variables out under its distribution
    reports = list(finetune(model, train, val, f"{sys.argv[2]}/{devices}.keras", epochs=3,
                            batch_size=2, image_size=64, learning_rate=1e-3, devices=devices))
    losses[str(devices)] = [r.loss for r in reports[1:]]
    weights[devices] = model.get_weights()
    placed_on[str(devices)] = len(model.trainable_variables[0].value.sharding.device_set)
print(json.dumps({
    "devices": jax.device_count(), "refused": refused, "losses": losses, "placed_on": placed_on,
    "difference": max(float(np.abs(a - b).max()) for a, b in zip(weights[None], weights[2])),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(start, weights[2]))}))
"""


@pytest.mark.backends  # runs JAX in its subprocess, whatever the backend here
def test_two_devices_train_the_same_weights_as_one(cihp_samples, tmp_path):
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": str(REPO / "src"),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    run = subprocess.run(
        [sys.executable, "-c", ON_ONE_AND_ON_TWO_DEVICES, str(cihp_samples), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["placed_on"] == {"None": 1, "2": 2}
    assert "--devices 3: this machine has 2 CPU devices" in result["refused"][0]
    assert "--batch-size 3 is not a multiple of the 2 devices" in result["refused"][1]
    assert result["moved"] > 1e-3  # three steps changed the weights
    assert result["difference"] < 1e-5, result
    assert len(result["losses"]["2"]) == 3


@pytest.mark.keras
def test_devices_that_cannot_be_used_are_refused_in_one_line(cihp_samples, tmp_path, capsys):
    assert (
        main(
            [
                "finetune",
                str(cihp_samples),
                "--model",
                str(tmp_path / "unused.keras"),
                "--out",
                str(tmp_path / "t.keras"),
                "--devices",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    why = (
        "set KERAS_BACKEND=jax"
        if keras.backend.backend() == "tensorflow"
        else "--devices 2: this machine has 1 CPU device"
    )  # JAX on this machine's one CPU device
    assert len(err) == 1 and why in err[0], err
    assert not (tmp_path / "t.keras").exists()
