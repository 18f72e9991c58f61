"""The "Human parts" widget: run the model on an image layer and get an editable parts layer.

The model runs in the shared model process (TensorFlow never loads in napari's); the
:class:`JobRunner` drives the job from a napari worker thread, and each result is written into
the parts layer with ``data_setitem`` (one undo step per photo or frame), keeping the pixels
the annotator edited unless "Discard my edits" is ticked.
"""

from __future__ import annotations

import numpy as np
from magicgui.type_map import get_widget_class
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, RadioButtons
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..inference import Segmentation
from .class_legend import NEXT_CLASS_KEY, PREVIOUS_CLASS_KEY, ClassLegend
from .class_picker import PICKER_KEY_HELP, attach_class_picker
from .io import PEOPLE_SUFFIX, dataset_target, save_sample
from .job_runner import Job, JobRefused, JobRunner, model_process_for
from .model_chooser import ModelChooser, remember_model
from .parts_layer import (
    CONFIDENCE_SUFFIX,
    PARTS_SUFFIX,
    apply_prediction,
    edit_tracker,
    keep_classes,
    parts_features,
)
from .recent_datasets import DatasetChooser, remember_dataset
from .reparse_tool import REPARSE_KEY, ReparseTool
from .second_choice import SECOND_CHOICE_KEY, relabel_with_second_choice, store_runner_up
from .shortcuts import bind_keys, help_label, on_removed

RUN_KEY = "Shift-R"
SAVE_KEY = "Shift-D"
CURRENT_FRAME, ALL_FRAMES = "Current frame", "All frames"


def frame_count(layer: Image) -> int | None:
    """Frames of a stack (N x H x W [x 3|4]), or None for a single photo."""
    spatial = layer.data.ndim - (1 if layer.rgb else 0)
    if spatial == 2:
        return None
    if spatial == 3:
        return layer.data.shape[0]
    raise JobRefused(
        f"{layer.name}: expected a photo or a stack of photos, got {layer.data.ndim}-D data"
    )


def photo_shape(layer: Image) -> tuple:
    """The shape of the parts of ``layer``: its data's without the colour axis."""
    return layer.data.shape[: layer.data.ndim - (1 if layer.rgb else 0)]


def photo_picker(**options) -> ComboBox:
    """napari's image-layer picker (it follows the layer list), without confidence layers."""
    _, napari_options = get_widget_class(annotation=Image)
    image_layers = napari_options["choices"]
    return ComboBox(
        choices=lambda widget: [
            layer for layer in image_layers(widget) if not layer.name.endswith(CONFIDENCE_SUFFIX)
        ],
        annotation=Image,
        nullable=False,
        **options,
    )


