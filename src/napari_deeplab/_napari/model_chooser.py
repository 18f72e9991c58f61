"""The model chooser all widgets share, and the models used recently.

A model is a Hugging Face hub id, a SavedModel folder or a ``.keras`` file. When a run used a
new model or fine-tuning saved one, every chooser in every widget lists it.
"""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog

from .. import DEFAULT_MODEL
from .recent import RecentChooser, RecentList

RECENT_MODELS = RecentList("recent_models.json", always=(DEFAULT_MODEL,))
recent_model_events = RECENT_MODELS
"""``recent_model_events.changed`` fires when the recent list changes."""


def recent_models() -> list[str]:
    """Model sources, most recent first; the default hub model is always listed."""
    return RECENT_MODELS.items()


def remember_model(source: str) -> None:
    """Put ``source`` first in the recent list."""
    RECENT_MODELS.remember(source)


def _model_file(parent, current: str) -> str:
    return QFileDialog.getOpenFileName(parent, "Model file", "", "Keras models (*.keras)")[0]


def _model_folder(parent, current: str) -> str:
    return QFileDialog.getExistingDirectory(parent, "SavedModel folder")


class ModelChooser(RecentChooser):
    """The recent models, editable (type a hub id or a path), with File… and Folder….

    :attr:`source` is the model as chosen; :meth:`checked_source` refuses at once a model
    that cannot exist, before any process starts.
    """

    def __init__(self, label: str = "Model", tooltip: str = "The model to run"):
        super().__init__(
            RECENT_MODELS,
            {
                "File…": ("Choose a .keras model file", _model_file),
                "Folder…": (
                    "Choose a SavedModel folder (e.g. a copy of the seed model)",
                    _model_folder,
                ),
            },
            label=label,
            tooltip=f"{tooltip}: a Hugging Face hub id, a SavedModel folder or a "
            ".keras file; the models used recently are listed",
        )

    @property
    def source(self) -> str:
        """The chosen model as typed or picked (the default hub model when empty)."""
        return self.text or DEFAULT_MODEL

    @source.setter
    def source(self, text: str) -> None:
        self.text = text

    def checked_source(self) -> str:
        """:attr:`source`, or ``ValueError`` with one line if it cannot name a model."""
        from ..model_source import check_model_source

        return check_model_source(self.source)
