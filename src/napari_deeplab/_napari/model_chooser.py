"""The model chooser all widgets share, and the models used recently (remembered across sessions).

A model is a Hugging Face hub id, a SavedModel folder or a ``.keras`` file. The recent list
lives in the user config folder; when it changes (a run used a new model, fine-tuning saved
one) every chooser in every widget lists the new entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from magicgui.widgets import ComboBox, Container, PushButton
from psygnal import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog

from .. import DEFAULT_MODEL

MAX_RECENT = 8


class _Events:
    changed = Signal()


recent_model_events = _Events()
"""``recent_model_events.changed`` fires when the recent list changes."""


def _config_file() -> Path:
    folder = os.environ.get("NAPARI_DEEPLAB_CONFIG")
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("napari-deeplab")
    return Path(folder) / "recent_models.json"


def recent_models() -> list[str]:
    """Model sources, most recent first; the default hub model is always listed."""
    try:
        stored = json.loads(_config_file().read_text())
        models = [m for m in stored if isinstance(m, str)] if isinstance(stored, list) else []
    except (OSError, ValueError):
        models = []
    return list(dict.fromkeys(models + [DEFAULT_MODEL]))


def remember_model(source: str) -> None:
    """Put ``source`` first in the recent list (nothing to do if it is first already; an
    unwritable config folder is ignored)."""
    models = recent_models()
    if models[0] == source:
        return
    models = [source] + [m for m in models if m != source]
    path = _config_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(models[:MAX_RECENT], indent=1))
        os.replace(temporary, path)
    except OSError:
        return
    recent_model_events.changed.emit()


class ModelChooser(Container):
    """An editable list of the recent models (type a hub id or a path) with File… and Folder…

    :attr:`source` is the text as chosen; :meth:`checked_source` refuses at once a model
    that cannot exist, before any process starts.
    """

    def __init__(self, label: str = "Model", tooltip: str = "The model to run"):
        self.combo = ComboBox(choices=lambda _: recent_models())
        self.combo.native.setEditable(True)
        # a long path must not widen the dock over the canvas: elide, show it in the tooltip
        self.combo.native.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.native.setMinimumContentsLength(12)
        self.combo.native.currentTextChanged.connect(self._show_full_text)
        self._tooltip = (f"{tooltip}: a Hugging Face hub id, a SavedModel folder or a .keras "
                         "file; the models used recently are listed")
        file_button = PushButton(text="File…", tooltip="Choose a .keras model file")
        folder_button = PushButton(text="Folder…",
                                   tooltip="Choose a SavedModel folder (e.g. a copy of the seed model)")
        file_button.changed.connect(self._choose_file)
        folder_button.changed.connect(self._choose_folder)
        super().__init__(widgets=[self.combo, file_button, folder_button], layout="horizontal",
                         labels=False, label=label)
        self.margins = (0, 0, 0, 0)
        self._show_full_text(self.source)
        refresh = self.reset_choices
        recent_model_events.changed.connect(refresh)
        self.native.destroyed.connect(lambda *_: recent_model_events.changed.disconnect(refresh))

    @property
    def source(self) -> str:
        """The chosen model as typed or picked (the default hub model when empty)."""
        return self.combo.native.currentText().strip() or DEFAULT_MODEL

    @source.setter
    def source(self, text: str) -> None:
        self.combo.native.setCurrentText(text)

    def checked_source(self) -> str:
        """:attr:`source`, or ``ValueError`` with one line if it cannot name a model."""
        from ..model_source import check_model_source

        return check_model_source(self.source)

    def reset_choices(self, *_) -> None:
        """List the recent models again, keeping what is typed or chosen."""
        text = self.combo.native.currentText()
        super().reset_choices()
        self.combo.native.setCurrentText(text)

    def _show_full_text(self, text: str) -> None:
        self.combo.native.setToolTip(f"{text}\n\n{self._tooltip}" if text else self._tooltip)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.native, "Model file", "",
                                              "Keras models (*.keras)")
        if path:
            self.source = path

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.native, "SavedModel folder")
        if path:
            self.source = path
