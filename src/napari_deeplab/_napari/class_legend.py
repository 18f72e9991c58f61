"""The CIHP class legend of a parts layer: pick the class to paint with, hide classes.

Used by every widget that shows a parts layer (Human parts, Review queue). It acts on the
layer that ``parts_layer()`` returns at the time of the click, so it follows the widget's
current photo.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..cihp import CLASS_NAMES, PALETTE
from .parts_layer import keep_classes, parts_colormap

NEXT_CLASS_KEY = "Shift-Down"
PREVIOUS_CLASS_KEY = "Shift-Up"
VISIBLE_ROWS = 10


class ClassLegend(Container):
    """A list of the 20 classes in their colours; clicking one makes it the paint label of
    the parts layer, unticking one hides it."""

    def __init__(self, parts_layer: Callable[[], Labels | None]):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self._parts_layer = parts_layer
        self.hidden: set[int] = set()
        self.list = QListWidget()
        self.list.setToolTip(
            f"Click a class to paint with it ({PREVIOUS_CLASS_KEY} / "
            f"{NEXT_CLASS_KEY} step through them); untick to hide it"
        )
        for value, name in enumerate(CLASS_NAMES):
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(*PALETTE[value]))
            item = QListWidgetItem(QIcon(swatch), f"{value:2d}  {name}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.list.addItem(item)
        # stays readable when other widgets share the dock area
        self.list.setMinimumHeight(VISIBLE_ROWS * self.list.sizeHintForRow(0) + 4)
        self.list.currentRowChanged.connect(self._paint_with)
        self.list.itemChanged.connect(self._toggle_class)
        self.native.layout().addWidget(self.list)

    @property
    def paint_class(self) -> int:
        """The class chosen to paint with (the row selected; hair when none is)."""
        return self.list.currentRow() if self.list.currentRow() > 0 else 2

    def select(self, value: int) -> None:
        """Make class ``value`` the paint label (of the parts layer, if there is one)."""
        if self.list.currentRow() != value:
            self.list.setCurrentRow(value)  # calls _paint_with
        else:
            self._paint_with(value)

    def step(self, step: int) -> None:
        """Select the next (``step`` = 1) or previous (-1) class."""
        self.select((max(self.list.currentRow(), 0) + step) % len(CLASS_NAMES))

    def next_class(self) -> None:
        self.step(1)

    def previous_class(self) -> None:
        self.step(-1)

    def apply_to(self, layer: Labels) -> None:
        """Give a (new) parts layer the legend's colours and paint class."""
        layer.colormap = parts_colormap(self.hidden)
        layer.selected_label = self.paint_class
        keep_classes(layer)

    def _paint_with(self, value: int) -> None:
        parts = self._parts_layer()
        if value >= 0 and parts is not None:
            keep_classes(parts)
            parts.selected_label = value

    def _toggle_class(self, item: QListWidgetItem) -> None:
        value = self.list.row(item)
        if item.checkState() == Qt.CheckState.Checked:
            self.hidden.discard(value)
        else:
            self.hidden.add(value)
        parts = self._parts_layer()
        if parts is not None:
            parts.colormap = parts_colormap(self.hidden)
