"""The dataset folders used recently, for the Fine-tune widget.

A dataset is a CIHP-layout folder (``Images/``, ``Category_ids/``, ``train_id.txt`` …). The
Review queue remembers the dataset of every queue it opens, Fine-tune the one it trains on, so
Fine-tune's Dataset field offers the folders in use.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from .recent import RecentChooser, RecentList

RECENT_DATASETS = RecentList("recent_datasets.json")
recent_dataset_events = RECENT_DATASETS
"""``recent_dataset_events.changed`` fires when the recent list changes."""


def recent_datasets() -> list[str]:
    """Dataset folders, most recent first (absolute paths as remembered)."""
    return RECENT_DATASETS.items()


def remember_dataset(path: str | os.PathLike) -> None:
    """Put the dataset folder ``path`` first in the recent list."""
    RECENT_DATASETS.remember(str(Path(path).expanduser().absolute()))


def _dataset_folder(parent, current: str) -> str:
    return QFileDialog.getExistingDirectory(parent, "Dataset folder", current)


class DatasetChooser(RecentChooser):
    """The recent dataset folders, editable (type a path), with Folder….

    :attr:`folder` is the text as chosen ("" when empty); the most recent one at first.
    """

    def __init__(
        self,
        label: str = "Dataset",
        tooltip: str = "A CIHP-format dataset folder (e.g. a review queue's)",
    ):
        super().__init__(
            RECENT_DATASETS,
            {"Folder…": ("Choose the dataset folder", _dataset_folder)},
            label=label,
            tooltip=tooltip,
            placeholder="CIHP-format dataset folder",
        )

    @property
    def folder(self) -> str:
        return self.text

    @folder.setter
    def folder(self, text: str) -> None:
        self.text = text
