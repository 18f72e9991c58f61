"""The models used recently, remembered across napari sessions in the user config folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from psygnal import Signal

from .. import DEFAULT_MODEL


class _Events:
    changed = Signal()


events = _Events()
"""``events.changed`` fires when the list changes (a widget refreshes its model choices)."""

MAX_RECENT = 8


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
        models = [m for m in stored if isinstance(m, str)]
    except (OSError, ValueError):
        models = []
    return list(dict.fromkeys(models + [DEFAULT_MODEL]))


def remember_model(source: str) -> None:
    """Put ``source`` first in the list (best effort: an unwritable config is ignored)."""
    models = [source] + [m for m in recent_models() if m != source]
    path = _config_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(models[:MAX_RECENT], indent=1))
    except OSError:
        pass
    events.changed.emit()
