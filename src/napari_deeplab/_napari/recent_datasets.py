"""The dataset folders used recently (remembered across sessions), for the Fine-tune widget.

A dataset is a CIHP-layout folder (``Images/``, ``Category_ids/``, ``train_id.txt`` …). The
Review queue remembers the dataset of every queue it opens, Fine-tune the one it trains on, so
Fine-tune's Dataset field offers the folders in use. Like the recent models, the list lives in
the user config folder (``$NAPARI_DEEPLAB_CONFIG`` if set) and every listener of
``recent_dataset_events.changed`` hears when it changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from psygnal import Signal

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
