"""Which reader napari uses for our files, without its "Choose reader" dialog.

npe2 (0.10) matches a manifest's ``filename_patterns`` against the file's *name* only (it drops
the folders), so ``*.png`` is the narrowest pattern a ``Category_ids`` mask can be claimed by,
and every folder goes to every reader that accepts directories. With napari's builtins also
claiming ``*.png`` and folders, napari then asks about every PNG and every folder. napari's
reader preferences (``settings.plugins.extension2reader``, Preferences > Plugins) are matched
against the full path, the most specific pattern winning (``napari.plugins.utils
.get_preferred_reader``); that is where the narrow patterns go:

- ``*/Category_ids/*.png`` and the split folders ``*/Training/`` ... -> napari-deeplab
  (more specific than a user's ``*.png``, so a mask opens as parts even where the user told
  napari to read PNGs with its own reader);
- ``*.png`` -> napari's builtins, only where the user has chosen nothing for ``*.png``: a
  plain PNG then opens as it would without this plugin, without asking;
- each dataset root our reader opened (its absolute path, as napari's own dialog remembers a
  folder) -> napari-deeplab.

A user's own entry for a pattern is never replaced. Whatever napari hands our reader that is
not a CIHP sample, it hands back to napari's own reader (``io.get_reader``), so even a
"remember napari-deeplab for .png" keeps plain photos opening.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import cihp

PLUGIN = "napari-deeplab"
NAPARI_BUILTINS = "napari"
"""The plugin name of napari's own reader (its display name is "napari builtins")."""

OUR_PATTERNS = (
    f"*{os.sep}Category_ids{os.sep}*.png",
    *(f"*{os.sep}{split}{os.sep}" for split in cihp.SPLIT_ID_FILES),
)
"""Full-path patterns, as napari's preferences match them (a folder's path ends in ``os.sep``)."""

PLAIN_PATTERNS = {"*.png": NAPARI_BUILTINS}
"""Set only where the user chose nothing for them."""


def folder_pattern(folder: str | os.PathLike) -> str:
    """The preference key napari's dialog writes for a folder: its real path and ``os.sep``."""
    return os.path.realpath(str(folder)).rstrip(os.sep) + os.sep


def register(dataset_root: str | os.PathLike | None = None) -> dict[str, str]:
    """Add our reader preferences to napari's settings (module docstring), and
    ``dataset_root``'s folder where given; keeps every entry the user made. Returns the
    entries added ({} when all were there)."""
    from napari.settings import get_settings

    settings = get_settings().plugins
    current = dict(settings.extension2reader)
    wanted = dict.fromkeys(OUR_PATTERNS, PLUGIN) | PLAIN_PATTERNS
    if dataset_root is not None and Path(dataset_root).is_dir():
        wanted[folder_pattern(dataset_root)] = PLUGIN
    added = {pattern: plugin for pattern, plugin in wanted.items() if pattern not in current}
    if added:
        settings.extension2reader = {**current, **added}
    return added
