# mypy: disable-error-code="attr-defined, has-type"
# (a mixin: the attributes it uses are ReviewQueue's)
"""The review queue's order, scores, re-pre-labelling and checks (the loop at dataset scale).

Mixed into :class:`napari_deeplab.review.ReviewQueue`; no napari here.

- **Order** (:mod:`napari_deeplab.queue_order`): each annotator's order ("name" or "score")
  and the list as shown are kept in the queue's state (``orders``), so a queue opened again
  resumes with the same list at the same photo. Least confident first is the default once
  every photo of the queue has a score (until the annotator chooses an order).
- **Scores**: the queue records the scores of its pre-labels in the dataset's scores file
  (:func:`napari_deeplab.cihp.record_scores`), the file ``predict --scores`` writes too.
- **Untouched photos** (:data:`UNTOUCHED_STATES` with a draft): only the model's work; a new
  model may replace their drafts (:meth:`QueueExtras.replace_untouched_draft`), never a draft
  that holds an edit, nor a photo another annotator has in hand.
- **Held photos** (:data:`HELD_STATES`): ``to-check`` (listed by the audit, with its suspect
  regions in ``checks``), ``flagged`` (with a note in ``notes``), ``returned`` (an accepted
  photo sent back for correction). They stay held although the dataset lists them, until they
  are accepted again: they are not "exported", and :meth:`QueueExtras.accepted_ids` leaves
  them out.
"""

from __future__ import annotations

import contextlib

from . import cihp, files
from .queue_order import ORDERS, check_mode, default_mode, ordered

