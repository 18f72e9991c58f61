"""The model's own processes, which own TensorFlow, for the napari widgets.

- :mod:`.parent`: :class:`ModelProcess`, what napari's process (or a test, a script) calls;
  it starts the children, sends them jobs and routes their answers to the callers.
- :mod:`.child`: the child process itself (``python -m napari_deeplab.worker.child``).
- :mod:`.messages`: the typed messages both ways.

The child module is not imported here: it runs as ``__main__`` in the children.
"""

from .parent import (
    CHILD_MODULE,
    CONNECT_SECONDS,
    LOG_DAYS_KEPT,
    POLL_SECONDS,
    ModelProcess,
    ModelProcessError,
    Waiting,
    log_folder,
)

__all__ = [
    "CHILD_MODULE",
    "CONNECT_SECONDS",
    "LOG_DAYS_KEPT",
    "POLL_SECONDS",
    "ModelProcess",
    "ModelProcessError",
    "Waiting",
    "log_folder",
]
