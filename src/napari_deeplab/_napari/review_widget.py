"""The "Review queue" widget: work through a folder of photos into a CIHP dataset.

Next and Previous save the photo in hand (as a draft) and show the next one; the model
pre-labels the photo shown and the one after it in the background (in the shared model
process), so Next is usually instant. Accept exports the photo into the dataset's split.
The queue's state lives in the dataset folder: opening the same folder again resumes.
One photo layer and one parts layer serve every photo (their data swapped in place): removing
and adding layers froze the viewer for a second on each Next.
"""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QListWidget, QSizePolicy

from ..cihp import SPLIT_ID_FILES
from ..model_process import FrameResult
from ..prelabel import read_photo
from ..refine import people_from_parts
from ..review import ReviewQueue
from .class_legend import NEXT_CLASS_KEY, PREVIOUS_CLASS_KEY, ClassLegend
from .io import PEOPLE_SUFFIX
from .job_runner import Job, JobRefused, JobRunner, model_process_for
from .model_chooser import ModelChooser, remember_model
from .parts_layer import PARTS_SUFFIX, apply_prediction, edit_tracker, parts_features
from .recent_datasets import remember_dataset
from .shortcuts import bind_keys, on_removed, shortcut_help

# free in napari's viewer and layer keymaps; Alt+A is neither a menu mnemonic (File, View,
# Layers, Plugins, Window, Help) nor an app shortcut (Alt+C, Alt+S, Alt+T)
NEXT_KEY, PREVIOUS_KEY, ACCEPT_KEY = "Alt-Right", "Alt-Left", "Alt-A"
AHEAD = 2  # photos pre-labelled ahead: the one shown and the next
ACCEPT_AGAIN_S = 0.5  # an Accept this soon after the last one is a double press, not a review
OPEN_FIRST = "Open a queue first: give the photos and the dataset folder, then Open queue"


