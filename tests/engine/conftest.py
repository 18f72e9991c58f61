"""Fixtures of the engine tests, which load TensorFlow in the test process."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def seed_checkpoint(tmp_path_factory) -> Path:
    """A Keras-2 SavedModel made exactly as the seed was (random weights, non-default BN stats)."""
    from tests.seed_reference import save_seed_checkpoint

    return save_seed_checkpoint(tmp_path_factory.mktemp("seed") / "deeplabv3p-resnet50")


@pytest.fixture(scope="session")
def model(seed_checkpoint):
    from napari_deeplab.model import load_model

    return load_model(seed_checkpoint)
