"""Opening and saving CIHP samples through napari's own File menu paths."""

import subprocess
import sys

import npe2
import numpy as np
import PIL.Image
import pytest
from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
from napari.layers import Image, Labels

from napari_deeplab import cihp
from napari_deeplab._napari.io import get_reader
from napari_deeplab.cihp import CLASS_NAMES, PALETTE


def test_open_a_split_folder_and_a_mask(make_napari_viewer, cihp_samples):
    viewer = make_napari_viewer()
    viewer.open(str(cihp_samples), plugin="napari-deeplab")
    photo, parts = viewer.layers
    assert photo.name == "0002190" and parts.name == "0002190 parts"
    np.testing.assert_array_equal(parts.data, np.asarray(PIL.Image.open(
        cihp_samples / "Category_ids" / "0002190.png")))
    np.testing.assert_allclose(parts.colormap.map(13)[:3], PALETTE[13] / 255, atol=1e-6)
    assert list(parts.features["class"]) == list(CLASS_NAMES)

    viewer.layers.clear()
    viewer.open(str(cihp_samples / "Category_ids" / "0026375.png"), plugin="napari-deeplab")
    assert [layer.name for layer in viewer.layers] == ["0026375", "0026375 parts"]
    assert viewer.layers[0].data.shape == (498, 500, 3)


def test_save_selected_layers_writes_a_sample_and_reads_back(make_napari_viewer, cihp_samples, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(cihp_samples / "Category_ids" / "0005008.png"), plugin="napari-deeplab")
    photo, parts = viewer.layers
    parts.data_setitem((np.array([10]), np.array([10])), 13)  # a correction
    people = viewer.add_labels((parts.data > 0).astype(np.uint8), name="0005008 people")
    viewer.layers.selection = {photo, parts, people}
    written = viewer.layers.save(str(tmp_path / "dataset"), selected=True, plugin="napari-deeplab")
    assert written
    sample = cihp.read_sample(tmp_path / "dataset", "0005008")
    np.testing.assert_array_equal(sample.image, photo.data)
    np.testing.assert_array_equal(sample.category_ids, parts.data)
    np.testing.assert_array_equal(sample.human_ids, people.data)
    assert cihp.read_id_list(tmp_path / "dataset", "Training") == ["0005008"]

    viewer.layers.clear()
    viewer.open(str(tmp_path / "dataset"), plugin="napari-deeplab")
    assert [layer.name for layer in viewer.layers] == ["0005008", "0005008 parts", "0005008 people"]
    assert viewer.layers["0005008 parts"].data[10, 10] == 13


# --- Which reader napari uses: the user's File > Open (or drag and drop) path ---------------

BUILTINS = "napari builtins"  # display names, as the Choose reader dialog lists them
OURS = "napari-deeplab"


def compatible_readers(path) -> set[str]:
    return {r.plugin_name for r in npe2.PluginManager.instance().iter_compatible_readers([str(path)])}


@pytest.fixture
def reader_dialog(monkeypatch):
    """napari's Choose reader dialog, answered as a user would: ``choice`` is the reader to pick
    (None: no dialog is expected); ``offered`` records the readers of each dialog shown."""

    class Dialog:
        choice: str | None = None
        offered: list[list[str]] = []

    def exec_(dialog):
        buttons = dialog.reader_btn_group.buttons()
        Dialog.offered.append([button.text() for button in buttons])
        assert Dialog.choice is not None, f"napari asked which reader: {Dialog.offered[-1]}"
        next(b for b in buttons if b.text() == Dialog.choice).setChecked(True)
        return 1  # OK

    monkeypatch.setattr(QtReaderDialog, "exec_", exec_)
    return Dialog


def file_open(viewer, path):
    """What File > Open and dropping a file on the canvas do."""
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)


def test_a_photo_opens_with_napari_without_asking(make_napari_viewer, cihp_samples, reader_dialog):
    photo = cihp_samples / "Images" / "0005008.jpg"
    assert compatible_readers(photo) == {"napari"}
    assert get_reader(str(photo)) is None

    viewer = make_napari_viewer()
    file_open(viewer, photo)
    viewer.open(str(photo))  # no plugin= needed: napari has no choice to ask about
    assert reader_dialog.offered == []
    assert [layer.name for layer in viewer.layers] == ["0005008", "0005008 [1]"]
    assert all(isinstance(layer, Image) for layer in viewer.layers)
    np.testing.assert_array_equal(viewer.layers[0].data, np.asarray(PIL.Image.open(photo)))


def test_file_open_of_a_split_folder_or_a_mask_offers_and_reads_cihp(
        make_napari_viewer, cihp_samples, reader_dialog):
    viewer = make_napari_viewer()
    reader_dialog.choice = OURS
    file_open(viewer, cihp_samples)
    assert OURS in reader_dialog.offered[-1]
    assert [layer.name for layer in viewer.layers] == ["0002190", "0002190 parts"]
    assert isinstance(viewer.layers["0002190 parts"], Labels)

    viewer.layers.clear()
    file_open(viewer, cihp_samples / "Category_ids" / "0026375.png")
    assert sorted(reader_dialog.offered[-1]) == [BUILTINS, OURS]
    assert [layer.name for layer in viewer.layers] == ["0026375", "0026375 parts"]
    np.testing.assert_array_equal(viewer.layers["0026375 parts"].data, np.asarray(
        PIL.Image.open(cihp_samples / "Category_ids" / "0026375.png")))


def test_any_other_png_or_folder_is_left_to_napari(make_napari_viewer, cihp_samples, tmp_path,
                                                   reader_dialog):
    elsewhere = tmp_path / "photo.png"
    PIL.Image.open(cihp_samples / "Images" / "0005008.jpg").save(elsewhere)
    flipped_mask = cihp_samples / "Category_ids_flipped" / "0005008.png"  # not in Category_ids
    orphan = tmp_path / "orphan" / "Category_ids" / "0000001.png"  # no Images/ photo
    (tmp_path / "orphan" / "Images").mkdir(parents=True)
    orphan.parent.mkdir()
    PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(orphan)
    for path in (elsewhere, flipped_mask, orphan, tmp_path, tmp_path / "orphan",
                 cihp_samples / "Images"):
        assert get_reader(str(path)) is None, path
    assert get_reader([str(elsewhere), str(flipped_mask)]) is None  # a stack

    # Without a choice (napari's own fallback order), our reader declines and napari reads it.
    layer_data = npe2.read([str(elsewhere)], stack=False)
    np.testing.assert_array_equal(layer_data[0][0], np.asarray(PIL.Image.open(elsewhere)))

    viewer = make_napari_viewer()
    reader_dialog.choice = BUILTINS  # a .png is offered to both (npe2 sees the name only)
    file_open(viewer, elsewhere)
    (layer,) = viewer.layers
    assert isinstance(layer, Image) and layer.name == "photo"
    np.testing.assert_array_equal(layer.data, np.asarray(PIL.Image.open(elsewhere)))


def test_the_installed_manifest_validates_and_has_categories():
    manifest = npe2.PluginManager.instance().get_manifest("napari-deeplab")
    npe2.PluginManifest.model_validate(manifest.model_dump())  # also what `npe2 validate` does
    assert set(manifest.categories) >= {"Segmentation", "Annotation"}
    (reader,) = manifest.contributions.readers
    assert reader.filename_patterns == ["*.png"] and reader.accepts_directories
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-deeplab"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
