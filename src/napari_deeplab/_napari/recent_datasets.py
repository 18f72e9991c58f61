"""The dataset folders used recently (remembered across sessions), for the Fine-tune widget.

A dataset is a CIHP-layout folder (``Images/``, ``Category_ids/``, ``train_id.txt`` …). The
Review queue remembers the dataset of every queue it opens, Fine-tune the one it trains on, so
Fine-tune's Dataset field offers the folders in use. Like the recent models, the list lives in
the user config folder (``$NAPARI_DEEPLAB_CONFIG`` if set) and every listener of
``recent_dataset_events.changed`` hears when it changes; :class:`DatasetChooser` lists them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from magicgui.widgets import ComboBox, Container, PushButton
from psygnal import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog

MAX_RECENT = 8


class _Events:
    changed = Signal()


recent_dataset_events = _Events()
"""``recent_dataset_events.changed`` fires when the recent list changes."""


def _config_file() -> Path:
    folder = os.environ.get("NAPARI_DEEPLAB_CONFIG")
    if not folder:
        import platformdirs

        folder = platformdirs.user_config_dir("napari-deeplab")
    return Path(folder) / "recent_datasets.json"


def recent_datasets() -> list[str]:
    """Dataset folders, most recent first (absolute paths as remembered)."""
    try:
        stored = json.loads(_config_file().read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(stored, list):
        return []
    return list(dict.fromkeys(d for d in stored if isinstance(d, str) and d))


def remember_dataset(path: str | os.PathLike) -> None:
    """Put the dataset folder ``path`` first in the recent list (nothing to do if it is first
    already; an unwritable config folder is ignored)."""
    folder = str(Path(path).expanduser().absolute())
    datasets = recent_datasets()
    if datasets[:1] == [folder]:
        return
    datasets = [folder] + [d for d in datasets if d != folder]
    config = _config_file()
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        temporary = config.with_name(f".{config.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(datasets[:MAX_RECENT], indent=1))
        os.replace(temporary, config)
    except OSError:
        return
    recent_dataset_events.changed.emit()


class DatasetChooser(Container):
    """An editable list of the recent dataset folders (type a path) with a Folder… button.

    :attr:`folder` is the text as chosen ("" when empty); the most recent one at first.
    """

    def __init__(self, label: str = "Dataset",
                 tooltip: str = "A CIHP-format dataset folder (e.g. a review queue's)"):
        self.combo = ComboBox(choices=lambda _: recent_datasets(), tooltip=tooltip)
        self.combo.native.setEditable(True)
        self.combo.native.lineEdit().setPlaceholderText("CIHP-format dataset folder")
        # a long path must not widen the dock over the canvas
        self.combo.native.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.native.setMinimumContentsLength(12)
        browse = PushButton(text="Folder…", tooltip="Choose the dataset folder")
        browse.changed.connect(self._choose_folder)
        super().__init__(widgets=[self.combo, browse], layout="horizontal", labels=False,
                         label=label)
        self.margins = (0, 0, 0, 0)
        refresh = self.reset_choices
        recent_dataset_events.changed.connect(refresh)
        self.native.destroyed.connect(lambda *_: recent_dataset_events.changed.disconnect(refresh))

    @property
    def folder(self) -> str:
        return self.combo.native.currentText().strip()

    @folder.setter
    def folder(self, text: str) -> None:
        self.combo.native.setCurrentText(str(text))

    def reset_choices(self, *_) -> None:
        """List the recent datasets again, keeping what is typed or chosen."""
        text = self.combo.native.currentText()
        super().reset_choices()
        self.combo.native.setCurrentText(text)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Dataset folder", self.folder)
        if folder:
            self.folder = folder