class ReviewWidget(Container):
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
        self._accepted_at = -ACCEPT_AGAIN_S  # time.monotonic() of the last Accept

        self.photos = FileEdit(mode="d", nullable=True, label="Photos",
                               tooltip="The folder of photos to review, or a CIHP split")
        self.dataset = FileEdit(mode="d", nullable=True, label="Dataset", tooltip="The dataset "
                                "folder to export into; the drafts and position are kept there")
        self.split = ComboBox(choices=list(SPLIT_ID_FILES), label="Split")
        self.model = ModelChooser(tooltip="The model that pre-labels the photos")
        self.skip_exported = CheckBox(text="Skip exported photos", value=True)
        self.photo_list = QListWidget()
        self.photo_list.setToolTip("Each photo's state; double-click one to go to it")
        self.photo_list.itemDoubleClicked.connect(lambda item: self.go_to(self.photo_list.row(item)))
        photo_list = Container(labels=False)
        photo_list.native.layout().addWidget(self.photo_list)
        buttons = [PushButton(text=text, tooltip=tooltip) for text, tooltip in (
            ("Open queue", "Open the photos; the work saved in the dataset folder resumes"),
            ("Previous", f"Save this photo's draft and show the previous one ({PREVIOUS_KEY})"),
            ("Next", f"Save this photo's draft and show the next one ({NEXT_KEY})"),
            ("Accept", f"Export the photo, its parts and people, then show the next ({ACCEPT_KEY})"),
            ("Propose people", ("Add an editable '<photo> people' layer, one label per person "
                                "region of the parts; exported as Human_ids")))]
        (self.open_button, self.previous_button, self.next_button, self.accept_button,
         self.people_button) = buttons
        for button, action in zip(buttons, (self.open_queue, self.previous_photo, self.next_photo,
                                            self.accept, self.propose_people), strict=True):
            button.changed.connect(action)
        self.status = Label(value="Give the photos and the dataset folder, then Open queue")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.runner = JobRunner(self._prepare_prelabel, run_text="Pre-label",
                                run_tooltip="Pre-label the photo shown and the next one again "
                                            "(after an error; otherwise it happens by itself)",
                                cancel_tooltip="Stop pre-labelling; the drafts made are kept")
        self.legend = ClassLegend(self.parts_layer)
        self.help_line = Label(value=shortcut_help({"Alt-Left/Right": "photo", ACCEPT_KEY: "accept",
                                                    "Shift-Up/Down": "class"}))
        button_row = Container(widgets=buttons[1:], layout="horizontal", labels=False)
        review = Container(widgets=[self.open_button, self.skip_exported, photo_list, button_row,
                                    self.status, self.runner, self.help_line,
                                    Label(value="Classes"), self.legend], labels=False)
        photo_list.margins = button_row.margins = review.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self.photos, self.dataset, self.split, self.model, review])
        self._process = model_process_for(self)
        self._ahead_timer = QTimer(self.native, singleShot=True, interval=0)
        self._ahead_timer.timeout.connect(self._prelabel_ahead)
        on_removed(self, self.runner.cancel)
        bind_keys(napari_viewer, self, {NEXT_KEY: self.next_photo, PREVIOUS_KEY: self.previous_photo,
                                        ACCEPT_KEY: self.accept,
                                        NEXT_CLASS_KEY: self.legend.next_class,
                                        PREVIOUS_CLASS_KEY: self.legend.previous_class})

    # --- the queue ---------------------------------------------------------------------------

    def open_queue(self) -> None:
        """Open the queue of the Photos folder in the Dataset folder; show its photo in hand."""
        if self.photos.value is None or self.dataset.value is None:
            return self._refuse("Give the folder of photos and the dataset folder to export "
                                "into (nothing was written)")
        try:
            queue = ReviewQueue(self.photos.value.expanduser(), self.dataset.value.expanduser(),
                                self.split.value)
        except OSError as error:
            return self._refuse(f"{os_error_line(error)}; choose a photos folder you can read "
                                "and a dataset folder you can write to")
        except ValueError as error:  # DatasetError is a ValueError
            return self._refuse(str(error))
        if not self._save_current():
            return
        self.runner.cancel()
        self.queue, self._warned = queue, 0
        self._unreadable.clear()
        self._show_warnings()
        remember_dataset(queue.root)  # Fine-tune offers it
        self.photo_list.clear()
        self.photo_list.addItems([self._row_text(item.sample_id) for item in queue.items])
        self._show(queue.position)

    def go_to(self, position: int) -> None:
        """Save the photo in hand and show the photo at ``position`` of the queue."""
        if self.queue is not None and self._save_current():
            self.queue.go_to(position)
            self._show(self.queue.position)

    def next_photo(self) -> None:
        """Save the photo in hand and show the next one (exported ones skipped if asked)."""
        if self._save_current():
            self._move(1)

    def previous_photo(self) -> None:
        """Save the photo in hand and show the previous one."""
        if self._save_current():
            self._move(-1)

    def accept(self) -> None:
        """Export the photo in hand with its parts (and people) layer, then show the next."""
        parts, people = self._parts_or_refuse(), self._layer("people")
        if parts is None:
            return
        if not (self._edited() or self.queue.draft_path(self.shown_id).exists()):
            return self._refuse("No parts to export yet: wait for the pre-label, or paint them")
        if time.monotonic() - self._accepted_at < ACCEPT_AGAIN_S:
            return self._refuse(f"Accept pressed twice: {self.shown_id} was not exported; look "
                                "at it, then Accept")
        try:
            self.queue.accept(self.shown_id, parts.data,
                              None if people is None else np.asarray(people.data))
        except OSError as error:
            return self._refuse(f"{self.shown_id}: Accept did not complete ({os_error_line(error)}); "
                                "make the dataset folder writable, then Accept again")
        except ValueError as error:
            return self._refuse(f"{self.shown_id}: {error}")
        self._update_row(self.shown_id)
        self._accepted_at = time.monotonic()
        self._move(1)

    def propose_people(self) -> None:
        """Add (or replace) the people layer of the photo in hand, proposed from its parts."""
        parts, people = self._parts_or_refuse(), self._layer("people")
        if parts is None:
            return
        proposal = people_from_parts(parts.data)
        if people is None:
            people = self.viewer.add_labels(proposal, name=self.shown_id + PEOPLE_SUFFIX,
                                            opacity=0.4)
            self._layer_ids["people"] = people.unique_id
        people.data = proposal
        self.status.value = (f"{self.shown_id}: {proposal.max()} people proposed; split or merge "
                             "them by painting, then Accept")

    def parts_layer(self) -> Labels | None:
        """The parts layer of the photo shown, if there is one."""
        return self._layer("parts")

    def _parts_or_refuse(self) -> Labels | None:
        """The parts layer of the photo in hand, or None after saying what to do."""
        if self.queue is None:
            self._refuse(OPEN_FIRST)
        elif (parts := self.parts_layer()) is not None:
            return parts
        elif self.shown_id in self._unreadable:
            self._refuse(f"{self.shown_id} cannot be read: nothing to export; go to another photo")
        elif "parts" in self._layer_ids:  # the annotator removed it
            self._refuse(f"The parts layer of {self.shown_id} was removed: double-click the "
                         "photo in the list to show it again")
        else:
            self._refuse("No parts yet: wait for the pre-label, or paint them")
        return None

    def _move(self, step: int) -> None:
        if self.queue is None:
            return self._refuse(OPEN_FIRST)
        before = self.queue.position
        if self.queue.move(step, skip_exported=self.skip_exported.value) != before:
            self._show(self.queue.position)
        else:
            self.status.value = "End of the queue" if step > 0 else "Start of the queue"

    def _edited(self) -> bool:
        """Whether the parts shown differ from the draft they were shown with (or from empty)."""
        parts = self.parts_layer()
        return parts is not None and not np.array_equal(parts.data, self._draft_shown)

    def _save_current(self) -> bool:
        """Keep the annotator's edits of the photo in hand as its (corrected) draft; a photo
        only looked at keeps its draft and state (an exported one stays exported). False, after
        saying why, if the draft could not be written: then the photo stays in hand."""
        if self.queue is None or not self._edited():
            return True
        labels = np.array(self.parts_layer().data)
        try:
            self.queue.save_draft(self.shown_id, labels, corrected=True)
        except OSError as error:
            self._refuse(f"{self.shown_id}: your edits are not saved ({os_error_line(error)}); "
                         "make the dataset folder writable, then try again")
            return False
        self._draft_shown = labels
        self._update_row(self.shown_id)
        return True

    def _show_warnings(self) -> None:
        """Show once each problem the queue met (a damaged state file or draft set aside)."""
        for problem in getattr(self.queue, "warnings", [])[self._warned:]:
            show_warning(problem)
            self._warned += 1

    def _refuse(self, message: str) -> None:
        show_error(message)
        self.status.value = message

    # --- what the viewer shows ---------------------------------------------------------------

    def _show(self, position: int) -> None:
        item = self.queue.items[position]
        self.shown_id = item.sample_id
        self.photo_list.setCurrentRow(position)
        try:
            photo = read_photo(item.photo)
            if item.sample_id in self._unreadable:  # readable again
                self._unreadable.discard(item.sample_id)
                self._update_row(item.sample_id)
        except ValueError as error:
            self._unreadable.add(item.sample_id)
            self._update_row(item.sample_id)
            for role in ("people", "parts", "photo"):
                self._remove_layer(role)
            self._refuse(f"{item.photo.name}: {error}")
            return self._prelabel_ahead()
        draft = self.queue.load_draft(item.sample_id)
        self._show_warnings()
        self._remove_layer("people")
        self._show_photo(photo)
        # a draft the annotator made is protected as a whole
        corrected = draft is not None and self.queue.state(self.shown_id) != "pre-labelled"
        self._show_parts(np.zeros(photo.shape[:2], np.uint8) if draft is None else draft,
                         corrected)
        self._show_state()
        self._prelabel_ahead()

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
        parts = self.parts_layer()
        if parts is None:
            parts = self.viewer.add_labels(labels, name=self.shown_id + PARTS_SUFFIX,
                                           features=parts_features(), opacity=0.6)
            self._layer_ids["parts"] = parts.unique_id
            self.legend.apply_to(parts)
        tracker = edit_tracker(parts)  # before any swap, while its shape matches the layer's
        parts.data, parts.name = labels, self.shown_id + PARTS_SUFFIX
        forget_undo_history(parts)  # no undoing into the previous photo's mask
        tracker.mask = np.full(labels.shape, corrected)
        self._draft_shown = labels.copy()  # the layer may paint into the array it was given
        self.viewer.layers.selection.active = parts

    def _layer(self, role: str):
        """The widget's "photo", "parts" or "people" layer, if still in the viewer."""
        unique_id = self._layer_ids.get(role)
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id), None)

    def _remove_layer(self, role: str) -> None:
        layer = self._layer(role)
        if layer is not None:
            self.viewer.layers.pop(self.viewer.layers.index(layer.name))
        self._layer_ids.pop(role, None)

    def _show_state(self) -> None:
        place = f"{self.queue.position + 1} of {len(self.queue.items)}"
        self.status.value = f"{self.shown_id}: {self.queue.state(self.shown_id)} ({place})"

    def _row_text(self, sample_id: str) -> str:
        state = "cannot be read" if sample_id in self._unreadable else self.queue.state(sample_id)
        return f"{sample_id} — {state}"

    def _update_row(self, sample_id: str) -> None:
        row = next(i for i, item in enumerate(self.queue.items) if item.sample_id == sample_id)
        self.photo_list.item(row).setText(self._row_text(sample_id))

    # --- pre-labelling ahead -----------------------------------------------------------------

    @property
    def prelabelling(self) -> bool:
        """Whether drafts of the photo shown or the next one are being made (False once each
        has one, cannot be read, or its pre-labelling failed: a failure waits for the user)."""
        return self.runner.running or self._ahead_timer.isActive()

    def _window(self) -> list:
        """The readable photos of the shown one and the next without a draft."""
        items = self.queue.items[self.queue.position:self.queue.position + AHEAD] if self.queue else []
        return [item for item in items if item.sample_id not in self._unreadable
                and not self.queue.draft_path(item.sample_id).exists()]

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

        def work():
            """Read the photos (off the GUI thread) and yield (sample id, labels) for each."""
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
                    yield ((readable[result.index][0], result.labels)
                           if isinstance(result, FrameResult) else result)
            finally:
                results.close()

        def take(result: tuple[str, np.ndarray]) -> None:
            """Keep the model's draft (unless the annotator saved one meanwhile) and show it if
            its photo is shown, keeping what was painted on it."""
            sample_id, labels = result
            self._model_loaded = source
            made.append(sample_id)
            self.runner.status.value = f"Pre-labelled {', '.join(made)}…"
            if queue.draft_path(sample_id).exists():
                return
            queue.save_draft(sample_id, labels, corrected=False)
            parts = self.parts_layer()
            if queue is self.queue:
                self._update_row(sample_id)
            if queue is self.queue and sample_id == self.shown_id and parts is not None:
                if self._edited():
                    apply_prediction(parts, labels, keep_edits=True)  # one undoable step
                    self._draft_shown = labels
                else:  # nothing to merge or to undo
                    self._show_parts(labels, corrected=False)
                self._show_state()

        def done() -> str:
            if made:
                remember_model(source)
            if self.queue is not queue or self.queue.position != position:
                self._ahead_timer.start()  # the user moved on: pre-label there once this job ends
            return f"Pre-labelled {', '.join(made)}" if made else "No photo could be read"

        loading = " (loading the model…)" if self._model_loaded != source else "…"
        return Job(work(), total=len(items), description="Pre-labelling ahead", on_result=take,
                   on_done=done, message=f"Pre-labelling {', '.join(i.sample_id for i in items)}"
                                         f"{loading}")


def os_error_line(error: OSError) -> str:
    """``<file>: <reason>`` of an OSError, without its errno."""
    return f"{error.filename}: {error.strerror}" if error.filename and error.strerror \
        else str(error)


def forget_undo_history(layer: Labels) -> None:
    """Empty the undo history of ``layer`` (napari does when a layer stops being editable)."""
    mode, layer.editable = layer.mode, False
    layer.editable, layer.mode = True, mode
