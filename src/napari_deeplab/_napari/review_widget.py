"""The "Review queue" widget: work through a folder of photos into a CIHP dataset.

Next and Previous save the photo in hand (as a draft) and show the next one; the model
pre-labels the photo shown and the one after it in the background (in the shared model
process), so Next is usually instant. Accept exports the photo into the dataset's split.
The queue's state lives in the dataset folder: opening the same folder again resumes.

One photo layer and one parts layer are reused from photo to photo (their data swapped in
place), because removing and adding layers froze the viewer for seconds on every Next.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QListWidget, QSizePolicy

from ..cihp import SPLIT_ID_FILES, DatasetError
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

# Alt+arrows and Alt+A: free in napari's viewer and layer keymaps, not a menu mnemonic
# (File, View, Layers, Plugins, Window, Help) nor an app shortcut (Alt+C, Alt+S, Alt+T)
NEXT_KEY, PREVIOUS_KEY, ACCEPT_KEY = "Alt-Right", "Alt-Left", "Alt-A"
AHEAD = 2
"""Photos pre-labelled ahead: the one shown and the next."""


class ReviewWidget(Container):
    """Review a folder of photos into a dataset (Plugins > napari-deeplab > Review queue)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.queue: ReviewQueue | None = None
        self.shown_id: str | None = None
        self._layer_ids: dict[str, object] = {}  # "photo", "parts", "people" -> unique_id
        self._failed: set[str] = set()  # pre-labelling failed: not retried until asked
        self._unreadable: set[str] = set()
        self._job_ids: list[str] = []
        self._automatic = False
        self._loaded_model: str | None = None
        self._warned = 0  # the queue's warnings shown so far

        self.photos = FileEdit(mode="d", nullable=True, label="Photos",
                               tooltip="The folder of photos to review, or a CIHP split")
        self.dataset = FileEdit(mode="d", nullable=True, label="Dataset",
                                tooltip="The dataset folder to export into; the queue's drafts "
                                        "and position are kept there too")
        self.split = ComboBox(choices=list(SPLIT_ID_FILES), label="Split",
                              tooltip="The split of the dataset that Accept exports into")
        self.model = ModelChooser(tooltip="The model that pre-labels the photos")
        self.open_button = PushButton(text="Open queue", tooltip="Open the photos; the work "
                                      "saved in the dataset folder resumes")
        self.skip_exported = CheckBox(text="Skip exported photos", value=True)
        self.photo_list = QListWidget()
        self.photo_list.setToolTip("Each photo's state; double-click one to go to it")
        self.photo_list.itemDoubleClicked.connect(
            lambda item: self.go_to(self.photo_list.row(item)))
        photo_list = Container(labels=False)
        photo_list.margins = (0, 0, 0, 0)
        photo_list.native.layout().addWidget(self.photo_list)
        self.previous_button = PushButton(text="Previous", tooltip="Save this photo's draft and "
                                          f"show the previous one ({PREVIOUS_KEY})")
        self.next_button = PushButton(text="Next", tooltip="Save this photo's draft and show the "
                                      f"next one ({NEXT_KEY})")
        self.accept_button = PushButton(text="Accept", tooltip="Export this photo, its parts and "
                                        f"people into the dataset, then show the next ({ACCEPT_KEY})")
        self.people_button = PushButton(text="Propose people", tooltip="Add an editable '<photo> "
                                        "people' layer, one label per connected person region of "
                                        "the parts; exported as Human_ids")
        actions = {self.open_button: self.open_queue, self.previous_button: self.previous_photo,
                   self.next_button: self.next_photo, self.accept_button: self.accept,
                   self.people_button: self.propose_people}
        for button, action in actions.items():
            button.changed.connect(action)
        button_row = Container(widgets=[self.previous_button, self.next_button,
                                        self.accept_button, self.people_button],
                               layout="horizontal", labels=False)
        button_row.margins = (0, 0, 0, 0)
        self.status = Label(value="Give the photos and the dataset folder, then Open queue")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.runner = JobRunner(self._prepare_prelabel, run_text="Pre-label",
                                run_tooltip="Pre-label the photo shown and the next one (they are "
                                            "pre-labelled by themselves; this tries again after an error)",
                                cancel_tooltip="Stop pre-labelling; the drafts made are kept")
        self.legend = ClassLegend(self.parts_layer)
        self.help_line = Label(value=shortcut_help({f"{PREVIOUS_KEY}/{NEXT_KEY.split('-')[1]}": "photo",
                                               ACCEPT_KEY: "accept",
                                               f"{PREVIOUS_CLASS_KEY}/{NEXT_CLASS_KEY.split('-')[1]}": "class"}))
        review = Container(widgets=[self.open_button, self.skip_exported, photo_list, button_row,
                                    self.status, self.runner, self.help_line, Label(value="Classes"),
                                    self.legend], labels=False)
        review.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self.photos, self.dataset, self.split, self.model, review])
        self._process = model_process_for(self)
        self._ahead_timer = QTimer(self.native, singleShot=True, interval=0)
        self._ahead_timer.timeout.connect(self._prelabel_ahead)
        on_removed(self, self.runner.cancel)
        bind_keys(napari_viewer, self, {NEXT_KEY: self.next_photo,
                                        PREVIOUS_KEY: self.previous_photo,
                                        ACCEPT_KEY: self.accept,
                                        NEXT_CLASS_KEY: self.legend.next_class,
                                        PREVIOUS_CLASS_KEY: self.legend.previous_class})

    # --- the queue ---------------------------------------------------------------------------

    def open_queue(self) -> None:
        """Open the queue of the Photos folder in the Dataset folder and show its photo in hand."""
        photos, dataset = self.photos.value, self.dataset.value
        if photos is None:
            return self._refuse("Give the folder of photos (or a CIHP split) to review")
        if dataset is None:
            return self._refuse("Give the dataset folder to export into (nothing was written)")
        try:
            queue = ReviewQueue(photos.expanduser(), dataset.expanduser(), self.split.value)
        except (OSError, DatasetError, ValueError) as error:
            return self._refuse(str(error))
        self._save_current()
        self.runner.cancel()
        self.queue, self.shown_id = queue, None
        self._failed.clear()
        self._unreadable.clear()
        remember_dataset(queue.root)
        self._warned = 0
        self._show_queue_warnings()
        self.photo_list.clear()
        self.photo_list.addItems([self._row_text(item.sample_id) for item in queue.items])
        self._show(queue.position)

    def go_to(self, position: int) -> None:
        """Save the photo in hand and show the photo at ``position`` of the queue."""
        if self.queue is None:
            return
        self._save_current()
        self.queue.go_to(position)
        self._show(self.queue.position)

    def next_photo(self) -> None:
        """Save the photo in hand and show the next one (exported ones skipped if asked)."""
        self._save_current()
        self._move(1)

    def previous_photo(self) -> None:
        """Save the photo in hand and show the previous one."""
        self._save_current()
        self._move(-1)

    def accept(self) -> None:
        """Export the photo in hand with its parts (and people) layer, then show the next."""
        parts = self.parts_layer()
        if self.queue is None or parts is None:
            return self._refuse("No parts to export yet: wait for the pre-label, or paint them")
        people = self._layer("people")
        try:
            self.queue.accept(self.shown_id, parts.data,
                              None if people is None else np.asarray(people.data))
        except (OSError, ValueError) as error:
            return self._refuse(f"{self.shown_id}: {error}")
        self._update_row(self.shown_id)
        self._move(1)

    def propose_people(self) -> None:
        """Add (or replace) the people layer of the photo in hand, proposed from its parts."""
        parts = self.parts_layer()
        if parts is None:
            return self._refuse("No parts yet: wait for the pre-label, or paint them")
        proposal = people_from_parts(parts.data)
        people = self._layer("people")
        if people is None:
            people = self.viewer.add_labels(proposal, name=self.shown_id + PEOPLE_SUFFIX,
                                            opacity=0.4)
            self._layer_ids["people"] = people.unique_id
        else:
            people.data = proposal
        self.status.value = (f"{self.shown_id}: {proposal.max()} people proposed; split or merge "
                             "them by painting, then Accept")

    def parts_layer(self) -> Labels | None:
        """The parts layer of the photo shown, if there is one."""
        return self._layer("parts")

    def _move(self, step: int) -> None:
        if self.queue is None:
            return
        before = self.queue.position
        position = self.queue.move(step, skip_exported=self.skip_exported.value)
        if position != before:
            self._show(position)
        else:
            self.status.value = "End of the queue" if step > 0 else "Start of the queue"

    def _save_current(self) -> None:
        """Keep the annotator's edits of the photo in hand as its (corrected) draft."""
        parts = self.parts_layer()
        if self.queue is None or parts is None or not edit_tracker(parts).mask.any():
            return  # an unedited layer holds the draft on disk, or nothing
        self.queue.save_draft(self.shown_id, parts.data, corrected=True)
        self._update_row(self.shown_id)

    def _show_queue_warnings(self) -> None:
        """Show the problems the queue met (a damaged state file or draft set aside) once."""
        problems = getattr(self.queue, "warnings", [])  # absent from older ReviewQueues
        for problem in problems[self._warned:]:
            show_warning(problem)
        self._warned = len(problems)

    def _refuse(self, message: str) -> None:
        show_error(message)
        self.status.value = message

    # --- what the viewer shows ---------------------------------------------------------------

    def _show(self, position: int) -> None:
        item = self.queue.items[position]
        self.shown_id = item.sample_id
        self._failed.discard(item.sample_id)  # moving to a photo asks for its pre-label again
        self.photo_list.setCurrentRow(position)
        try:
            photo = read_photo(item.photo)
        except ValueError as error:
            self._unreadable.add(item.sample_id)
            for role in ("people", "parts", "photo"):
                self._remove_layer(role)
            self._refuse(f"{item.photo.name}: {error} ({self._where()})")
            return self._prelabel_ahead()
        self._unreadable.discard(item.sample_id)
        draft = self.queue.load_draft(item.sample_id)
        self._show_queue_warnings()
        if draft is not None and draft.shape != photo.shape[:2]:
            show_warning(f"{item.sample_id}: the draft does not fit the photo; starting empty")
            draft = None
        corrected = draft is not None and self.queue.state(item.sample_id) in ("corrected",
                                                                               "exported")
        self._remove_layer("people")
        self._show_photo(photo, item.sample_id)
        self._show_parts(np.zeros(photo.shape[:2], np.uint8) if draft is None else draft,
                         corrected)
        self._show_state()
        self._prelabel_ahead()

    def _show_photo(self, photo: np.ndarray, name: str) -> None:
        layer = self._layer("photo")
        rgb = photo.ndim == 3
        if layer is not None and layer.rgb != rgb:  # napari fixes rgb when a layer is made
            for role in ("parts", "photo"):
                self._remove_layer(role)
            layer = None
        if layer is None:
            layer = self.viewer.add_image(photo, name=name)
            self._layer_ids["photo"] = layer.unique_id
            return
        resized = layer.data.shape != photo.shape
        layer.data = photo
        layer.name = name
        if photo.dtype != np.uint8:
            layer.reset_contrast_limits()
        if resized:
            self.viewer.reset_view()

    def _show_parts(self, labels: np.ndarray, corrected: bool) -> None:
        """Show ``labels`` as the parts of the photo shown; all of it counts as the annotator's
        work if ``corrected``."""
        parts = self.parts_layer()
        if parts is None:
            parts = self.viewer.add_labels(labels, name=self.shown_id + PARTS_SUFFIX,
                                           features=parts_features(), opacity=0.6)
            self._layer_ids["parts"] = parts.unique_id
            self.legend.apply_to(parts)
            tracker = edit_tracker(parts)
        else:
            tracker = edit_tracker(parts)  # before the swap, while its shape still matches
            parts.data = labels
            parts.name = self.shown_id + PARTS_SUFFIX
            forget_undo_history(parts)  # no undoing into the previous photo's mask
        tracker.mask = np.full(labels.shape, corrected)
        self.viewer.layers.selection.active = parts

    def _layer(self, role: str):
        """The widget's "photo", "parts" or "people" layer, if still in the viewer."""
        unique_id = self._layer_ids.get(role)
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id),
                    None)

    def _remove_layer(self, role: str) -> None:
        layer = self._layer(role)
        if layer is not None:
            self.viewer.layers.pop(self.viewer.layers.index(layer.name))
        self._layer_ids.pop(role, None)

    def _where(self) -> str:
        return f"{self.queue.position + 1} of {len(self.queue.items)}"

    def _show_state(self) -> None:
        self.status.value = f"{self.shown_id}: {self.queue.state(self.shown_id)} ({self._where()})"

    def _row_text(self, sample_id: str) -> str:
        return f"{sample_id} — {self.queue.state(sample_id)}"

    def _update_row(self, sample_id: str) -> None:
        row = next(i for i, item in enumerate(self.queue.items) if item.sample_id == sample_id)
        self.photo_list.item(row).setText(self._row_text(sample_id))

    # --- pre-labelling ahead -----------------------------------------------------------------

    @property
    def prelabelling(self) -> bool:
        """Whether drafts of the photo shown or the next one are being made or still due (False
        once each has a draft, is unreadable or failed)."""
        return self.runner.running or bool(self._due())

    def _window(self) -> list:
        """The readable queue items to pre-label ahead that have no draft yet."""
        if self.queue is None:
            return []
        items = self.queue.items[self.queue.position:self.queue.position + AHEAD]
        return [item for item in items if item.sample_id not in self._unreadable
                and not self.queue.draft_path(item.sample_id).exists()]

    def _due(self) -> list:
        """The items of the window to pre-label without being asked."""
        return [item for item in self._window() if item.sample_id not in self._failed]

    def _prelabel_ahead(self) -> None:
        """Start pre-labelling the photos due, unless a job for one of them runs already."""
        due = self._due()
        if not due:
            return
        if self.runner.running:
            if set(self._job_ids) & {item.sample_id for item in due}:
                return
            self.runner.cancel()  # the user went elsewhere: that job's photos can wait
        self._automatic = True
        try:
            self.runner.run()
        finally:
            self._automatic = False

    def _prepare_prelabel(self) -> Job:
        if self.queue is None:
            raise JobRefused("Open a queue first")
        items = self._due() if self._automatic else self._window()
        if not items:
            raise JobRefused("The photo shown and the next one have drafts already")
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        self._failed -= {item.sample_id for item in items}
        queue, ids, made = self.queue, [item.sample_id for item in items], []
        self._job_ids = ids

        def work():
            """Read the photos and pre-label them, yielding (sample id, labels)."""
            try:
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
                    for result in results:
                        # routed by sample id: the photos sent skip the unreadable ones
                        yield ((readable[result.index][0], result.labels)
                               if isinstance(result, FrameResult) else result)
                finally:
                    results.close()
            except Exception:
                self._failed.update(ids)  # shown once by the runner, not retried until asked
                raise

        def take(result: tuple[str, np.ndarray]) -> None:
            sample_id, labels = result
            if self._loaded_model != source:
                self._loaded_model = source
                remember_model(source)
            self._take_prelabel(queue, sample_id, labels)
            made.append(sample_id)
            rest = ids[ids.index(sample_id) + 1:]
            if rest:
                self.runner.status.value = f"Pre-labelled {sample_id}; pre-labelling {rest[0]}…"

        def done() -> str:
            self._ahead_timer.start()  # after the runner ends this job: the user may have moved on
            return f"Pre-labelled {', '.join(made)}" if made else "Nothing pre-labelled: " \
                "the photos cannot be read"

        loading = " (loading the model…)" if self._loaded_model != source else "…"
        return Job(work(), total=len(items), description="Pre-labelling ahead",
                   on_result=take, on_done=done, message=f"Pre-labelling {ids[0]}{loading}")

    def _take_prelabel(self, queue: ReviewQueue, sample_id: str, labels: np.ndarray) -> None:
        """Keep the model's draft of ``sample_id`` (unless the annotator saved one meanwhile)
        and show it if the photo is shown, keeping what was painted on it."""
        if queue.draft_path(sample_id).exists():
            return
        queue.save_draft(sample_id, labels, corrected=False)
        if queue is not self.queue:
            return
        self._update_row(sample_id)
        parts = self.parts_layer()
        if sample_id != self.shown_id or parts is None or parts.data.shape != labels.shape:
            return
        if edit_tracker(parts).mask.any():
            apply_prediction(parts, labels, keep_edits=True)  # one undoable step
        else:  # nothing painted yet: nothing to merge or undo
            parts.data = labels
            forget_undo_history(parts)
        self._show_state()


def forget_undo_history(layer: Labels) -> None:
    """Empty the undo history of ``layer`` (napari empties it when a layer stops being editable),
    keeping its mode."""
    mode = layer.mode
    layer.editable = False
    layer.editable = True
    layer.mode = mode
