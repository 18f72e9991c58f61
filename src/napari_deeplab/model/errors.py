"""The one error of finding, downloading, converting and reading models."""

from __future__ import annotations

FIRST_LINE_CHARS = 200
"""Longest reason quoted from a library's error in a :class:`ModelError` message."""


class ModelError(Exception):
    """A model could not be found, downloaded or read; the message says what to do."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (at most :data:`FIRST_LINE_CHARS`), else its type."""
    text = str(error).strip()
    return text.splitlines()[0][:FIRST_LINE_CHARS] if text else type(error).__name__
