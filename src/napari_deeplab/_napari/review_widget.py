"""The "Review queue" widget: work through a folder of photos into a CIHP dataset.

Next and Previous save the photo in hand (as a draft) and show the next one; the model
pre-labels the photo shown and the one after it in the background (in the shared model
process), so Next is usually instant. Accept exports the photo into the dataset's split.
The queue's state lives in the dataset folder: opening the same folder again resumes.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QListWidget, QPushButton, QVBoxLayout, QWidget)

from ..cihp import SPLIT_ID_FILES
from ..model_process import FrameResult
from ..prelabel import read_photo
from ..refine import people_from_parts
from ..review import ReviewQueue
from .io import PEOPLE_SUFFIX
from .model_process import shared_model_process
from .parts_layer import PARTS_SUFFIX, edit_tracker, parts_colormap, parts_features
from .recent_models import recent_models

NEXT_KEY, PREVIOUS_KEY, ACCEPT_KEY = "Alt-Right", "Alt-Left", "Alt-A"


class ReviewWidget(QWidget):
    """Review a folder of photos into a dataset (Plugins > napari-deeplab > Review queue)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.queue: ReviewQueue | None = None
        self._worker = None
        self._shown: str | None = None

        self.source = QLineEdit()
        self.source.setPlaceholderText("folder of photos, or a CIHP split")
        self.root = QLineEdit()
        self.root.setPlaceholderText("dataset folder to export into")
        self.split = QComboBox()
        self.split.addItems(list(SPLIT_ID_FILES))
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(recent_models())
        source_row, root_row = QHBoxLayout(), QHBoxLayout()
        for row, line in ((source_row, self.source), (root_row, self.root)):
            browse = QPushButton("…")
            browse.clicked.connect(lambda _=False, target=line: self._browse(target))
            row.addWidget(line, 1)
            row.addWidget(browse)
        open_button = QPushButton("Open queue")
        open_button.setToolTip("Open the photos; the work saved in the dataset folder resumes")
        open_button.clicked.connect(self.open_queue)
        self.skip_exported = QCheckBox("Skip exported photos")
        self.skip_exported.setChecked(True)
        self.list = QListWidget()
        self.list.itemDoubleClicked.connect(lambda item: self.go_to(self.list.row(item)))
        self.previous_button = QPushButton("Previous")
        self.previous_button.setToolTip(f"Save this photo's draft and show the previous one ({PREVIOUS_KEY})")
        self.next_button = QPushButton("Next")
        self.next_button.setToolTip(f"Save this photo's draft and show the next one ({NEXT_KEY})")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip(f"Export this photo and its parts into the dataset, then "
                                      f"show the next ({ACCEPT_KEY})")
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.accept_button.clicked.connect(self.accept)
        self.people_button = QPushButton("Propose people")
        self.people_button.setToolTip("Add an editable '<photo> people' layer, one label per "
                                      "connected person region of the parts; exported as Human_ids")
        self.people_button.clicked.connect(self.propose_people)
        buttons = QHBoxLayout()
        for button in (self.previous_button, self.next_button, self.accept_button, self.people_button):
            buttons.addWidget(button)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Photos", source_row)
        form.addRow("Dataset", root_row)
        form.addRow("Split", self.split)
        form.addRow("Model", self.model_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(open_button)
        layout.addWidget(self.skip_exported)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.viewer.bind_key(NEXT_KEY, lambda viewer: self.step(1), overwrite=True)
        self.viewer.bind_key(PREVIOUS_KEY, lambda viewer: self.step(-1), overwrite=True)
        self.viewer.bind_key(ACCEPT_KEY, lambda viewer: self.accept(), overwrite=True)

    def _browse(self, target: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder")
        if folder:
            target.setText(folder)

    # --- the queue ---------------------------------------------------------------------------

    def open_queue(self) -> None:
        try:
            self.queue = ReviewQueue(self.source.text().strip(), self.root.text().strip(),
                                     self.split.currentText())
        except (OSError, ValueError) as error:
            show_error(str(error))
            return
        self._refresh_list()
        self._show(self.queue.position)

    def _refresh_list(self) -> None:
        self.list.clear()
        for item in self.queue.items:
            self.list.addItem(f"{item.sample_id} — {self.queue.state(item.sample_id)}")
        self.list.setCurrentRow(self.queue.position)

    def _layers(self, sample_id: str):
        names = (sample_id, sample_id + PARTS_SUFFIX, sample_id + PEOPLE_SUFFIX)
        return [self.viewer.layers[n] if n in self.viewer.layers else None for n in names]

    def _save_current(self) -> None:
        if self._shown is None:
            return
        _, parts, _ = self._layers(self._shown)
        if parts is not None:
            edited = bool(edit_tracker(parts).mask.any())
            self.queue.save_draft(self._shown, parts.data, corrected=edited)

    def _show(self, position: int) -> None:
        item = self.queue.items[position]
        if self._shown is not None:
            for layer in self._layers(self._shown):
                if layer is not None:
                    self.viewer.layers.remove(layer)
        self._shown = item.sample_id
        try:
            photo = read_photo(item.photo)
        except ValueError as error:
            show_error(f"{item.photo}: {error}")
            return
        self.viewer.add_image(photo, name=item.sample_id)
        draft = self.queue.load_draft(item.sample_id)
        if draft is not None:
            self._add_parts(item.sample_id, draft, corrected=self.queue.state(item.sample_id)
                            in ("corrected", "exported"))
        self.list.setCurrentRow(position)
        self.status.setText(f"{item.sample_id}: {self.queue.state(item.sample_id)} "
                            f"({position + 1} of {len(self.queue.items)})")
        self._prelabel_ahead()

    def _add_parts(self, sample_id: str, labels: np.ndarray, corrected: bool) -> Labels:
        parts = self.viewer.add_labels(np.array(labels, np.uint8), name=sample_id + PARTS_SUFFIX,
                                       colormap=parts_colormap(), features=parts_features(),
                                       opacity=0.6)
        tracker = edit_tracker(parts)
        if corrected:
            tracker.mask[:] = True  # the whole draft is the annotator's
        self.viewer.layers.selection.active = parts
        return parts

    def go_to(self, position: int) -> None:
        if self.queue is None:
            return
        self._save_current()
        self.queue.go_to(position)
        self._refresh_list()
        self._show(position)

    def step(self, direction: int) -> None:
        """Save the photo in hand and show the next (1) or previous (-1) one."""
        if self.queue is None:
            return
        self._save_current()
        before = self.queue.position
        position = self.queue.move(direction, skip_exported=self.skip_exported.isChecked())
        self._refresh_list()
        if position != before:
            self._show(position)
        else:
            self.status.setText("End of the queue" if direction > 0 else "Start of the queue")

    def accept(self) -> None:
        """Export the photo in hand with its parts (and people) layer, then go on."""
        if self.queue is None or self._shown is None:
            return
        _, parts, people = self._layers(self._shown)
        if parts is None:
            show_error("no parts yet: wait for the pre-label, or paint one")
            return
        try:
            self.queue.accept(self._shown, parts.data,
                              None if people is None else np.asarray(people.data))
        except (OSError, ValueError) as error:
            show_error(f"{self._shown}: {error}")
            return
        self.step(1)

    def propose_people(self) -> None:
        """Add (or replace) the people layer of the photo in hand, proposed from its parts."""
        if self._shown is None:
            return
        _, parts, people = self._layers(self._shown)
        if parts is None:
            show_error("no parts yet: wait for the pre-label, or paint one")
            return
        proposal = people_from_parts(parts.data)
        if people is not None:
            self.viewer.layers.remove(people)
        self.viewer.add_labels(proposal, name=self._shown + PEOPLE_SUFFIX, opacity=0.4)
        self.status.setText(f"{self._shown}: {proposal.max()} people proposed; split or merge "
                            "them by painting, then Accept")

    # --- background pre-labelling ------------------------------------------------------------

    def _prelabel_ahead(self) -> None:
        """Pre-label the photo shown and the next one, whichever have no draft yet."""
        if self._worker is not None or self.queue is None:
            return
        position = self.queue.position
        wanted = [item for item in self.queue.items[position:position + 2]
                  if self.queue.load_draft(item.sample_id) is None]
        photos = []
        for item in wanted:
            try:
                photos.append(read_photo(item.photo))
            except ValueError:
                continue
        if not photos:
            return
        source = self.model_combo.currentText().strip() or None
        process = shared_model_process()

        def job():
            results = process.segment(photos, source)
            try:
                for result in results:
                    if isinstance(result, FrameResult):
                        yield result
            finally:
                results.close()

        worker = create_worker(job, _ignore_errors=True)
        worker.yielded.connect(lambda result: self._on_prelabel(wanted[result.index].sample_id, result))
        worker.errored.connect(lambda error: show_error(str(error)))
        worker.finished.connect(self._on_prelabel_finished)
        self._worker = worker
        worker.start()

    def _on_prelabel(self, sample_id: str, result: FrameResult) -> None:
        if self.queue.load_draft(sample_id) is None:
            self.queue.save_draft(sample_id, result.labels, corrected=False)
        if sample_id == self._shown and self._layers(sample_id)[1] is None:
            self._add_parts(sample_id, result.labels, corrected=False)
            self.status.setText(f"{sample_id}: pre-labelled")
        self._refresh_list()

    def _on_prelabel_finished(self) -> None:
        self._worker = None
        if self.queue is not None:
            self._prelabel_ahead()  # the user may have moved on meanwhile
