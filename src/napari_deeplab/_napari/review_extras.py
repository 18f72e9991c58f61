"""The Review queue's order, re-pre-labelling and checks (mixed into ``ReviewWidget``).

- **Order**: a ComboBox, "file name" or "least confident first" (the queue's engine:
  :mod:`napari_deeplab.queue_order`); the list is ranked again when scores change (a
  pre-label, a re-pre-label), around the photo in hand, which never moves.
- **Re-pre-label**: when the model chosen is not the one that made some untouched drafts
  (only pre-labelled or seen), a button offers to re-pre-label them; the job runs in the
  background in the shared model process, like pre-label-ahead, and replaces only drafts still
  untouched when each result arrives (never a corrected draft, never the photo in hand).
- **Checks**: the audit's list (``napari-deeplab audit --json`` output) opened as photos to
  check, their suspect regions outlined in a Shapes layer; Flag with a note; Send back an
  accepted photo for correction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton

from ..queue_order import ORDERS
from ..review_effort import keep_prelabel
from ..review_queue_more import relabel_results
from .job_runner import Job, JobRefused, JobRunner

SUSPECTS_SUFFIX = " suspects"
_MODES = {text: mode for mode, text in ORDERS.items()}


def model_name(source: str) -> str:
    """How a status line names a model: a file's or folder's name, else the hub id."""
    path = Path(source)
    return path.name if path.name and (path.exists() or source.endswith(".keras")) else source


class ReviewExtras:
    """The order, re-pre-label and checks parts of the Review queue widget."""

    def _extra_widgets(self) -> list:
        """Make the widgets of this part; returns the rows to show (in the widget's layout)."""
        self._ordering = False  # the widget itself sets the order's ComboBox
        self.order = ComboBox(
            choices=list(_MODES),
            label="Order",
            tooltip="The queue's order: by file name, or the photos the model is least "
            "sure of first (scores recorded at pre-labelling, or by predict --scores)",
        )
        self.order.changed.connect(self._order_chosen)
        self.note = LineEdit(
            label="Note", tooltip="What is wrong with the photo (kept with its flag)"
        )
        self.send_back_button = PushButton(
            text="Send back",
            tooltip="Send an accepted photo back for correction: it is not counted as "
            "exported until you accept it again",
        )
        self.send_back_button.changed.connect(self.send_back)
        self.audit_file = FileEdit(
            mode="r",
            filter="*.json",
            nullable=True,
            label="Audit",
            tooltip="The list napari-deeplab audit DATASET --json wrote (its output saved "
            "to a file)",
        )
        self.open_audit_button = PushButton(
            text="Open audit list",
            tooltip="Mark the photos the audit lists as 'to check', their suspect regions outlined",
        )
        self.open_audit_button.changed.connect(self.open_audit)
        self.relabel_runner = JobRunner(
            self._prepare_relabel,
            run_text="Re-pre-label untouched photos",
            run_tooltip="Pre-label again, with the model chosen, the photos only pre-labelled "
            "(never one you edited, nor the photo in hand)",
            cancel_tooltip="Stop re-pre-labelling; the drafts replaced so far are kept",
        )
        self.relabel_runner.visible = False
        self.model.combo.native.currentTextChanged.connect(lambda *_: self._offer_relabel())
        note_row = Container(
            widgets=[self.note, self.send_back_button], layout="horizontal", labels=True
        )
        audit_row = Container(
            widgets=[self.audit_file, self.open_audit_button], layout="horizontal", labels=True
        )
        self.order_row = Container(widgets=[self.order], layout="horizontal", labels=True)
        for row in (note_row, audit_row, self.order_row):
            row.margins = (0, 0, 0, 0)
        return [note_row, audit_row, self.relabel_runner]

    # --- order -------------------------------------------------------------------------------

    def _show_order(self) -> None:
        """The queue's order in the ComboBox (without choosing it) and its list of photos."""
        self._ordering = True
        try:
            self.order.value = ORDERS[self.queue.order_mode]
        finally:
            self._ordering = False
        self._rebuild_list()

    def _rebuild_list(self) -> None:
        """Every row again, in the queue's order; the photo in hand stays the current row."""
        self.photo_list.clear()
        self.photo_list.addItems([self._row_text(item.sample_id) for item in self.queue.items])
        if self.shown_id is not None:
            self.photo_list.setCurrentRow(self.queue.position)

    def _order_chosen(self, text: str) -> None:
        if self._ordering or self.queue is None or text not in _MODES:
            return
        try:
            self.queue.set_order(_MODES[text])
        except OSError as error:
            return self._refuse(f"The order was not kept ({error}); it is shown anyway")
        self._rebuild_list()
        self._show_state(note=f"Order: {text}")

    def _rerank(self) -> None:
        """Read the scores file again (another writer may have added to it) and rank what is
        ahead of the photo in hand again."""
        try:
            changed = self.queue.reorder(read_scores=True)
        except OSError:
            return  # the order is a view; it is saved with the next change
        if changed:
            self._rebuild_list()
        self._show_warnings()

    def _scored(self, queue, entries: dict, source: str) -> None:
        """Record the scores of new drafts; rank what is ahead of the photo in hand again."""
        queue.record_scores(entries, source)
        if queue is self.queue:
            if queue.reorder():
                self._rebuild_list()
            self._show_warnings()

    # --- re-pre-labelling the untouched photos -------------------------------------------------

    def _offer_relabel(self, job_ended: bool = False) -> None:
        """Show the re-pre-label button when the chosen model did not make some untouched
        drafts (and no re-pre-label runs, or ``job_ended``: the one running ends now)."""
        if self.relabel_runner.running and not job_ended:
            return
        count = 0
        if self.queue is not None:
            try:
                count = len(self.queue.untouched(self.model.source, in_hand=self.shown_id))
            except OSError:
                count = 0
        if count:
            self.relabel_runner.run_button.text = (
                f"Re-pre-label {count} untouched photo{'s' * (count != 1)} with "
                f"{model_name(self.model.source)}"
            )
        self.relabel_runner.visible = bool(count)

    def _prepare_relabel(self) -> Job:
        if self.queue is None:
            raise JobRefused("Open a queue first")
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        queue = self.queue
        ids = queue.untouched(source, in_hand=self.shown_id)
        if not ids:
            raise JobRefused(f"No untouched photo to re-pre-label with {model_name(source)}")
        replaced: list[str] = []

        def take(result) -> None:
            sample_id, labels, entry = result
            if queue is not self.queue or sample_id == self.shown_id:
                return  # the photo is in hand now: never replaced under the annotator
            if queue.replace_untouched_draft(sample_id, labels):
                replaced.append(sample_id)
                keep_prelabel(queue.folder, sample_id, labels, source)  # the effort log's base
                queue.record_scores({sample_id: entry}, source)
                self._update_row(sample_id)

        def done() -> str:
            if queue is self.queue:
                if queue.reorder():
                    self._rebuild_list()
                self._show_warnings()
            line = (
                f"Re-pre-labelled {len(replaced)} untouched photo"
                f"{'s' * (len(replaced) != 1)} with {model_name(source)}"
            )
            self._offer_relabel(job_ended=True)
            if queue is self.queue:
                self._show_state(note=line)
            return line

        self.relabel_runner.visible = True
        return Job(
            relabel_results([queue.item(i) for i in ids], self._process.segment, source),
            total=len(ids),
            description="Re-pre-labelling",
            on_result=take,
            on_done=done,
            message=f"Re-pre-labelling {len(ids)} untouched photos with {model_name(source)}…",
        )

    # --- checks: the audit's list, flags with a note, sending back -----------------------------

    def open_audit(self) -> None:
        """Open the audit's list (``napari-deeplab audit --json``) as photos to check."""
        if self.queue is None:
            return self._refuse("Open a queue first, then its audit list")
        path = self.audit_file.value
        if path is None or not Path(path).is_file():
            return self._refuse(
                "Give the audit's list: the output of napari-deeplab audit DATASET --json "
                "saved to a file"
            )
        try:
            listed = json.loads(Path(path).read_text("utf-8"))
            if not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed):
                raise ValueError("not a list of samples")
            marked, elsewhere = self.queue.open_checks(listed)
        except (OSError, ValueError) as error:
            return self._refuse(
                f"{path}: not an audit list ({error}); write it with napari-deeplab audit "
                "DATASET --json > FILE"
            )
        for sample_id in marked:
            self._update_row(sample_id)
        if self.shown_id in marked:
            self._show_suspects()
        others = f" ({elsewhere} listed are not photos of this queue)" if elsewhere else ""
        self.status.value = f"{len(marked)} photos to check{others}"

    def _show_suspects(self) -> None:
        """Outline the audit's suspect regions of the photo in hand (a Shapes layer), if it is
        to check; else no such layer."""
        regions = [] if self.queue is None else self.queue.suspect_regions(self.shown_id)
        boxes = [r for r in regions if len(r.get("bbox", ())) == 4]
        if not boxes:
            self._remove_layer("suspects")
            return
        rectangles = [
            np.array([[r["bbox"][0], r["bbox"][1]], [r["bbox"][2], r["bbox"][3]]], float)
            for r in boxes
        ]
        kinds = [str(r.get("kind", "?")) for r in boxes]
        self._remove_layer("suspects")
        parts = self.parts_layer()
        layer = self.viewer.add_shapes(
            rectangles,
            shape_type="rectangle",
            name=self.shown_id + SUSPECTS_SUFFIX,
            edge_color="red",
            face_color="transparent",
            edge_width=3,
            features={"kind": kinds},
            text={"string": "{kind}", "color": "yellow", "anchor": "upper_left", "size": 10},
        )
        self._layer_ids["suspects"] = layer.unique_id
        if parts is not None:
            self.viewer.layers.selection.active = parts  # painting goes on in the parts

    def send_back(self) -> None:
        """Send the accepted photo in hand back for correction."""
        if self.queue is None or self.shown_id is None:
            return self._refuse("Open a queue first")
        try:
            self.queue.send_back(self.shown_id)
        except (OSError, ValueError) as error:
            return self._refuse(str(error))
        self._update_row(self.shown_id)
        self._show_state(note="Sent back for correction: edit it, then Accept")


def held_note(queue, sample_id: str) -> str:
    """What the status line adds for a held photo: `` · note: ...`` of a flagged one,
    `` · 2 suspect regions outlined`` of one to check; "" otherwise."""
    state = queue.full_state(sample_id)
    if state == "flagged" and queue.note(sample_id):
        return f" · note: {queue.note(sample_id)}"
    if state == "to-check":
        count = len(queue.suspect_regions(sample_id))
        return f" · {count} suspect region{'s' * (count != 1)} outlined"
    return ""
