"""The "Review queue" widget: work through a folder of photos into a CIHP dataset, as a team.

Next and Previous save the photo in hand (as a draft) and show the next one; the model
pre-labels the photo shown and the one after it in the background (in the shared model
process), so Next is usually instant. Accept exports the photo into the dataset's split.
The queue's state lives in the dataset folder: opening the same folder again resumes.
One photo layer and one parts layer serve every photo (their data swapped in place): removing
and adding layers froze the viewer for a second on each Next.

Several annotators (napari processes) can work on one queue: the photo shown is claimed
(others skip it and show who has it), Accept sends the dataset version it started from and is
refused if someone changed the sample since (Open theirs / Keep mine), the edits in hand are
kept a moment after each change (:data:`AUTOSAVE_S`, off the GUI thread) and when the widget or
the viewer closes, and an Accept can be undone.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QListWidget, QSizePolicy

from .. import cihp
from ..cihp import SPLIT_ID_FILES
from ..inference import Segmentation
from ..people import propose_people
from ..photos import read_photo
from ..prelabel import score_entry
from ..queue_order import score_text
from ..review import CLAIM_HEARTBEAT_S, ReviewQueue, when
from ..review_effort import keep_prelabel
from . import effort_watch
from .class_legend import NEXT_CLASS_KEY, PREVIOUS_CLASS_KEY, ClassLegend
from .class_picker import PICKER_KEY_HELP, attach_class_picker
from .job_runner import Job, JobRefused, JobRunner, model_process_for
from .model_chooser import ModelChooser, remember_model
from .parts_layer import PARTS_SUFFIX, apply_prediction, edit_tracker, parts_features
from .people_layer import PeopleTools
from .recent import RecentList
from .recent_datasets import recent_datasets, remember_dataset
from .review_extras import ReviewExtras, held_note
from .shortcuts import bind_keys, help_label, on_removed

# free in napari's viewer and layer keymaps; Alt+A is neither a menu mnemonic (File, View,
# Layers, Plugins, Window, Help) nor an app shortcut (Alt+C, Alt+S, Alt+T)
NEXT_KEY, PREVIOUS_KEY, ACCEPT_KEY = "Alt-Right", "Alt-Left", "Alt-A"
AHEAD = 2  # photos pre-labelled ahead: the one shown and the next
MIN_SEEN_S = 1.0
"""Accept applies only to a photo whose parts have been on screen this long: a double press
or key repeat never exports the next photo unseen."""
ACCEPT_AGAIN_S = MIN_SEEN_S  # kept for callers of the old name
AUTOSAVE_S = 2.0
"""The edits in hand are saved this long after the last change (and on close)."""
OPEN_FIRST = "Open a queue first: give the photos and the dataset folder, then Open queue"
RECENT_PHOTOS = RecentList("recent_photo_folders.json")
CHOOSE_RECENT = "Recent…"


def recent_photo_folders() -> list[str]:
    return RECENT_PHOTOS.items()


class _Saved(QObject):
    """Carries the background autosave's outcome to the GUI thread."""

    failed = Signal(str)


class _WindowClose(QObject):
    """Calls ``callback`` when the watched window closes (napari's viewer.close() closes its
    main window before anything is destroyed)."""

    def __init__(self, parent, callback):
        super().__init__(parent)
        self._callback = callback

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Close:
            self._callback()
        return False