class PrelabelWidget(Container):
    """Pre-label human parts in an image layer (Plugins > napari-deeplab > Human parts)."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = photo_picker(
            label="Image", tooltip="The photo (or stack of frames) to pre-label"
        )
        self.model = ModelChooser(tooltip="The model to pre-label with")
        self.frames = RadioButtons(
            choices=[CURRENT_FRAME, ALL_FRAMES],
            value=CURRENT_FRAME,
            orientation="horizontal",
            label="Frames",
            tooltip="For a stack: the frame shown, or every frame",
        )
        self.discard_edits = CheckBox(
            text="Discard my edits",
            tooltip="Unticked (default): pixels you painted, filled, erased or refined keep "
            "their value when the model runs again",
        )
        self.flip = CheckBox(
            text="Flip averaging",
            tooltip="Average the model's logits with those of the mirrored photo (left and "
            "right swapped back): steadier parts, twice the model's time (2x)",
        )
        self.runner = JobRunner(
            self._prepare,
            run_tooltip=f"Pre-label the image ({RUN_KEY})",
            cancel_tooltip="Stop at once; finished frames are kept",
        )
        self.reparse = ReparseTool(self)
        self.legend = ClassLegend(self.parts_layer)
        self.legend.label = "Classes"
        self.dataset = DatasetChooser(
            tooltip="The CIHP dataset that Save to dataset writes the "
            "photo and its parts into (chosen once, remembered)"
        )
        self.save_button = PushButton(
            text="Save ⇧D",
            tooltip=(
                "Write the photo, its parts (and '<photo> people') as one sample of the dataset "
                f"({SAVE_KEY.replace('-', '+')}); a sample changed by someone else is not overwritten"
            ),
        )
        self.save_button.changed.connect(self.save_to_dataset)
        saving = Container(
            widgets=[self.dataset, self.save_button],
            layout="horizontal",
            labels=False,
            label="Dataset",
        )
        saving.margins = (0, 0, 0, 0)
        keys = {
            RUN_KEY: "run",
            SAVE_KEY: "save",
            SECOND_CHOICE_KEY: "2nd choice",
            REPARSE_KEY: "re-parse",
            f"{PREVIOUS_CLASS_KEY}/{NEXT_CLASS_KEY.split('-')[1]}": "class",
            **PICKER_KEY_HELP,
        }
        super().__init__(
            widgets=[
                self.image,
                self.model,
                self.frames,
                Container(
                    widgets=[self.discard_edits, self.flip, self.reparse],
                    layout="horizontal",
                    labels=False,
                ),
                self.runner,
                saving,
                help_label(keys, label="Keys"),
                self.legend,
            ]
        )
        self.image.changed.connect(self._offer_frames)
        self._offer_frames()
        self._process = model_process_for(self)
        self._removed = False
        self._pending_confidence: list[tuple] = []
        self._confidence_timer = QTimer(self.native, singleShot=True, interval=0)
        self._confidence_timer.timeout.connect(self._write_pending_confidence)
        on_removed(self, self._forget_viewer)
        bind_keys(
            napari_viewer,
            self,
            {
                RUN_KEY: self.runner.run,
                SAVE_KEY: self.save_to_dataset,
                SECOND_CHOICE_KEY: self.second_choice,
                NEXT_CLASS_KEY: self.legend.next_class,
                PREVIOUS_CLASS_KEY: self.legend.previous_class,
            },
        )
        attach_class_picker(napari_viewer, self, self.legend)
        self.reparse.bind()

    def parts_layer(self, image: Image | None = None) -> Labels | None:
        """The parts layer of ``image`` (the chosen one by default), if there is one."""
        image = image or self.image.value
        name = image.name + PARTS_SUFFIX if image is not None else None
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Labels) else None

    def owns_layer(self, layer) -> bool:
        """Whether ``layer`` is this widget's: the parts (or confidence) layer of its photo, or
        the photo (for :mod:`.shortcuts`: which widget a shared key is for)."""
        image = self.image.value
        return image is not None and layer.name in (
            image.name,
            image.name + PARTS_SUFFIX,
            image.name + CONFIDENCE_SUFFIX,
        )

    def reset_choices(self, *_) -> None:
        """On layer changes: refresh the pickers; keep the paint label of parts layers a class."""
        super().reset_choices()
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.name.endswith(PARTS_SUFFIX):
                keep_classes(layer)

    def save_to_dataset(self) -> None:
        """Write the photo and its parts (and people) layer as one sample of the chosen dataset."""
        image, parts = self.image.value, self.parts_layer()
        status = self.runner.status
        if image is None or parts is None:
            status.value = "Nothing to save: run the model on a photo first (or open a sample)"
            return
        if frame_count(image) is not None or image.multiscale:
            status.value = (
                "Save to dataset saves single photos: a stack is saved frame by "
                "frame from the Review queue"
            )
            return
        folder = self.dataset.folder.strip()
        if not folder:
            status.value = "Choose the dataset folder first (Dataset)"
            return
        people_name = image.name + PEOPLE_SUFFIX
        people = self.viewer.layers[people_name] if people_name in self.viewer.layers else None
        try:
            root, split = dataset_target(folder)
            save_sample(
                root,
                split,
                (parts.data, {"name": parts.name, "metadata": parts.metadata}),
                (
                    image.data,
                    {
                        "name": image.name,
                        "metadata": image.metadata,
                        "source_path": image.source.path,
                    },
                ),
                (people.data, {"name": people.name}) if isinstance(people, Labels) else None,
            )
        except (ValueError, OSError) as error:
            line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            status.value = f"Not saved: {line}"
            show_error(status.value)
            return
        remember_dataset(root)
        status.value = f"Saved '{image.name}' into {root} ({split})"
        show_info(status.value)

    def second_choice(self) -> None:
        """Relabel the region under the cursor (or the selected shapes) of the frame shown
        with the model's runner-up class (:mod:`.second_choice`); one undo step."""
        parts = self.parts_layer()
        try:
            if parts is None:
                raise ValueError("No parts layer: run the model on a photo first")
            self.runner.status.value = relabel_with_second_choice(self.viewer, parts)
        except ValueError as refusal:
            self.runner.status.value = str(refusal)
            show_info(str(refusal))
            return
        self.viewer.layers.selection.active = parts  # Ctrl+Z undoes on the layer changed

    def _offer_frames(self, *_) -> None:
        try:
            is_stack = self.image.value is not None and frame_count(self.image.value) is not None
        except JobRefused:
            is_stack = False
        self.frames.enabled = is_stack

    def _writable_parts(self, image: Image) -> Labels | None:
        """The parts layer to write ``image``'s prediction into (None: one is made), or
        :class:`JobRefused` if a layer of its name cannot take it."""
        name, shape = image.name + PARTS_SUFFIX, photo_shape(image)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and not isinstance(layer, Labels):
            raise JobRefused(f"'{name}' is not a Labels layer; rename or remove it and run again")
        if layer is not None and layer.data.shape != shape:
            raise JobRefused(
                f"'{name}' has shape {layer.data.shape}, not the image's {shape}; "
                "rename or remove it and run again"
            )
        return layer

    def _forget_viewer(self) -> None:
        self._removed = True  # results or confidence still on their way are dropped
        self.runner.cancel()

    # --- the job -----------------------------------------------------------------------------

    def _prepare(self) -> Job:
        image = self.image.value
        if image is None:
            raise JobRefused(
                "Open a photo first (File > Open, or File > Open Sample > napari-deeplab)"
            )
        try:
            source = self.model.checked_source()
        except ValueError as error:
            raise JobRefused(str(error)) from None
        frames = frame_count(image)
        self._writable_parts(image)  # refused now rather than after the model ran
        data = image.data[0] if image.multiscale else image.data  # at full resolution
        if frames is None:
            indices, photos = [None], [np.asarray(data)]
        else:
            indices = (
                list(range(frames))
                if self.frames.value == ALL_FRAMES
                else [self.viewer.dims.current_step[0]]
            )
            photos = [np.asarray(data[i]) for i in indices]
        keep_edits = not self.discard_edits.value

        def write(result: Segmentation) -> None:
            self._write_result(image, indices[result.index], result, keep_edits)

        def done() -> str:
            remember_model(source)
            if image.name not in self.viewer.layers:
                return f"'{image.name}' was removed while the model ran: nothing was written"
            return "Done: correct the parts layer; every step undoes with Ctrl+Z"

        return Job(
            self._process.segment(
                photos, source, tta="flip" if self.flip.value else None, runner_up=True
            ),
            total=len(photos),
            description=f"Pre-labelling {image.name}",
            on_result=write,
            on_done=done,
            message=f"Running on {len(photos)} photo(s)…",
        )

    def _write_result(
        self, image: Image, frame: int | None, result: Segmentation, keep_edits: bool
    ) -> None:
        if self._removed or image.name not in self.viewer.layers:
            return
        parts, shape = self._writable_parts(image), photo_shape(image)
        created = parts is None
        if created:
            # a new layer takes the prediction as its data: nothing to undo or merge, and a
            # 12-megapixel data_setitem would freeze the viewer for seconds
            data = result.labels if frame is None else np.zeros(shape, np.uint8)
            parts = self.viewer.add_labels(
                data,
                name=image.name + PARTS_SUFFIX,
                features=parts_features(),
                scale=image.scale,
                translate=image.translate,
                opacity=0.6,
            )
            edit_tracker(parts)
            self.legend.apply_to(parts)
            self.viewer.layers.selection.active = parts
        if frame is not None or not created:
            apply_prediction(parts, result.labels, frame, keep_edits=keep_edits)
            self.viewer.layers.selection.active = parts  # Ctrl+Z undoes the run
        if result.runner_up is not None:
            store_runner_up(parts, result.runner_up, frame)
        # the confidence layer in a later turn of the event loop, so that no turn does both
        self._pending_confidence.append((image, frame, result.confidence, shape))
        self._confidence_timer.start()

    def _write_pending_confidence(self) -> None:
        while self._pending_confidence and not self._removed:
            self._write_confidence(*self._pending_confidence.pop(0))

    def _write_confidence(
        self, image: Image, frame: int | None, confidence: np.ndarray, shape: tuple
    ) -> None:
        if image.name not in self.viewer.layers:
            return
        name = image.name + CONFIDENCE_SUFFIX
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or layer.data.shape != tuple(shape):
            if layer is not None:
                self.viewer.layers.pop(self.viewer.layers.index(name))
            layer = self.viewer.add_image(
                np.zeros(shape, np.float32),
                name=name,
                colormap="inferno",
                contrast_limits=(0, 1),
                visible=False,
                scale=image.scale,
                translate=image.translate,
            )
            self.viewer.layers.move(
                self.viewer.layers.index(name), self.viewer.layers.index(image.name) + 1
            )
            parts = self.parts_layer(image)
            if parts is not None:
                self.viewer.layers.selection.active = parts  # keep painting where you were
        if frame is None:
            layer.data = confidence
        else:
            layer.data[frame] = confidence
            layer.refresh()