UNTOUCHED_STATES = ("pre-labelled", "seen")
"""States of a photo whose draft is only the model's (seen: looked at, not edited)."""
HELD_STATES = ("to-check", "flagged", "returned")
"""States that keep a photo out of the exported ones until it is accepted again."""
EXTRA_MAPS = ("orders", "notes", "checks")
"""The state file's mappings kept by this module (see the module docstring)."""


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class QueueExtras:
    """Order, scores, untouched drafts and held photos of a :class:`ReviewQueue`."""

    # --- scores ------------------------------------------------------------------------------

    def _read_scores(self) -> dict[str, dict]:
        """The scores file's entries of the queue's photos (a damaged file: a warning, {})."""
        try:
            stored = cihp.read_scores(self.root, self.split)
        except (OSError, cihp.DatasetError) as error:
            warning = f"{error}; the queue is shown without scores"
            if warning not in self.warnings:  # read again on every move: said once
                self.warnings.append(warning)
            stored = {}
        return {
            item.sample_id: stored[key]
            for item in self.items
            if (key := cihp.normal_id(item.sample_id)) in stored
        }

    def score(self, sample_id: str) -> dict | None:
        """The photo's scores-file entry (``score``, ``regions``, ``model``...), or None."""
        return self._scores.get(sample_id)

    def record_scores(self, entries: dict[str, dict], model: str) -> bool:
        """Record the scores of photos pre-labelled by ``model`` (sample id ->
        :func:`napari_deeplab.prelabel.score_entry`) in the dataset's scores file. A file that
        cannot be written is a warning (the drafts are what matter); False then."""
        try:
            cihp.record_scores(self.root, self.split, entries, model=model)
        except (OSError, cihp.DatasetError) as error:
            self.warnings.append(f"the scores of {', '.join(entries)} were not recorded: {error}")
            return False
        for sample_id, entry in entries.items():
            self._scores[sample_id] = {**entry, "model": model}
        return True

    # --- order -------------------------------------------------------------------------------

    def _my_order(self) -> dict:
        """This annotator's stored order ({mode, chosen, ids}); {} if none or damaged."""
        mine = self._stored["orders"].get(self.me_key)
        if not isinstance(mine, dict) or mine.get("mode") not in ORDERS:
            return {}
        return mine

    @property
    def order_mode(self) -> str:
        """This annotator's order: chosen, else the one decided when the queue was opened."""
        mine = self._my_order()
        return mine["mode"] if mine.get("chosen") else self._default_mode

    def _open_order(self) -> None:
        """Called when the queue opens: the scores read, the list as this annotator left it
        with what is ahead of the photo in hand ranked again."""
        self._scores = self._read_scores()
        ids = [item.sample_id for item in self.items]
        self._default_mode = default_mode(ids, self._scores)
        mine = self._my_order()
        stored_ids = mine.get("ids")
        previous = [
            i for i in (stored_ids if isinstance(stored_ids, list) else []) if isinstance(i, str)
        ] or sorted(ids)
        # an annotator new to the queue has no photo in hand yet: the order is the ranking
        new_here = not mine and self.me_key not in self._stored["positions"]
        in_hand = None if new_here or self.position >= len(previous) else previous[self.position]
        self._by_id = {item.sample_id: item for item in self.items}
        self._place(ordered(ids, self._scores, self.order_mode, in_hand, previous), in_hand)
        if mine.get("ids") != [item.sample_id for item in self.items]:
            # a read-only queue folder: the order is only a view, shown anyway
            with contextlib.suppress(OSError):
                self._save_order(self.order_mode, bool(mine.get("chosen")))

    def _place(self, order: list[str], in_hand: str | None) -> None:
        self.items = [self._by_id[i] for i in order]
        self._ids = {sample_id: i for i, sample_id in enumerate(order)}
        if in_hand in self._ids:
            self.position = self._ids[in_hand]

    def _save_order(self, mode: str, chosen: bool) -> None:
        ids = [item.sample_id for item in self.items]

        def change(stored):
            stored["orders"][self.me_key] = {"mode": mode, "chosen": chosen, "ids": ids}

        self._update(change)

    def set_order(self, mode: str) -> None:
        """Show the queue in ``mode`` (chosen by the annotator: kept when it opens again)."""
        self._reorder(check_mode(mode), chosen=True)

    def reorder(self, read_scores: bool = False) -> bool:
        """Rank what is ahead of the photo in hand again (scores changed); ``read_scores``:
        read the scores file again (another writer). True if the list changed."""
        if read_scores:
            self._scores = self._read_scores()
        mine = self._my_order()
        return self._reorder(self.order_mode, chosen=bool(mine.get("chosen")))

    def _reorder(self, mode: str, chosen: bool) -> bool:
        before = [item.sample_id for item in self.items]
        in_hand = before[self.position]
        self._place(ordered(before, self._scores, mode, in_hand, before), in_hand)
        changed = [item.sample_id for item in self.items] != before
        mine = self._my_order()
        if changed or mine.get("mode") != mode or bool(mine.get("chosen")) != chosen:
            self._save_order(mode, chosen)
        return changed

    # --- untouched drafts --------------------------------------------------------------------

    def untouched(self, model: str, in_hand: str | None = None) -> list[str]:
        """Photos (in queue order) whose draft is only a model's other than ``model`` (its score
        names another model, or none): the ones a new model re-pre-labels. Never ``in_hand``
        nor a photo another process has claimed."""
        claimed = set(self.claims())
        return [
            item.sample_id
            for item in self.items
            if item.sample_id != in_hand
            and item.sample_id not in claimed
            and self._stored["states"].get(item.sample_id) in UNTOUCHED_STATES
            and self.full_state(item.sample_id) in UNTOUCHED_STATES
            and (self.score(item.sample_id) or {}).get("model") != model
            and self.draft_path(item.sample_id).exists()
        ]

    def replace_untouched_draft(self, sample_id: str, labels) -> bool:
        """Replace the model's draft of an untouched photo by ``labels`` (H x W uint8), its
        state "pre-labelled" again. Decided and written under the queue's lock, against the
        state as stored now: a photo edited meanwhile (an annotator's draft is marked
        ``corrected`` under the lock before it is written), claimed by another process or
        held is left alone; False then."""
        import numpy as np

        labels = np.asarray(labels, np.uint8)
        if self._claim_path(sample_id).exists() and sample_id in self.claims():
            return False
        replaced = []

        def change(stored):
            if stored["states"].get(sample_id) not in UNTOUCHED_STATES:
                return
            if not self.draft_path(sample_id).exists():
                return
            files.write_file_atomically(
                self.draft_path(sample_id), lambda tmp: cihp.save_label_png(labels, tmp)
            )
            stored["states"][sample_id] = "pre-labelled"
            stored["by"][sample_id] = {**self.me, "time": _utc_now()}
            replaced.append(sample_id)

        self._update(change)
        return bool(replaced)

    # --- held photos: to check, flagged, returned --------------------------------------------

    def _hold(self, sample_id: str, state: str, key: str | None = None, value=None) -> None:
        """One transaction: the photo's state ``state`` (by this annotator now) and, with
        ``key``, ``stored[key][sample_id] = value``."""
        self.item(sample_id)
        entry = {**self.me, "time": _utc_now()}

        def change(stored):
            stored["states"][sample_id] = state
            stored["by"][sample_id] = entry
            if key is not None:
                stored[key][sample_id] = value

        self._update(change)

    def flag(self, sample_id: str, note: str = "") -> None:
        """Flag the photo for a second look, with ``note`` (kept in the queue's state)."""
        before = self.full_state(sample_id)
        if before == "flagged":
            before = (self.note_entry(sample_id) or {}).get("before", "corrected")
        record = {"note": str(note), "user": self.me["user"], "time": _utc_now()}
        self._hold(sample_id, "flagged", "notes", {**record, "before": before})

    def unflag(self, sample_id: str) -> None:
        """Clear the flag: the photo's state before it was flagged (the note is kept)."""
        if self.full_state(sample_id) != "flagged":
            return
        before = (self.note_entry(sample_id) or {}).get("before")
        if before in (None, "flagged", "new"):
            before = "corrected" if self.draft_path(sample_id).exists() else "new"
        self._hold(sample_id, before)

    def note(self, sample_id: str) -> str | None:
        """The note of the photo's last flag, or None (never flagged)."""
        entry = self.note_entry(sample_id)
        return None if entry is None else entry.get("note", "")

    def note_entry(self, sample_id: str) -> dict | None:
        """{note, user, time, before} of the photo's last flag, or None."""
        return self._stored["notes"].get(sample_id)

    def open_checks(self, audit: list[dict]) -> tuple[list[str], int]:
        """Make the photos of an audit's list (``napari-deeplab audit --json``: entries
        ``{"id", "strength", "regions"}``) "to check", keeping their suspect regions. Returns
        (the ids now to check, in audit order; how many entries are not photos of this queue)."""
        marked, elsewhere = [], 0
        for entry in audit:
            sample_id = str(entry.get("id", ""))
            if sample_id not in self._ids:
                elsewhere += 1
                continue
            regions = [dict(region) for region in entry.get("regions", ())]
            check = {"strength": float(entry.get("strength", 0.0)), "regions": regions}
            self._hold(sample_id, "to-check", "checks", check)
            marked.append(sample_id)
        return marked, elsewhere

    def suspect_regions(self, sample_id: str) -> list[dict]:
        """The audit's regions of a photo to check (``bbox``, ``kind``...); [] otherwise."""
        if self.full_state(sample_id) != "to-check":
            return []
        return list((self._stored["checks"].get(sample_id) or {}).get("regions", ()))

    def send_back(self, sample_id: str) -> None:
        """Send an accepted photo back for correction ("returned": held, edit-protected,
        until accepted again). ``ValueError`` if the photo is not in the dataset."""
        if sample_id not in set(self._listed()):
            raise ValueError(f"{sample_id}: not in the dataset's split; nothing to send back")
        self._hold(sample_id, "returned")

    def held_ids(self) -> list[str]:
        """Photos to check, flagged or returned, in queue order."""
        return [i.sample_id for i in self.items if self.full_state(i.sample_id) in HELD_STATES]

    def accepted_ids(self) -> list[str]:
        """Photos accepted into the dataset by the queue and not held since (what the queue
        counts as its reviewed training data), in queue order."""
        return [
            i.sample_id for i in self.items if self.full_state(i.sample_id) == "exported-reviewed"
        ]