class ReviewWidget(ReviewExtras, Container):
    """Review a folder of photos into a dataset (Plugins > napari-deeplab > Review queue)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.queue: ReviewQueue | None = None
        self.shown_id: str | None = None
        self._layer_ids: dict[str, object] = {}  # "photo", "parts", "people" -> unique_id
        self._unreadable: set[str] = set()
        self._model_loaded: str | None = None
        self._warned = 0  # the queue's warnings shown so far
        self._draft_shown: np.ndarray | None = None  # the parts as last shown or saved
        self._accepted_at = -MIN_SEEN_S  # time.monotonic() of the last Accept
        self._claimed: str | None = None  # the photo this widget holds a claim on
        self._others: dict = {}  # sample id -> Claim of another process
        self._base_version: str | None = None  # the dataset's version when the photo was shown
        self._seen_since: float | None = None  # when the parts shown were put on screen
        self._choice: tuple | None = None  # (kind, sample id, labels, people, version)
        self._last_export = None  # the ExportRecord of the last Accept, for Undo
        self._swapping = False  # the widget itself is changing the parts layer
        self._origin = "none"  # where the parts shown came from: "draft", "dataset", "none"
        self._closed = False

        self.photos = FileEdit(
            mode="d",
            nullable=True,
            label="Photos",
            tooltip="The folder of photos to review, or a CIHP split",
        )
        self.dataset = FileEdit(
            mode="d",
            nullable=True,
            label="Dataset",
            tooltip="The dataset folder to export into; the drafts and position are kept there",
        )
        self.recent_photos = ComboBox(
            choices=lambda _: [CHOOSE_RECENT, *recent_photo_folders()],
            label="",
            tooltip="Photo folders opened recently",
        )
        self.recent_dataset = ComboBox(
            choices=lambda _: [CHOOSE_RECENT, *recent_datasets()],
            label="",
            tooltip="Dataset folders used recently",
        )
        self.recent_photos.changed.connect(lambda v: self._pick_recent(self.photos, v))
        self.recent_dataset.changed.connect(lambda v: self._pick_recent(self.dataset, v))
        self.split = ComboBox(choices=list(SPLIT_ID_FILES), label="Split")
        self.model = ModelChooser(tooltip="The model that pre-labels the photos")
        self.skip_exported = CheckBox(text="Skip exported photos", value=True)
        self.photo_list = QListWidget()
        self.photo_list.setToolTip(
            "Each photo's state (or who has it open); double-click one to go to it"
        )
        self.photo_list.itemDoubleClicked.connect(
            lambda item: self.go_to(self.photo_list.row(item))
        )
        photo_list = Container(labels=False)
        photo_list.native.layout().addWidget(self.photo_list)
        buttons = _action_buttons(
            (
                "Open queue",
                "Open the photos; the work saved in the dataset folder resumes",
                self.open_queue,
            ),
            (
                "Previous",
                f"Save this photo's draft and show the previous one ({PREVIOUS_KEY})",
                self.previous_photo,
            ),
            (
                "Next",
                f"Save this photo's draft and show the next one ({NEXT_KEY})",
                self.next_photo,
            ),
            (
                "Accept",
                f"Export the photo, its parts and people, then show the next ({ACCEPT_KEY})",
                self.accept,
            ),
            (
                "Propose people",
                (
                    "Add an editable '<photo> people' layer, one label per person "
                    "region of the parts; exported as Human_ids"
                ),
                self.propose_people,
            ),
            (
                "Flag",
                "Mark this photo for a second look, with its Note (again: clear the flag)",
                self.flag,
            ),
            (
                "Undo export",
                "Put the dataset's sample back as it was before the last Accept",
                self.undo_export,
            ),
        )
        (
            self.open_button,
            self.previous_button,
            self.next_button,
            self.accept_button,
            self.people_button,
            self.flag_button,
            self.undo_button,
        ) = buttons
        self.undo_button.visible = False
        choices = _action_buttons(
            (
                "Keep mine",
                "Export your mask anyway, replacing the dataset's newer sample",
                self.keep_mine,
            ),
            (
                "Open theirs",
                "Show the dataset's sample; your mask is kept aside in the queue folder (kept/)",
                self.open_theirs,
            ),
            (
                "Export all-background",
                "Export the mask although every pixel is background",
                self.export_empty,
            ),
            ("Cancel", "Keep working on this photo; nothing is exported", self.cancel_choice),
        )
        (
            self.keep_mine_button,
            self.open_theirs_button,
            self.export_empty_button,
            self.cancel_choice_button,
        ) = choices
        self.choice_row = Container(widgets=choices, layout="horizontal", labels=False)
        self.choice_row.visible = False
        self.progress = Label(value="")
        self.effort_line = Label(value="")  # the running figures of the effort log
        self.status = Label(value="Give the photos and the dataset folder, then Open queue")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.runner = JobRunner(
            self._prepare_prelabel,
            run_text="Pre-label",
            run_tooltip="Pre-label the photo shown and the next one again "
            "(after an error; otherwise it happens by itself)",
            cancel_tooltip="Stop pre-labelling; the drafts made are kept",
        )
        self.legend = ClassLegend(self.parts_layer)
        self.people = PeopleTools(napari_viewer, self.parts_layer, lambda: self._layer("people"))
        self.help_line = help_label(
            {
                "Alt-Left/Right": "photo",
                ACCEPT_KEY: "accept",
                "Shift-Up/Down": "class",
                **PICKER_KEY_HELP,
            }
        )
        button_row = Container(widgets=buttons[1:4], layout="horizontal", labels=False)
        more_row = Container(widgets=buttons[4:], layout="horizontal", labels=False)
        extra_rows = self._extra_widgets()  # order, notes, audit, re-pre-label (review_extras)
        review = Container(
            widgets=[
                self.open_button,
                self.order_row,
                self.skip_exported,
                photo_list,
                button_row,
                more_row,
                *extra_rows,
                self.choice_row,
                self.status,
                self.progress,
                self.effort_line,
                self.runner,
                self.help_line,
                Label(value="Classes"),
                self.legend,
                self.people,
            ],
            labels=False,
        )
        for container in (photo_list, button_row, more_row, self.choice_row, review):
            container.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                self.photos,
                self.recent_photos,
                self.dataset,
                self.recent_dataset,
                self.split,
                self.model,
                review,
            ]
        )
        self._process = model_process_for(self)
        self._effort = effort_watch.EffortWatch(napari_viewer)
        self._ahead_timer = QTimer(self.native, singleShot=True, interval=0)
        self._ahead_timer.timeout.connect(self._prelabel_ahead)
        self._autosave_timer = QTimer(self.native, singleShot=True, interval=int(AUTOSAVE_S * 1000))
        self._autosave_timer.timeout.connect(self._autosave)
        self._heartbeat_timer = QTimer(self.native, interval=int(CLAIM_HEARTBEAT_S * 1000))
        self._heartbeat_timer.timeout.connect(self._heartbeat)
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-autosave")
        self._saved = _Saved(self.native)
        self._saved.failed.connect(self._autosave_failed)
        self._window_watch: _WindowClose | None = None
        me = weakref.ref(self)

        def layer_leaving(event):
            widget = me()
            if widget is not None:
                widget._layer_leaving(event)

        def painted(*_):
            widget = me()
            if widget is not None and not widget._swapping:
                widget._autosave_timer.start()

        self._layer_leaving_callback, self._painted_callback = layer_leaving, painted
        napari_viewer.layers.events.removing.connect(layer_leaving)
        on_removed(self, self.runner.cancel)
        on_removed(self, lambda: (widget := me()) and widget._close())
        bind_keys(
            napari_viewer,
            self,
            {
                NEXT_KEY: self.next_photo,
                PREVIOUS_KEY: self.previous_photo,
                ACCEPT_KEY: self.accept,
                NEXT_CLASS_KEY: self.legend.next_class,
                PREVIOUS_CLASS_KEY: self.legend.previous_class,
                **self.people.key_actions(),
            },
        )
        attach_class_picker(napari_viewer, self, self.legend)

    @staticmethod
    def _pick_recent(field: FileEdit, value) -> None:
        if value and value != CHOOSE_RECENT:
            field.value = value

    # --- the queue ---------------------------------------------------------------------------

    def open_queue(self) -> None:
        """Open the queue of the Photos folder in the Dataset folder; show this annotator's
        photo in hand (or the next one nobody else has open)."""
        if self.photos.value is None or self.dataset.value is None:
            return self._refuse(
                "Give the folder of photos and the dataset folder to export "
                "into (nothing was written)"
            )
        try:
            queue = ReviewQueue(
                self.photos.value.expanduser(), self.dataset.value.expanduser(), self.split.value
            )
        except OSError as error:
            return self._refuse(
                f"{os_error_line(error)}; choose a photos folder you can read "
                "and a dataset folder you can write to"
            )
        except ValueError as error:  # DatasetError is a ValueError
            return self._refuse(str(error))
        if not self._save_current():
            return
        self._release()
        self.runner.cancel()
        self.queue, self._warned = queue, 0
        self.effort_line.value = self._effort.figures(queue, self.model.source)
        self._last_export, self.undo_button.visible = None, False
        self._clear_choice()
        self._unreadable.clear()
        self._show_warnings()
        remember_dataset(queue.root)  # Fine-tune offers it
        RECENT_PHOTOS.remember(str(queue.source))
        for combo in (self.recent_photos, self.recent_dataset):
            combo.reset_choices()
        self._watch_window()
        self._others = self._live_claims()
        self._show_order()  # the order's ComboBox and the list, in the queue's order
        self._heartbeat_timer.start()
        start = queue.position
        free = [
            p
            for p in [*range(start, len(queue.items)), *range(start - 1, -1, -1)]
            if queue.items[p].sample_id not in self._others
        ]
        for position in free:
            if self._show(position):
                queue.go_to(position)
                self._offer_relabel()
                return
        self.shown_id = None
        self.status.value = "Every photo of the queue is open in another napari; try later"

    def go_to(self, position: int) -> None:
        """Save the photo in hand and show the photo at ``position`` of the queue (unless
        another annotator has it open)."""
        if self.queue is None or not self._save_current():
            return
        if (
            position == self.queue.position
            and self.queue.items[position].sample_id == self.shown_id
        ):
            self._show(position)
            return
        if self._show(position):
            self.queue.go_to(position)

    def next_photo(self) -> None:
        """Save the photo in hand and show the next one (exported ones skipped if asked, and
        the ones other annotators have open)."""
        if self._save_current():
            self._move(1)

    def previous_photo(self) -> None:
        """Save the photo in hand and show the previous one."""
        if self._save_current():
            self._move(-1)

    def seen_s(self) -> float:
        """How long the parts of the photo in hand have been on screen."""
        return 0.0 if self._seen_since is None else time.monotonic() - self._seen_since

    def accept(self) -> None:
        """Export the photo in hand with its parts (and people) layer, then show the next.

        Only a photo on screen for :data:`MIN_SEEN_S`; an all-background mask, and a sample
        that changed in the dataset since it was shown, ask for a second, explicit step."""
        parts, people = self._parts_or_refuse(), self._layer("people")
        if parts is None:
            return
        unseen = self.seen_s() < MIN_SEEN_S
        if unseen and time.monotonic() - self._accepted_at < MIN_SEEN_S + 0.5:
            return self._refuse(
                f"Accept pressed twice: {self.shown_id} was not exported; look at it, then Accept"
            )
        if not (
            self._edited()
            or self.queue.draft_path(self.shown_id).exists()
            or self._base_version is not None
        ):
            return self._refuse("No parts to export yet: wait for the pre-label, or paint them")
        if unseen:
            return self._refuse(
                f"{self.shown_id} was not exported: it has been on screen "
                f"{self.seen_s():.1f} s; look at it for {MIN_SEEN_S:g} s, then "
                "Accept"
            )
        if self._choice is not None and self._choice[1] == self.shown_id:
            return self._refuse(self.status.value)  # the choice shown stays the answer to give
        labels = np.array(parts.data)
        people_ids = None if people is None else np.array(people.data)
        if not labels.any():
            return self._offer(
                "empty",
                labels,
                people_ids,
                self._base_version,
                f"{self.shown_id}: every pixel is background; click Export "
                "all-background to export it anyway, or Cancel and paint the parts",
            )
        self._export(labels, people_ids, self._base_version)

    def _export(self, labels, people_ids, expected_version) -> None:
        sample_id = self.shown_id
        self._flush_autosave()
        state = self.queue.full_state(sample_id)
        try:
            record = self.queue.accept(
                sample_id, labels, people_ids, expected_version=expected_version
            )
        except cihp.SampleChangedError as error:
            return self._offer(
                "changed",
                labels,
                people_ids,
                error.current_version,
                f"{sample_id} was not exported: {_changed_by(error)} since it "
                "was shown; click Open theirs to see it, or Keep mine to "
                "replace it",
            )
        except OSError as error:
            return self._refuse(
                f"{sample_id}: Accept did not complete ({os_error_line(error)}); "
                "make the dataset folder writable, then Accept again"
            )
        except ValueError as error:
            return self._refuse(f"{sample_id}: {_one_line(error)}")
        self._clear_choice()
        self.effort_line.value = effort_watch.log_accept(
            self._effort, self.queue, sample_id, labels, state
        )
        self._draft_shown = labels
        self.queue.forget_export(self._last_export)  # one Undo: the last Accept's
        self._last_export = record
        self.undo_button.text = f"Undo export of {sample_id}"
        self.undo_button.visible = True
        self._update_row(sample_id)
        self._move(1)
        self._accepted_at = time.monotonic()  # a press soon after the next photo shows: twice
        self._show_state(note=f"Exported {sample_id} — Undo")

    def _offer(self, kind: str, labels, people_ids, version, message: str) -> None:
        """Show the second step ``kind`` ("changed": Keep mine / Open theirs; "empty":
        Export all-background / Cancel) for the photo in hand."""
        self._choice = (kind, self.shown_id, labels, people_ids, version)
        self.keep_mine_button.visible = self.open_theirs_button.visible = kind == "changed"
        self.export_empty_button.visible = kind == "empty"
        self.choice_row.visible = True
        self._refuse(message)

    def _clear_choice(self) -> None:
        self._choice = None
        self.choice_row.visible = False

    def _chosen(self, kind: str):
        """The choice offered, with the parts and people as they are now (painted since?)."""
        if self._choice is None or self._choice[0] != kind or self._choice[1] != self.shown_id:
            self._clear_choice()
            return None
        parts, people = self.parts_layer(), self._layer("people")
        kind, sample_id, labels, people_ids, version = self._choice
        if parts is not None:
            labels = np.array(parts.data)
            people_ids = None if people is None else np.array(people.data)
        return kind, sample_id, labels, people_ids, version

    def keep_mine(self) -> None:
        """The second step of a refused Accept: replace the dataset's newer sample with yours."""
        self._export_chosen("changed")

    def open_theirs(self) -> None:
        """Show the dataset's newer sample instead of yours; yours is kept aside."""
        choice = self._chosen("changed")
        if choice is None:
            return
        sample_id, labels = choice[1], choice[2]
        self._clear_choice()
        try:
            kept = self.queue.keep_aside(sample_id, labels)
        except OSError as error:
            return self._refuse(
                f"{sample_id}: your mask could not be kept aside "
                f"({os_error_line(error)}); nothing changed"
            )
        self.queue.drop_in_hand(sample_id)
        self._draft_shown = None  # nothing in hand to save
        self._show(self.queue.position)
        self.status.value = f"{sample_id}: showing theirs; yours is kept in {kept}"

    def export_empty(self) -> None:
        """The second step of Accept for an all-background mask."""
        self._export_chosen("empty")

    def _export_chosen(self, kind: str) -> None:
        """Export the parts and people of the choice offered, if it is a ``kind`` choice."""
        choice = self._chosen(kind)
        if choice is not None:
            _, _, labels, people_ids, version = choice
            self._clear_choice()
            self._export(labels, people_ids, version)

    def cancel_choice(self) -> None:
        self._clear_choice()
        if self.queue is not None and self.shown_id is not None:
            self._show_state(note="Not exported")

    def undo_export(self) -> None:
        """Put the dataset back as it was before the last Accept, and show that photo again."""
        record = self._last_export
        if record is None or self.queue is None:
            return self._refuse("Nothing to undo: no photo was exported from this queue here")
        try:
            self.queue.undo_export(record)
        except (OSError, ValueError) as error:
            return self._refuse(
                f"{record.sample_id}: the export was not undone "
                f"({_one_line(error)}); the dataset keeps it"
            )
        self._last_export, self.undo_button.visible = None, False
        self._update_row(record.sample_id)
        position = next(
            i for i, item in enumerate(self.queue.items) if item.sample_id == record.sample_id
        )
        self.go_to(position)
        self._show_state(note=f"Export of {record.sample_id} undone: the dataset is as before")

    def flag(self) -> None:
        """Flag the photo in hand for a second look (or clear its flag)."""
        if self.queue is None or self.shown_id is None:
            return self._refuse(OPEN_FIRST)
        if not self._save_current():
            return
        try:
            if self.queue.full_state(self.shown_id) == "flagged":
                self.queue.unflag(self.shown_id)
            else:
                self.queue.flag(self.shown_id, self.note.value)
        except OSError as error:
            return self._refuse(f"{self.shown_id}: not flagged ({os_error_line(error)})")
        self._update_row(self.shown_id)
        self._show_state()

    def propose_people(self) -> None:
        """Add (or replace) the people layer of the photo in hand, proposed from its parts."""
        if self._parts_or_refuse() is None:
            return
        people = self.people.propose(self.shown_id)
        self._layer_ids["people"] = people.unique_id
        self.status.value = f"{self.shown_id}: {self.people.status.value}"

    def _show_people(self, people: np.ndarray | None) -> bool:
        """Show the draft's people (if any, fitting the parts shown) in the people layer;
        whether they were."""
        layer = self.people.show_matching(people, self.shown_id)
        if layer is not None:
            self._layer_ids["people"] = layer.unique_id
        return layer is not None

    def _save_people(self) -> bool:
        """Keep the people layer of the photo in hand as its draft's people, if changed; False
        after saying why if it could not be written."""
        people = self._layer("people")
        if self.queue is None or self.shown_id is None or people is None:
            return True
        saved = self.queue.load_people_draft(self.shown_id)
        if saved is not None and np.array_equal(saved, people.data):
            return True
        try:
            self.queue.save_people_draft(self.shown_id, np.array(people.data))
        except OSError as error:
            self._refuse(
                f"{self.shown_id}: your people are not saved ({os_error_line(error)}); "
                "make the dataset folder writable, then try again"
            )
            return False
        return True

    def parts_layer(self) -> Labels | None:
        """The parts layer of the photo shown, if there is one."""
        return self._layer("parts")

    def _parts_or_refuse(self) -> Labels | None:
        """The parts layer of the photo in hand, or None after saying what to do."""
        if self.queue is None:
            self._refuse(OPEN_FIRST)
        elif self.shown_id is None:
            self._refuse("No photo in hand: every photo is open in another napari")
        elif (parts := self.parts_layer()) is not None:
            return parts
        elif self.shown_id in self._unreadable:
            self._refuse(f"{self.shown_id} cannot be read: nothing to export; go to another photo")
        elif "parts" in self._layer_ids:  # the annotator removed it
            self._refuse(
                f"The parts layer of {self.shown_id} was removed: double-click the "
                "photo in the list to show it again"
            )
        else:
            self._refuse("No parts yet: wait for the pre-label, or paint them")
        return None

    def _move(self, step: int) -> None:
        if self.queue is None:
            return self._refuse(OPEN_FIRST)
        self._refresh()
        before = self.queue.position
        others = set(self._others)
        after = self.queue.move(
            step, skip_exported=self.skip_exported.value, skip=lambda sample_id: sample_id in others
        )
        if after == before:
            self.status.value = "End of the queue" if step > 0 else "Start of the queue"
            return
        if not self._show(after):
            self.queue.go_to(before)

    def _leaving(self) -> None:
        """A pre-labelled photo looked at long enough, and not edited, becomes "seen"."""
        sample_id = self.shown_id
        if (
            self.queue is not None
            and sample_id is not None
            and self.queue.full_state(sample_id) == "pre-labelled"
            and self.seen_s() >= MIN_SEEN_S
            and not self._edited()
        ):
            try:
                self.queue.set_state(sample_id, "seen")
                self._update_row(sample_id)
            except OSError:
                pass  # the state is a record; the draft is what matters

    def _edited(self) -> bool:
        """Whether the parts shown differ from the draft they were shown with (or from empty)."""
        parts = self.parts_layer()
        if parts is None or self._draft_shown is None:
            return False
        return not np.array_equal(parts.data, self._draft_shown)

    def _save_current(self) -> bool:
        """Keep the annotator's edits of the photo in hand as its (corrected) draft; a photo
        only looked at keeps its draft and state (an exported one stays exported). False, after
        saying why, if the draft could not be written: then the photo stays in hand."""
        self._autosave_timer.stop()
        if self.queue is None or self.shown_id is None:
            return True
        if self._edited():
            self._flush_autosave()
            labels = np.array(self.parts_layer().data)
            try:
                self.queue.save_draft(self.shown_id, labels, corrected=True)
                self.queue.drop_in_hand(self.shown_id)
                if self.queue.base_version(self.shown_id) != self._base_version:
                    self.queue.set_base_version(self.shown_id, self._base_version)
            except OSError as error:
                self._refuse(
                    f"{self.shown_id}: your edits are not saved ({os_error_line(error)}); "
                    "make the dataset folder writable, then try again"
                )
                return False
            self._draft_shown = labels
            self._update_row(self.shown_id)
        return self._save_people()

    # --- autosave, claims, closing ------------------------------------------------------------

    def _autosave(self) -> None:
        """Keep the edits in hand (``in-hand/<id>.png``), written off the GUI thread."""
        if self.queue is None or self.shown_id is None or not self._edited():
            return
        queue, sample_id, labels = self.queue, self.shown_id, np.array(self.parts_layer().data)
        failed = self._saved.failed

        def save():
            try:
                queue.save_in_hand(sample_id, labels)
            except OSError as error:
                failed.emit(
                    f"{sample_id}: your edits are not saved ({os_error_line(error)}); "
                    "make the dataset folder writable, then press Next"
                )

        self._pending_save = self._saver.submit(save)

    def _flush_autosave(self) -> None:
        """Wait for an autosave under way (before the draft or the export supersedes it)."""
        pending = getattr(self, "_pending_save", None)
        if pending is not None:
            pending.result()
            self._pending_save = None

    def _autosave_failed(self, message: str) -> None:
        if not self._closed:
            self._refuse(message)

    def _claim(self, sample_id: str) -> bool:
        """Claim the photo for this annotator; False (saying who has it) if another has."""
        try:
            held = self.queue.claim(sample_id)
        except OSError as error:  # an unwritable queue folder: work on, unclaimed, and say so
            show_warning(
                f"{sample_id}: could not be claimed ({os_error_line(error)}); another "
                "annotator may open it too"
            )
            held = None
        if held is not None:
            self._others[sample_id] = held
            self._update_row(sample_id)
            self._refuse(f"{sample_id} is {held.describe()}: choose another photo")
            return False
        if self._claimed not in (None, sample_id):
            self._release()
        self._claimed = sample_id
        self._others.pop(sample_id, None)
        return True

    def _release(self) -> None:
        if self._claimed is not None and self.queue is not None:
            with contextlib.suppress(OSError):  # else it lapses by itself
                self.queue.release(self._claimed)
        self._claimed = None

    def _live_claims(self) -> dict:
        try:
            return self.queue.claims()
        except OSError:
            return {}

    def _heartbeat(self) -> None:
        """Renew the claim of the photo in hand, read the others' claims and states."""
        if self.queue is None:
            return
        if self._claimed is not None:
            try:
                if not self.queue.renew(self._claimed):
                    show_warning(
                        f"{self._claimed}: your claim lapsed and another annotator "
                        "opened it; press Next and come back to compare"
                    )
            except OSError:
                pass
        self._refresh()

    def _refresh(self) -> None:
        """Show the other annotators' claims and states in the list."""
        if self.queue is None:
            return
        self._others = self._live_claims()
        self.queue.refresh()
        self._rerank()  # scores another writer recorded (predict --scores): review_extras
        for row, item in enumerate(self.queue.items):
            text = self._row_text(item.sample_id)
            if self.photo_list.item(row) is not None and self.photo_list.item(row).text() != text:
                self.photo_list.item(row).setText(text)
        self._show_progress()

    def _layer_leaving(self, event) -> None:
        """The parts layer leaves the viewer (removed, or the viewer clearing): keep its edits."""
        parts = self.parts_layer()
        if (
            parts is not None
            and self.viewer.layers.index(parts.name) == event.index
            and not self._closed
        ):
            self._save_current()

    def _watch_window(self) -> None:
        window = self.native.window()
        if self._window_watch is None and window is not self.native:
            me = weakref.ref(self)
            self._window_watch = _WindowClose(self.native, lambda: (w := me()) and w._close())
            window.installEventFilter(self._window_watch)

    def _close(self) -> None:
        """The widget or the viewer closes: save the edits in hand as the draft, end the claim."""
        if self._closed:
            return
        with contextlib.suppress(Exception):  # a viewer half torn down: the autosave remains
            self._save_current()
        self._closed = True
        self._autosave_timer.stop()
        self._heartbeat_timer.stop()
        self._release()
        self._effort.close()
        self._saver.shutdown(wait=True)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            self.viewer.layers.events.removing.disconnect(self._layer_leaving_callback)

    def _show_warnings(self) -> None:
        """Show once each problem the queue met (a damaged state file or draft set aside)."""
        for problem in getattr(self.queue, "warnings", [])[self._warned :]:
            show_warning(problem)
            self._warned += 1

    def _refuse(self, message: str) -> None:
        show_error(message)
        self.status.value = message

    # --- what the viewer shows ---------------------------------------------------------------

    def _show(self, position: int) -> bool:
        """Claim the photo at ``position`` and show it; False if another annotator has it."""
        item = self.queue.items[position]
        if not self._claim(item.sample_id):
            return False
        if item.sample_id != self.shown_id:
            self._leaving()
        self._clear_choice()
        self._autosave_timer.stop()
        self.shown_id = item.sample_id
        self._effort.show(item.sample_id)
        self.photo_list.setCurrentRow(position)
        self._seen_since = None
        try:
            photo = read_photo(item.photo)
            if item.sample_id in self._unreadable:  # readable again
                self._unreadable.discard(item.sample_id)
                self._update_row(item.sample_id)
        except ValueError as error:
            self._unreadable.add(item.sample_id)
            self._update_row(item.sample_id)
            for role in ("suspects", "people", "parts", "photo"):
                self._remove_layer(role)
            self._draft_shown = None
            self._refuse(f"{item.photo.name}: {error}")
            self._prelabel_ahead()
            return True
        try:
            labels, self._base_version, origin = self.queue.opening(item.sample_id)
            self._origin = origin
            in_hand = self.queue.load_in_hand(item.sample_id)
        except (OSError, ValueError) as error:
            self._refuse(
                f"{item.sample_id}: the dataset's sample cannot be read "
                f"({_one_line(error)}); showing an empty mask"
            )
            labels, self._base_version, origin, in_hand = None, None, "none", None
            self._origin = origin
        self._show_warnings()
        self._remove_layer("people")
        self._show_photo(photo)
        # a draft the annotator made, and the dataset's sample, are protected as a whole
        corrected = origin == "dataset" or (
            labels is not None and self.queue.state(self.shown_id) != "pre-labelled"
        )
        base = np.zeros(photo.shape[:2], np.uint8) if labels is None else labels
        self._show_parts(base, corrected)
        note = "showing the dataset's newer sample" if origin == "dataset" else None
        if (
            in_hand is not None
            and in_hand.shape == base.shape
            and not np.array_equal(in_hand, base)
        ):
            parts = self.parts_layer()
            self._swapping = True
            try:
                parts.data = in_hand
            finally:
                self._swapping = False
            edit_tracker(parts).mask |= in_hand != base
            note = "your unsaved edits restored"
        if origin != "dataset" and self._show_people(self.queue.load_people_draft(item.sample_id)):
            self._seen_since = time.monotonic()  # on screen once its people are too
        self._show_state(note=note)
        self._show_suspects()
        self._prelabel_ahead()
        return True

    def _show_photo(self, photo: np.ndarray) -> None:
        photo = np.atleast_3d(photo)  # grey photos as RGB: napari fixes rgb when a layer is made
        photo = np.repeat(photo, 3, axis=-1) if photo.shape[-1] == 1 else photo
        layer = self._layer("photo")
        if layer is None:
            layer = self.viewer.add_image(photo, name=self.shown_id, rgb=True)
            self._layer_ids["photo"] = layer.unique_id
            self.viewer.layers.move(self.viewer.layers.index(layer.name), 0)  # under the parts
            return
        resized = layer.data.shape[:2] != photo.shape[:2]
        layer.data, layer.name = photo, self.shown_id
        layer.reset_contrast_limits()
        if resized:
            self.viewer.reset_view()

    def _show_parts(self, labels: np.ndarray, corrected: bool) -> None:
        self._swapping = True
        try:
            parts = self.parts_layer()
            if parts is None:
                parts = self.viewer.add_labels(
                    labels,
                    name=self.shown_id + PARTS_SUFFIX,
                    features=parts_features(),
                    opacity=0.6,
                )
                self._layer_ids["parts"] = parts.unique_id
                self.legend.apply_to(parts)
                parts.events.paint.connect(self._painted_callback)
                parts.events.data.connect(self._painted_callback)
                self._effort.watch_layer(parts)
            tracker = edit_tracker(parts)  # before any swap, while its shape matches the layer's
            parts.data, parts.name = labels, self.shown_id + PARTS_SUFFIX
            forget_undo_history(parts)  # no undoing into the previous photo's mask
            tracker.mask = np.full(labels.shape, corrected)
            self._draft_shown = labels.copy()  # the layer may paint into the array it was given
            self.viewer.layers.selection.active = parts
        finally:
            self._swapping = False
        self._seen_since = time.monotonic()  # the parts on screen start being looked at

    def _layer(self, role: str):
        """The widget's "photo", "parts" or "people" layer, if still in the viewer."""
        unique_id = self._layer_ids.get(role)
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id), None)

    def _remove_layer(self, role: str) -> None:
        layer = self._layer(role)
        if layer is not None:
            self.viewer.layers.pop(self.viewer.layers.index(layer.name))
        self._layer_ids.pop(role, None)

    def _show_state(self, note: str | None = None) -> None:
        if self.shown_id is None:
            return
        place = f"{self.queue.position + 1} of {len(self.queue.items)}"
        text = f"{self.shown_id}: {self.queue.describe(self.shown_id)} ({place})"
        text += held_note(self.queue, self.shown_id)
        self.status.value = f"{note} · {text}" if note else text
        self._show_progress()

    def _show_progress(self) -> None:
        if self.queue is not None:
            open_elsewhere = f"; {len(self._others)} open by others" if self._others else ""
            self.progress.value = (
                f"{self.queue.exported_count()} of {len(self.queue.items)} exported{open_elsewhere}"
            )

    def _row_text(self, sample_id: str) -> str:
        if sample_id in self._unreadable:
            state = "cannot be read"
        elif sample_id in self._others and sample_id != self._claimed:
            state = f"{self.queue.state(sample_id)}, {self._others[sample_id].describe()}"
        else:
            state = self.queue.state(sample_id)
        score = score_text(self.queue.score(sample_id))
        return f"{sample_id} — {state} · {score}" if score else f"{sample_id} — {state}"

    def _update_row(self, sample_id: str) -> None:
        row = next(i for i, item in enumerate(self.queue.items) if item.sample_id == sample_id)
        self.photo_list.item(row).setText(self._row_text(sample_id))
        self._show_progress()

    # --- pre-labelling ahead -----------------------------------------------------------------

    @property
    def prelabelling(self) -> bool:
        """Whether drafts of the photo shown or the next one are being made (False once each
        has one, cannot be read, or its pre-labelling failed: a failure waits for the user)."""
        return self.runner.running or self._ahead_timer.isActive()

    def _window(self) -> list:
        """The readable photos of the shown one and the next without a draft."""
        items = (
            self.queue.items[self.queue.position : self.queue.position + AHEAD]
            if self.queue
            else []
        )
        return [
            item
            for item in items
            if item.sample_id not in self._unreadable
            and not self.queue.draft_path(item.sample_id).exists()
        ]

    def _prelabel_ahead(self) -> None:
        """Called when a photo is shown, and after a job that succeeded if the user moved on
        meanwhile; never after a failure (shown once, then Pre-label or a move tries again)."""
        if self._window() and not self.runner.running:
            self.runner.run()

    def _prepare_prelabel(self) -> Job:
        items = self._window()
        if not items:
            raise JobRefused("Nothing to pre-label: the photo shown and the next have drafts")
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        queue, position, made = self.queue, self.queue.position, []
        people_ahead = self.people.ahead.value

        def work():
            """Read the photos (off the GUI thread) and yield (sample id, labels, people or
            None, scores-file entry) for each."""
            readable = []
            for item in items:
                try:
                    readable.append((item.sample_id, read_photo(item.photo)))
                except ValueError:
                    self._unreadable.add(item.sample_id)  # reported when it is shown
            if not readable:
                return
            results = self._process.segment([photo for _, photo in readable], source)
            try:
                for result in results:  # routed by sample id, never by place in a list
                    yield (
                        (
                            readable[result.index][0],
                            result.labels,
                            propose_people(result.labels) if people_ahead else None,
                            score_entry(result.labels, result.confidence),
                        )
                        if isinstance(result, Segmentation)
                        else result
                    )
            finally:
                results.close()

        def take(result: tuple[str, np.ndarray, np.ndarray | None, dict]) -> None:
            """Keep the model's draft (unless the annotator saved one meanwhile), its people and
            its score, and show it if its photo is shown, keeping what was painted on it."""
            sample_id, labels, people, entry = result
            self._model_loaded = source
            made.append(sample_id)
            self.runner.status.value = f"Pre-labelled {', '.join(made)}…"
            corrected = False
            saved = queue.save_draft(sample_id, labels, corrected=False)
            if saved:
                keep_prelabel(queue.folder, sample_id, labels, source)  # for the effort log
                if people is not None:
                    queue.save_people_draft(sample_id, people)
                self._scored(queue, {sample_id: entry}, source)
            else:
                # another napari made (or corrected) its draft first: show that one, never
                # an empty mask
                queue.refresh()
                labels = queue.load_draft(sample_id)
                corrected = queue.state(sample_id) != "pre-labelled"
                if labels is None:
                    return
            parts = self.parts_layer()
            if queue is self.queue:
                self._update_row(sample_id)
            if (
                queue is self.queue
                and sample_id == self.shown_id
                and parts is not None
                and self._origin == "none"
                and parts.data.shape == labels.shape
            ):
                self._origin = "draft"
                if self._edited():
                    apply_prediction(parts, labels, keep_edits=True)  # one undoable step
                    self._draft_shown = labels
                    self._seen_since = time.monotonic()
                else:  # nothing to merge or to undo
                    self._show_parts(labels, corrected=corrected)
                self._show_people(queue.load_people_draft(sample_id))
                self._show_state()

        def done() -> str:
            if made:
                remember_model(source)
            if self.queue is not queue or self.queue.position != position:
                self._ahead_timer.start()  # the user moved on: pre-label there once this job ends
            return f"Pre-labelled {', '.join(made)}" if made else "No photo could be read"

        loading = " (loading the model…)" if self._model_loaded != source else "…"
        return Job(
            work(),
            total=len(items),
            description="Pre-labelling ahead",
            on_result=take,
            on_done=done,
            message=f"Pre-labelling {', '.join(i.sample_id for i in items)}{loading}",
        )


