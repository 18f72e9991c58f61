"""The ``<photo> people`` Labels layer: Propose people, one key per edit, a legend of the people,
and the people kept consistent with the parts.

Keys (on the person under the mouse, or on the shapes selected in a Shapes layer when one is
the active layer), each one undoable step of the people layer (Ctrl+Z with it active):

- :data:`MERGE_KEY` over one person, then over another: the second joins the first (or: the
  people touched by the selected shapes become one).
- :data:`SPLIT_KEY` with a path or line shape selected: the person it crosses most is cut in
  two along it; or, without a shape, pressed twice over the same person at two places: the two
  seeds of the halves.
- :data:`NEW_PERSON_KEY` with a polygon, rectangle or ellipse selected: its part pixels become
  a new person.
- :data:`REMOVE_KEY` over a person (or on the people touched by the selected shapes): the
  person and its parts are erased (one undo step on the people layer and one on the parts).

Consistency (``people.consistent``): a hand edit of the people layer (brush, fill, eraser) that
puts a person on background or leaves a part pixel without one is repaired at once with
``people.repair`` (its background pixels cleared, part pixels given to the nearest person,
ids renumbered 1..N), inside the same undo step as the stroke, and says so in one line. A hand
edit of the parts layer repairs the people layer too (a step of its own). Undo and redo are
never repaired: they put back exactly what was there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from magicgui.widgets import CheckBox, Container, Label
from napari.layers import Labels, Shapes
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QListWidget, QListWidgetItem
from scipy import ndimage as ndi

from .. import people as engine
from .io import PEOPLE_SUFFIX

MERGE_KEY, SPLIT_KEY, NEW_PERSON_KEY, REMOVE_KEY = "Shift-M", "Shift-X", "Shift-N", "Shift-Delete"
KEY_HELP = {
    MERGE_KEY: "merge",
    SPLIT_KEY: "split",
    NEW_PERSON_KEY: "new person",
    REMOVE_KEY: "remove person",
}
SEED_RADIUS = 2
"""Pixels around each of the two split seeds pressed with the mouse."""
LEGEND_DELAY_MS = 150
"""The legend is recounted this long after the people last changed (one count per stroke)."""
WATCHED_KEY = "napari-deeplab people watched"


def write_people(layer: Labels, people: np.ndarray) -> int:
    """Write the H x W people map into ``layer`` as one undoable step; return the pixels
    changed."""
    changed = np.asarray(layer.data) != people
    positions = np.nonzero(changed)
    if positions[0].size:
        layer.data_setitem(positions, people[changed])
    return int(positions[0].size)


def sizes_of(people: np.ndarray) -> list[tuple[int, int]]:
    """(person id, pixels) of each person present in an H x W people map, by id."""
    counts = np.bincount(np.asarray(people).ravel())
    return [(int(i), int(counts[i])) for i in np.nonzero(counts)[0] if i > 0]


def stroke_mask(shapes: Shapes, indices, shape: tuple[int, int]) -> np.ndarray:
    """The union (bool H x W) of the masks of the shapes ``indices``; outlines (paths, lines)
    thickened by one pixel, so that a thin diagonal stroke leaves no 8-connected gap."""
    masks = np.asarray(shapes.to_masks(mask_shape=shape))[sorted(indices)]
    mask = masks.any(axis=0) if len(masks) else np.zeros(shape, bool)
    outlines = [i for i in sorted(indices) if shapes.shape_type[i] in ("path", "line")]
    if outlines:
        mask |= ndi.binary_dilation(masks[[sorted(indices).index(i) for i in outlines]].any(0))
    return mask


class PeopleLegend(Container):
    """Each person's colour and size (pixels); clicking one makes it the people layer's paint
    label. Follows the people layer's changes (recounted :data:`LEGEND_DELAY_MS` after)."""

    def __init__(self, people_layer: Callable[[], Labels | None]):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self._people_layer = people_layer
        self.list = QListWidget()
        self.list.setToolTip("Each person's colour and size; click one to paint with it")
        self.list.setMinimumHeight(6 * 18)
        self.list.currentRowChanged.connect(self._paint_with)
        self.native.layout().addWidget(self.list)
        self.rows: list[tuple[int, int]] = []  # (person id, pixels) shown
        self.timer = QTimer(self.native, singleShot=True, interval=LEGEND_DELAY_MS)
        self.timer.timeout.connect(self.refresh)

    def refresh(self) -> None:
        """Recount the people layer now."""
        layer = self._people_layer()
        rows = [] if layer is None else sizes_of(layer.data)
        if rows == self.rows and self.list.count() == len(rows):
            return
        self.rows = rows
        self.list.blockSignals(True)
        self.list.clear()
        for person, pixels in rows:
            swatch = QPixmap(14, 14)
            swatch.fill(QColor.fromRgbF(*np.clip(layer.colormap.map(person), 0, 1)[:3]))
            self.list.addItem(QListWidgetItem(QIcon(swatch), f"person {person:2d}  {pixels} px"))
        self.list.blockSignals(False)

    def _paint_with(self, row: int) -> None:
        layer = self._people_layer()
        if layer is not None and 0 <= row < len(self.rows):
            layer.selected_label = self.rows[row][0]


