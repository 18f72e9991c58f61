"""Lists of what was used recently (models, dataset folders), remembered across sessions, and
the editable chooser that offers one of them.

Each list is a JSON file in the user config folder (``$NAPARI_DEEPLAB_CONFIG`` if set); when a
list changes, every chooser of it in every widget lists the new entry at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, Container, PushButton
from psygnal import Signal
from qtpy.QtWidgets import QComboBox

from .. import files

MAX_RECENT = 8


class RecentList:
    """A most-recent-first list of strings kept in ``<config>/<file_name>``; ``always``
    entries are listed after the remembered ones."""

    changed = Signal()

    def __init__(self, file_name: str, always: tuple[str, ...] = ()):
        self.file_name = file_name
        self.always = always

    def _file(self) -> Path:
        folder = os.environ.get("NAPARI_DEEPLAB_CONFIG")
        if not folder:
            import platformdirs

            folder = platformdirs.user_config_dir("napari-deeplab")
        return Path(folder) / self.file_name

    def items(self) -> list[str]:
        """The entries, most recent first (a damaged or missing file lists only ``always``)."""
        try:
            stored = json.loads(self._file().read_text())
        except (OSError, ValueError):
            stored = []
        remembered = (
            [s for s in stored if isinstance(s, str) and s] if isinstance(stored, list) else []
        )
        return list(dict.fromkeys(remembered + list(self.always)))

    def remember(self, entry: str) -> None:
        """Put ``entry`` first (nothing to do if it is first already; an unwritable config
        folder is ignored: the list is a convenience)."""
        entries = self.items()
        if entries[:1] == [entry]:
            return
        entries = [entry] + [e for e in entries if e != entry]
        text = json.dumps(entries[:MAX_RECENT], indent=1)
        try:
            files.write_file_atomically(self._file(), lambda tmp: tmp.write_text(text))
        except OSError:
            return
        self.changed.emit()


class RecentChooser(Container):
    """An editable list of a :class:`RecentList` (type anything, or pick) with browse buttons.

    ``browse``: {button text: (tooltip, function(parent QWidget, current text) -> chosen text
    or "")}. :attr:`text` is what is typed or chosen.
    """

    def __init__(
        self,
        recent: RecentList,
        browse: dict[str, tuple[str, Callable]],
        *,
        label: str,
        tooltip: str,
        placeholder: str = "",
    ):
        self.combo = ComboBox(choices=lambda _: recent.items())
        self.combo.native.setEditable(True)
        self.combo.native.lineEdit().setPlaceholderText(placeholder)
        # a long path must not widen the dock over the canvas: elide it, show it in the tooltip
        self.combo.native.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.native.setMinimumContentsLength(12)
        self._tooltip = tooltip
        self.combo.native.currentTextChanged.connect(self._show_full_text)
        buttons = []
        for text, (button_tooltip, choose) in browse.items():
            button = PushButton(text=text, tooltip=button_tooltip)
            button.changed.connect(lambda *_, choose=choose: self._browse(choose))
            buttons.append(button)
        super().__init__(
            widgets=[self.combo, *buttons], layout="horizontal", labels=False, label=label
        )
        self.margins = (0, 0, 0, 0)
        self._show_full_text(self.text)
        refresh = self.reset_choices
        recent.changed.connect(refresh)
        self.native.destroyed.connect(lambda *_: recent.changed.disconnect(refresh))

    @property
    def text(self) -> str:
        return self.combo.native.currentText().strip()

    @text.setter
    def text(self, value: str) -> None:
        self.combo.native.setCurrentText(str(value))

    def reset_choices(self, *_) -> None:
        """List the recent entries again, keeping what is typed or chosen."""
        text = self.combo.native.currentText()
        super().reset_choices()
        self.combo.native.setCurrentText(text)

    def _show_full_text(self, text: str) -> None:
        self.combo.native.setToolTip(f"{text}\n\n{self._tooltip}" if text else self._tooltip)

    def _browse(self, choose: Callable) -> None:
        chosen = choose(self.native, self.text)
        if chosen:
            self.text = chosen
