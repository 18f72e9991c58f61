"""Fixtures of the napari tests. TensorFlow must never load in this test process: with
napari's OpenGL on Mesa it segfaults (docs/architecture.md), so models are made in child processes and
run in the plugin's model process; run these tests in their own pytest process."""

import subprocess
import sys
from pathlib import Path

import pytest

from . import gui

MAKE_MODEL = """
import sys, keras
from napari_deeplab.model import build_model
keras.utils.set_random_seed(int(sys.argv[2]))
build_model().save(sys.argv[1])
"""


def _make_model(path: Path, seed: int) -> str:
    subprocess.run(
        [sys.executable, "-c", MAKE_MODEL, str(path), str(seed)],
        check=True,
        capture_output=True,
        timeout=600,
    )
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
def _own_recent_lists(tmp_path_factory, monkeypatch):
    """Each test starts with empty recent models, datasets and folders, as a new user does:
    a dataset one test remembered must not be where another test's Save to dataset writes."""
    monkeypatch.setenv("NAPARI_DEEPLAB_CONFIG", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def _napari_settings_stay_in_the_test():
    """napari's settings (reader preferences that our reader registers, among them) are not
    saved to the user's settings file; make_napari_viewer resets them per test."""
    from napari.settings import get_settings

    settings = get_settings()
    saving = settings._save_on_change
    settings._save_on_change = False
    yield
    settings._save_on_change = saving


@pytest.fixture(autouse=True)
def _no_tensorflow_here():
    yield
    assert "tensorflow" not in sys.modules, "TensorFlow was loaded in napari's process"


# --- the user's path: widgets from the Plugins menu, driven through buttons and real keys -------

JOB_TIMEOUT_MS = 240_000
"""How long a test waits for model work (2 shared cores, a cold model process)."""


@pytest.fixture
def dock_plugin():
    """:func:`tests.napari.gui.dock_plugin`: ``dock_plugin(viewer, "Human parts")`` ->
    (dock, widget), as the Plugins menu opens it."""
    return gui.dock_plugin


@pytest.fixture
def run_job(qtbot):
    """``run_job(runner)`` clicks the JobRunner's Run button and waits for the job to end;
    returns its status line."""

    def run(runner, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
        runner.run_button.native.click()
        qtbot.waitUntil(lambda: not runner.running, timeout=timeout_ms)
        qtbot.wait(50)  # what the widget writes in a later turn of the event loop
        return runner.status.value

    return run


@pytest.fixture
def press_key(qtbot):
    """:func:`tests.napari.gui.press_key`: ``press_key(viewer, Qt.Key.Key_R,
    Qt.KeyboardModifier.ShiftModifier)``, a real key event on the canvas (with a QApplication:
    qtbot)."""
    return gui.press_key


@pytest.fixture
def child_processes():
    """``child_processes()`` -> the pids of this test process's children (model processes)."""
    import psutil

    return lambda: {child.pid for child in psutil.Process().children(recursive=True)}
