"""Fixtures of the engine tests, which load TensorFlow in the test process; the ``keras`` marker.

CI runs the tests marked ``keras`` again under another backend::

    KERAS_BACKEND=jax pytest tests/engine -m keras

A test that uses a model fixture (:data:`MODEL_FIXTURES`) is marked ``keras`` here; one that
runs a model otherwise (through the command line, a subprocess, the model process) marks itself
with ``@pytest.mark.keras`` or its module's ``pytestmark``. The markers are declared in
pyproject.toml; ``backends`` and ``one_backend`` keep a test out of the JAX pass.
"""

from pathlib import Path

import pytest

MODEL_FIXTURES = {"model", "model_file", "seed_checkpoint"}
"""Fixtures that load the session's Keras model: a test using one is a ``keras`` test."""

NOT_ON_EVERY_BACKEND = ("backends", "one_backend")
"""Markers of tests that run a model but are left out of the pass under another backend."""


@pytest.fixture(scope="session")
def seed_checkpoint(tmp_path_factory) -> Path:
    """A Keras-2 SavedModel made exactly as the seed was (random weights, non-default BN stats)."""
    from tests.seed_reference import save_seed_checkpoint

    return save_seed_checkpoint(tmp_path_factory.mktemp("seed") / "deeplabv3p-resnet50")


@pytest.fixture(scope="session")
def model(seed_checkpoint):
    from napari_deeplab.model import load_model

    return load_model(seed_checkpoint)


@pytest.fixture(scope="session")
def model_file(model, tmp_path_factory) -> Path:
    """The ``model`` fixture as a ``.keras`` file (float32)."""
    from napari_deeplab.model import save_model

    path = tmp_path_factory.mktemp("model_file") / "seed.keras"
    save_model(model, path)
    return path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and not any(
            item.get_closest_marker(name) for name in NOT_ON_EVERY_BACKEND
        ):
            item.add_marker(pytest.mark.keras)