def _action_buttons(*table: tuple[str, str, Callable[[], object]]) -> list[PushButton]:
    """A button for each (text, tooltip, action) of ``table``; pressing it calls the action."""
    buttons = []
    for text, tooltip, action in table:
        button = PushButton(text=text, tooltip=tooltip)
        button.changed.connect(action)
        buttons.append(button)
    return buttons


def os_error_line(error: OSError) -> str:
    """``<file>: <reason>`` of an OSError, without its errno."""
    return (
        f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
    )


def forget_undo_history(layer: Labels) -> None:
    """Empty the undo history of ``layer`` (napari does when a layer stops being editable)."""
    mode, layer.editable = layer.mode, False
    layer.editable, layer.mode = True, mode


def _changed_by(error) -> str:
    """ "the dataset's sample was written by bob@host with review at 2026-12-02 01:02:03 UTC"."""
    writer, removed = error.writer or {}, error.current_version is None
    if removed:
        return "the dataset's sample was removed"
    if not writer:
        return "the dataset's sample was written by a tool that records no writer"
    tool = f" with {writer['tool']}" if writer.get("tool") else ""
    return (
        f"the dataset's sample was written by {writer.get('user', '?')}@"
        f"{writer.get('host', '?')}{tool} at {when(writer.get('time'))}"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
