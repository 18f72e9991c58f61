"""The review queue's order: by file name, or least confident first (the scores file).

Pure functions, no files and no Qt: :class:`napari_deeplab.review.ReviewQueue` keeps the order
in its state and :mod:`napari_deeplab._napari.review_widget` shows it.

The one rule of re-ordering (:func:`ordered`): the photo in hand never moves, nor do the photos
before it (the part of the list already walked: Previous goes back through them as they were);
the photos after it are ranked again. Photos without a score go after the scored ones, in file
name order: a photo gets its score when it is pre-labelled (by the queue, ``predict --scores``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

NAME, SCORE = "name", "score"
ORDERS = {NAME: "file name", SCORE: "least confident first"}
"""The orders a queue offers: key (kept in the queue's state) -> what the widget shows."""


def check_mode(mode: str) -> str:
    """``mode`` if it is a key of :data:`ORDERS`, else ``ValueError`` naming the choices."""
    if mode not in ORDERS:
        raise ValueError(f"unknown queue order {mode!r}; choose one of {', '.join(ORDERS)}")
    return mode


def ranked(ids: Iterable[str], scores: Mapping[str, Mapping], mode: str) -> list[str]:
    """``ids`` in the order ``mode``: by name; or (``"score"``) the scored ones by score,
    highest (least confident) first, ties by name, then the ones without a score by name.

    ``scores``: sample id -> scores-file entry (at least ``{"score": float}``)."""
    ids = sorted(set(ids))
    if check_mode(mode) == NAME:
        return ids
    scored = sorted((i for i in ids if i in scores), key=lambda i: (-float(scores[i]["score"]), i))
    return scored + [i for i in ids if i not in scores]


def ordered(
    ids: Iterable[str],
    scores: Mapping[str, Mapping],
    mode: str,
    in_hand: str | None = None,
    previous: Sequence[str] | None = None,
) -> list[str]:
    """The queue's order of ``ids`` in ``mode``, keeping the photo in hand where it is.

    Parameters
    ----------
    ids : iterable of str
        The queue's photos (sample ids; duplicates ignored).
    scores : mapping
        Sample id -> scores-file entry (``{"score": float, ...}``); ids missing have no score.
    mode : str
        A key of :data:`ORDERS`.
    in_hand : str, optional
        The photo in hand. With ``previous``, it keeps its place, and so does every photo
        before it in ``previous`` (those still in ``ids``); the rest follows in ``mode``.
    previous : sequence of str, optional
        The order shown so far.

    Returns
    -------
    list of str
        Every id of ``ids`` once.
    """
    ids = set(ids)
    order = ranked(ids, scores, mode)
    if in_hand is None or previous is None or in_hand not in ids or in_hand not in previous:
        return order
    walked = previous[: list(previous).index(in_hand) + 1]
    kept = list(dict.fromkeys(i for i in walked if i in ids))  # ends with in_hand
    kept_set = set(kept)
    return kept + [i for i in order if i not in kept_set]


def default_mode(ids: Iterable[str], scores: Mapping[str, Mapping]) -> str:
    """``"score"`` once every photo of ``ids`` has a score, else ``"name"``."""
    ids = list(ids)
    return SCORE if ids and all(i in scores for i in ids) else NAME


def score_text(entry: Mapping | None) -> str:
    """How the list shows a score: ``"score 0.421"``, or "" for a photo without one."""
    return "" if entry is None else f"score {float(entry['score']):.3f}"
