import os
import tempfile
from pathlib import Path

# Tests never touch the network or the user's cache: set before anything imports the hub client.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_CACHE = tempfile.mkdtemp(prefix="napari-deeplab-test-cache-")
os.environ["NAPARI_DEEPLAB_CACHE"] = _SESSION_CACHE
os.environ["HF_HOME"] = os.path.join(_SESSION_CACHE, "hf-home")
os.environ["NAPARI_DEEPLAB_CONFIG"] = os.path.join(_SESSION_CACHE, "config")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

CIHP_SAMPLES = Path(__file__).resolve().parent / "data" / "cihp_samples"
SAMPLE_IDS = ("0002190", "0005008", "0026375")


@pytest.fixture(scope="session")
def cihp_samples() -> Path:
    """The real CIHP samples in ``tests/data/cihp_samples`` (see ``tests/data/README.md``)."""
    return CIHP_SAMPLES


@pytest.fixture(scope="session")
def cihp_photo(cihp_samples) -> np.ndarray:
    return np.asarray(Image.open(cihp_samples / "Images" / "0005008.jpg"))


def pytest_collection_modifyitems(config, items):
    """TensorFlow (engine tests) and napari's OpenGL (napari tests) crash in one process."""
    suites = {Path(str(item.fspath)).parent.name for item in items} & {"engine", "napari"}
    if len(suites) > 1:
        raise pytest.UsageError(
            "run tests/engine and tests/napari in separate pytest processes "
            "(TensorFlow crashes napari's OpenGL): see README.md"
        )