RELABEL_CHUNK = 8
"""Photos read and sent to the model at a time when re-pre-labelling (bounded memory)."""


def relabel_results(items, segment, source: str | None, chunk: int = RELABEL_CHUNK):
    """The model's new drafts of ``items`` (:class:`~napari_deeplab.review.QueueItem`),
    computed by ``segment(images, source)`` (:meth:`napari_deeplab.worker.ModelProcess.segment`
    or any function yielding :class:`~napari_deeplab.inference.Segmentation` and waiting
    heartbeats): yields the heartbeats and ``(sample id, labels, scores-file entry)`` per
    readable photo (unreadable ones are left out), ``chunk`` photos read at a time. Runs off
    the GUI thread; the caller keeps each result with
    :meth:`QueueExtras.replace_untouched_draft` and :meth:`QueueExtras.record_scores`."""
    from .inference import Segmentation
    from .photos import read_photo
    from .prelabel import score_entry

    items = list(items)
    for start in range(0, len(items), chunk):
        readable = []
        for item in items[start : start + chunk]:
            try:
                readable.append((item.sample_id, read_photo(item.photo)))
            except ValueError:
                continue
        if not readable:
            continue
        results = segment([photo for _, photo in readable], source)
        try:
            for result in results:
                if isinstance(result, Segmentation):
                    labels = result.labels
                    entry = score_entry(labels, result.confidence)
                    yield readable[result.index][0], labels, entry
                else:
                    yield result
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
