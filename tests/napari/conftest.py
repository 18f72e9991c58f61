"""Fixtures of the napari tests. TensorFlow must never load in this test process: with
napari's OpenGL on Mesa it segfaults (docs/architecture.md), so models are made in child processes and
run in the plugin's model process; run these tests in their own pytest process."""

import subprocess
import sys
from pathlib import Path

import pytest

MAKE_MODEL = """
import sys, keras
from napari_deeplab.model import build_model
keras.utils.set_random_seed(int(sys.argv[2]))
build_model().save(sys.argv[1])
"""


def _make_model(path: Path, seed: int) -> str:
    subprocess.run([sys.executable, "-c", MAKE_MODEL, str(path), str(seed)], check=True,
                   capture_output=True, timeout=600)
    return str(path)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> str:
    """A DeepLabV3+ .keras file with random weights, made in a child process."""
    return _make_model(tmp_path_factory.mktemp("models") / "random0.keras", 0)


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory) -> str:
    """A second random model, standing in for a fine-tuned one."""
    return _make_model(tmp_path_factory.mktemp("models") / "random1.keras", 1)


@pytest.fixture(autouse=True)
def _no_tensorflow_here():
    yield
    assert "tensorflow" not in sys.modules, "TensorFlow was loaded in napari's process"
