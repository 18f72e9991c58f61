"""What counts as a model source, decided without loading anything (no Keras, no TensorFlow).

A source is a ``.keras`` file, a folder (a seed-format SavedModel or one holding one ``.keras``
file), or a Hugging Face hub id ``owner/name``. :func:`check_model_source` refuses anything
else at once, so a mistyped path is reported before a model process starts or a model loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import DEFAULT_MODEL

_HUB_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID = re.compile(rf"{_HUB_NAME}/{_HUB_NAME}")


def looks_like_hub_id(source: str) -> bool:
    """Whether ``source`` has the form of a Hugging Face hub id (``owner/name``), not of a path."""
    return bool(_HUB_ID.fullmatch(source)) and not source.endswith((".keras", ".h5"))


def check_model_source(source: str | os.PathLike | None) -> str:
    """Return ``source`` (:data:`DEFAULT_MODEL` for None or empty) if it can be a model.

    Raises ValueError with a one-line message for a file that is not a ``.keras`` file, or
    for a path that does not exist and is not a hub id. Folders are not inspected here.
    """
    source = os.fspath(source) if source is not None else ""
    if not source.strip():
        return DEFAULT_MODEL
    path = Path(source).expanduser()
    if path.is_dir():
        return source
    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(
                f"{source}: not a model file: expected a .keras file or a SavedModel folder"
            )
        return source
    if looks_like_hub_id(source):
        return source
    raise ValueError(
        f"{source}: no such file or folder; give a .keras file, a SavedModel "
        f"folder or a Hugging Face hub id such as {DEFAULT_MODEL}"
    )