class PeopleTools(Container):
    """Propose people, the edit keys (:data:`KEY_HELP`), the people legend and a status line,
    for the people layer of the widget's photo.

    ``parts_layer()`` and ``people_layer()`` give the widget's current layers (or None);
    :meth:`propose` makes the people layer when there is none, named ``<name> people``.
    The owner binds :meth:`key_actions` with ``shortcuts.bind_keys``.
    """

    def __init__(
        self,
        viewer,
        parts_layer: Callable[[], Labels | None],
        people_layer: Callable[[], Labels | None],
    ):
        self.viewer = viewer
        self._parts_layer = parts_layer
        self._people_layer = people_layer
        self._pending: tuple | None = None  # ("merge", person) or ("split", person, (row, col))
        self._writing = False  # the tools themselves are writing: no repair
        self.ahead = CheckBox(
            text="Propose people ahead",
            value=True,
            tooltip="Propose the people of each photo pre-labelled ahead, with its parts",
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.legend = PeopleLegend(people_layer)
        self.help_line = Label(value=" · ".join(f"{key}: {what}" for key, what in KEY_HELP.items()))
        super().__init__(
            widgets=[self.ahead, self.status, self.help_line, Label(value="People"), self.legend],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        me = weakref.ref(self)

        def layers_changed(*_):
            if (tools := me()) is not None:
                tools.watch()
                tools.legend.timer.start()

        self._layers_changed = layers_changed
        viewer.layers.events.inserted.connect(layers_changed)
        viewer.layers.events.removed.connect(layers_changed)

    def key_actions(self) -> dict[str, Callable[[], object]]:
        return {
            MERGE_KEY: self.merge,
            SPLIT_KEY: self.split,
            NEW_PERSON_KEY: self.new_person,
            REMOVE_KEY: self.remove,
        }

    # --- the layer and what watches it ---------------------------------------------------------

    def propose(self, name: str) -> Labels | None:
        """Propose the people of the parts shown into the people layer (made, as ``<name>
        people``, if there is none; else one undoable step); say how many were found."""
        parts = self._parts_layer()
        if parts is None:
            return self._say("No parts layer: pre-label or paint the parts first")
        proposal = engine.propose_people(np.asarray(parts.data))
        layer = self.show(proposal, name, activate=True)
        self._say(
            f"{int(proposal.max())} people proposed; {MERGE_KEY}/{SPLIT_KEY}/"
            f"{NEW_PERSON_KEY}/{REMOVE_KEY} edit them"
        )
        return layer

    def show(self, people: np.ndarray, name: str, activate: bool = False) -> Labels:
        """Show ``people`` (H x W uint8) in the people layer: a new layer ``<name> people``
        when there is none (or it has another shape), else written as one undoable step.
        The layer active before stays active (the parts, for Ctrl+Z) unless ``activate``."""
        active = self.viewer.layers.selection.active
        layer = self._people_layer()
        if layer is None or layer.data.shape != people.shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(people, name=name + PEOPLE_SUFFIX, opacity=0.4)
        else:
            with self._tools_write():
                write_people(layer, people)
        if activate:
            self.viewer.layers.selection.active = layer
        elif active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self.watch(layer)
        self.legend.refresh()
        return layer

    def show_matching(self, people: np.ndarray | None, name: str) -> Labels | None:
        """Show saved ``people`` (H x W uint8, or None: nothing shown) for the parts shown,
        repaired to them if they no longer fit (the parts were edited since); None when
        there are no parts of that shape."""
        parts = self._parts_layer()
        if people is None or parts is None or people.shape != parts.data.shape:
            return None
        labels = np.asarray(parts.data)
        if not engine.consistent(people, labels):
            people = engine.repair(people, labels)
        return self.show(people, name)

    def watch(self, people: Labels | None = None) -> None:
        """Connect the people layer (``people``, or the one shown) and the parts layer to the
        repair and the legend (once per layer; the connections hold no reference to the
        tools)."""
        me = weakref.ref(self)
        people = people if people is not None else self._people_layer()
        for role, layer in (("people", people), ("parts", self._parts_layer())):
            if layer is None or layer.metadata.get(WATCHED_KEY) == id(self):
                continue
            layer.metadata[WATCHED_KEY] = id(self)

            def on_paint(event, role=role):
                # napari emits a single paint step before writing it: look in the next turn
                def later():
                    if (tools := me()) is not None:
                        tools._painted(role, event)

                QTimer.singleShot(0, later)

            def on_data(*_):
                if (tools := me()) is not None:
                    tools.legend.timer.start()

            layer.events.paint.connect(on_paint)
            if role == "people":
                layer.events.set_data.connect(on_data)

    def _painted(self, role: str, event) -> None:
        """A paint step of the people or parts layer: repair the people if it broke them."""
        if role == "people":
            self.legend.timer.start()
        people, parts = self._people_layer(), self._parts_layer()
        if self._writing or people is None or parts is None:
            return
        if people.data.shape != parts.data.shape:
            return
        labels, current = np.asarray(parts.data), np.asarray(people.data)
        if engine.consistent(current, labels):
            return
        repaired = engine.repair(current, labels)
        changed = current != repaired
        positions = np.nonzero(changed)
        if role == "people":  # part of the stroke's own undo step (event.value is that step)
            atom = (positions, current[changed].copy(), repaired[changed])
            people.data[positions] = repaired[changed]
            event.value.append(atom)
            people.refresh()
        else:
            with self._tools_write():
                people.data_setitem(positions, repaired[changed])
        self.legend.timer.start()
        self._say(
            f"People repaired after the {role} edit: {positions[0].size} pixels (a person on "
            "background, or a part without a person); Ctrl+Z undoes it"
        )

    def _tools_write(self):
        tools = self

        class _Writing:
            def __enter__(self):
                tools._writing = True

            def __exit__(self, *_):
                tools._writing = False

        return _Writing()

    # --- the actions ---------------------------------------------------------------------------

    def merge(self) -> None:
        """Merge the people touched by the selected shapes, or (pressed twice) the person
        under the mouse at the second press into the one at the first."""
        layers = self._layers()
        if layers is None:
            return
        people, parts = layers
        data = np.asarray(people.data)
        shapes = self._selected_shapes()
        if shapes is not None:
            touched = _people_touched(data, shapes)
            if len(touched) < 2:
                return self._say("The selected shapes touch fewer than two people: nothing merged")
            merged = data
            for other in touched[:0:-1]:  # from the highest id: the lower ids do not move
                merged = engine.merge_people(merged, int(touched[0]), int(other))
            self._apply(people, merged, f"People {_names(touched)} merged into {touched[0]}")
            return
        person = self._person_under_mouse(people)
        if person is None:
            return
        if self._pending and self._pending[0] == "merge" and self._pending[1] != person:
            first = self._pending[1]
            self._pending = None
            if not (data == first).any():
                return self._say(f"Person {first} is gone: press {MERGE_KEY} over two people")
            merged = engine.merge_people(data, first, person)
            self._apply(people, merged, f"Person {person} merged into {first}")
            return
        self._pending = ("merge", person)
        self._say(f"Person {person} chosen: press {MERGE_KEY} over the person to merge into it")

    def split(self) -> None:
        """Split a person along the selected path or line shape, or (pressed twice over one
        person) from two seeds at the two mouse positions."""
        layers = self._layers()
        if layers is None:
            return
        people, parts = layers
        data, labels = np.asarray(people.data), np.asarray(parts.data)
        shapes = self._selected_shapes()
        if shapes is not None:
            stroke = stroke_mask(*shapes, data.shape)
            crossed = np.bincount(data[stroke & (data > 0)], minlength=1)
            if crossed.size < 2 or not crossed[1:].any():
                return self._say("The selected shape crosses no person: nothing split")
            person = int(np.argmax(crossed[1:]) + 1)
            split = engine.split_person(data, labels, person, stroke)
            return self._apply(
                people,
                split,
                f"Person {person} split in two",
                unchanged=f"Person {person} was not split: the stroke must cut it in two",
            )
        place = self._mouse_pixel(people)
        person = self._person_under_mouse(people)
        if person is None:
            return
        if self._pending and self._pending[0] == "split" and self._pending[1] == person:
            seeds = np.zeros(data.shape, np.uint8)
            for value, (row, col) in ((1, self._pending[2]), (2, place)):
                seeds[_disc(data.shape, row, col, SEED_RADIUS)] = value
            self._pending = None
            split = engine.split_person(data, labels, person, seeds)
            return self._apply(
                people,
                split,
                f"Person {person} split in two",
                unchanged=f"Person {person} was not split: press {SPLIT_KEY} at two places of it",
            )
        self._pending = ("split", person, place)
        self._say(
            f"First seed in person {person}: press {SPLIT_KEY} at another place of it "
            "(or select a path across it, then press)"
        )

    def new_person(self) -> None:
        """The part pixels inside the selected polygons, rectangles or ellipses become a new
        person."""
        layers = self._layers()
        if layers is None:
            return
        people, parts = layers
        shapes = self._selected_shapes()
        if shapes is None:
            return self._say(
                f"Draw and select a polygon or rectangle (Shapes layer) around the new "
                f"person, then press {NEW_PERSON_KEY}"
            )
        data = np.asarray(people.data)
        region = stroke_mask(*shapes, data.shape)
        made = engine.new_person(data, np.asarray(parts.data), region)
        self._apply(
            people,
            made,
            f"New person {int(made.max())}",
            unchanged="The selected shapes hold no part pixel: no person made",
        )

    def remove(self) -> None:
        """Erase the person under the mouse (or the people touched by the selected shapes)
        and its parts."""
        layers = self._layers()
        if layers is None:
            return
        people, parts = layers
        data = np.asarray(people.data)
        shapes = self._selected_shapes()
        if shapes is not None:
            gone = _people_touched(data, shapes)
        else:
            person = self._person_under_mouse(people)
            if person is None:
                return
            gone = np.array([person])
        if not len(gone):
            return self._say("The selected shapes touch no person: nothing removed")
        erased = np.isin(data, gone)
        after = data
        for person in gone[::-1]:
            after = engine.remove_person(after, int(person))
        with self._tools_write():
            parts.data_setitem(np.nonzero(erased & (np.asarray(parts.data) > 0)), 0)
        self._apply(
            people,
            after,
            f"Person {_names(gone)} removed with {int(erased.sum())} part pixels "
            "(Ctrl+Z on the people layer, then on the parts layer, brings it back)",
        )

    # --- helpers -------------------------------------------------------------------------------

    def _apply(self, people: Labels, after: np.ndarray, done: str, unchanged: str = "") -> None:
        with self._tools_write():
            changed = write_people(people, after)
        self._pending = None
        self.legend.refresh()
        self._say(done if changed or not unchanged else unchanged)

    def _layers(self) -> tuple[Labels, Labels] | None:
        people, parts = self._people_layer(), self._parts_layer()
        if people is None or parts is None:
            self._say("No people layer: press Propose people first")
            return None
        self.watch()
        return people, parts

    def _selected_shapes(self) -> tuple[Shapes, list[int]] | None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Shapes) and active.selected_data:
            return active, sorted(active.selected_data)
        return None

    def _mouse_pixel(self, layer: Labels) -> tuple[int, int] | None:
        row, col = (int(v) for v in np.round(layer.world_to_data(self.viewer.cursor.position))[-2:])
        height, width = layer.data.shape[-2:]
        return (row, col) if 0 <= row < height and 0 <= col < width else None

    def _person_under_mouse(self, layer: Labels) -> int | None:
        place = self._mouse_pixel(layer)
        person = 0 if place is None else int(layer.data[place])
        if not person:
            self._say("Put the mouse over a person (or select shapes), then press the key")
            return None
        return person

    def _say(self, line: str) -> None:
        self.status.value = line


def _disc(shape: tuple[int, int], row: int, col: int, radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def _people_touched(people: np.ndarray, shapes) -> np.ndarray:
    """The ids (sorted) of the people of ``people`` (H x W uint8) that the selected ``shapes``
    (:meth:`PeopleTools._selected_shapes`) touch."""
    return np.unique(people[stroke_mask(*shapes, people.shape) & (people > 0)])


def _names(ids) -> str:
    return ", ".join(str(int(i)) for i in ids)
