"""Opening and saving CIHP samples through napari's own File menu paths."""

import subprocess
import sys

import npe2
import numpy as np
import PIL.Image
import pytest
from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
from napari.layers import Image, Labels
from napari.plugins.utils import get_preferred_reader

from napari_deeplab import cihp
from napari_deeplab._napari import reader_preferences
from napari_deeplab._napari.io import SaveRefused, get_reader, napari_reader
from napari_deeplab.cihp import CLASS_NAMES, PALETTE

from .gui import drop_files


def test_open_a_split_folder_and_a_mask(make_napari_viewer, cihp_samples):
    viewer = make_napari_viewer()
    viewer.open(str(cihp_samples), plugin="napari-deeplab")
    photo, parts, people, instances = viewer.layers
    assert photo.name == "0002190" and parts.name == "0002190 parts"
    assert people.name == "0002190 people" and instances.name == "0002190 instances"
    for layer, folder in ((people, "Human_ids"), (instances, "Instance_ids")):
        assert isinstance(layer, Labels)
        stored = np.asarray(PIL.Image.open(cihp_samples / folder / "0002190.png"))
        np.testing.assert_array_equal(layer.data, stored)
    np.testing.assert_array_equal(
        parts.data, np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / "0002190.png"))
    )
    np.testing.assert_allclose(parts.colormap.map(13)[:3], PALETTE[13] / 255, atol=1e-6)
    assert list(parts.features["class"]) == list(CLASS_NAMES)

    viewer.layers.clear()
    viewer.open(str(cihp_samples / "Category_ids" / "0026375.png"), plugin="napari-deeplab")
    assert [layer.name for layer in viewer.layers] == [
        "0026375",
        "0026375 parts",
        "0026375 people",
        "0026375 instances",
    ]
    assert viewer.layers[0].data.shape == (498, 500, 3)


def test_save_selected_layers_writes_a_sample_and_reads_back(
    make_napari_viewer, cihp_samples, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open(str(cihp_samples / "Category_ids" / "0005008.png"), plugin="napari-deeplab")
    for name in ("0005008 people", "0005008 instances"):  # people made anew below
        viewer.layers.remove(name)
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
    assert [layer.name for layer in viewer.layers] == [
        "0005008",
        "0005008 parts",
        "0005008 people",
        "0005008 instances",
    ]
    assert viewer.layers["0005008 parts"].data[10, 10] == 13
    np.testing.assert_array_equal(  # one person: the instances are the parts
        viewer.layers["0005008 instances"].data, viewer.layers["0005008 parts"].data
    )


# --- Which reader napari uses: the user's File > Open (or drag and drop) path ---------------

BUILTINS = "napari builtins"  # display names, as the Choose reader dialog lists them
OURS = "napari-deeplab"


def compatible_readers(path) -> set[str]:
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what making a viewer does: npe2 discovers the installed plugins
    return {
        r.plugin_name for r in npe2.PluginManager.instance().iter_compatible_readers([str(path)])
    }


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
    drop_files(viewer, [path])


def test_a_photo_opens_with_napari_without_asking(make_napari_viewer, cihp_samples, reader_dialog):
    photo = cihp_samples / "Images" / "0005008.jpg"
    assert compatible_readers(photo) == {"napari"}
    assert get_reader(str(photo)) is napari_reader(str(photo))  # handed back, were it asked

    viewer = make_napari_viewer()
    file_open(viewer, photo)
    viewer.open(str(photo))  # no plugin= needed: napari has no choice to ask about
    assert reader_dialog.offered == []
    assert [layer.name for layer in viewer.layers] == ["0005008", "0005008 [1]"]
    assert all(isinstance(layer, Image) for layer in viewer.layers)
    np.testing.assert_array_equal(viewer.layers[0].data, np.asarray(PIL.Image.open(photo)))


def napari_decides(viewer, path):
    """``viewer.open`` choosing the reader as File > Open does (its default, plugin="napari",
    is napari's builtins whatever the path)."""
    viewer.open(str(path), plugin=None)


@pytest.fixture
def written_dataset(tmp_path, cihp_samples):
    """A dataset written by cihp.write_sample: two samples in Training, one with people."""
    root = tmp_path / "written"
    for sample_id in ("0005008", "0026375"):
        parts = np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        cihp.write_sample(
            root,
            sample_id,
            parts,
            image_path=cihp_samples / "Images" / f"{sample_id}.jpg",
            human_ids=(parts > 0).astype(np.uint8) if sample_id == "0005008" else None,
        )
    return root


def test_our_masks_and_dataset_folders_open_without_asking_once_the_plugin_ran(
    make_napari_viewer, written_dataset, cihp_samples, tmp_path, reader_dialog
):
    mask = written_dataset / "Training" / "Category_ids" / "0026375.png"
    plain = tmp_path / "holiday.png"
    PIL.Image.open(cihp_samples / "Images" / "0002190.jpg").save(plain)
    viewer = make_napari_viewer()
    assert compatible_readers(mask) == compatible_readers(plain) == {"napari", OURS}

    # a fresh napari (no preference yet): the first mask asks, once
    reader_dialog.choice = OURS
    file_open(viewer, mask)
    assert len(reader_dialog.offered) == 1
    assert [layer.name for layer in viewer.layers] == ["0026375", "0026375 parts"]

    # from now on napari never asks (choice None: a dialog fails the test)
    reader_dialog.choice = None
    assert get_preferred_reader(mask) == OURS
    assert get_preferred_reader(written_dataset / "Training") == OURS
    assert get_preferred_reader(written_dataset) == OURS  # the root our reader opened
    assert get_preferred_reader(plain) == "napari"
    for path, names in (
        (
            written_dataset / "Training" / "Category_ids" / "0005008.png",
            ["0005008", "0005008 parts", "0005008 people", "0005008 instances"],
        ),
        (
            written_dataset / "Training",
            ["0005008", "0005008 parts", "0005008 people", "0005008 instances"],
        ),
        (written_dataset, ["0005008", "0005008 parts", "0005008 people", "0005008 instances"]),
        (
            cihp_samples / "Category_ids" / "0002190.png",
            ["0002190", "0002190 parts", "0002190 people", "0002190 instances"],
        ),
    ):
        for open_path in (file_open, napari_decides):
            viewer.layers.clear()
            open_path(viewer, path)
            assert [layer.name for layer in viewer.layers] == names, path
            assert isinstance(viewer.layers[names[1]], Labels)
    np.testing.assert_array_equal(
        viewer.layers["0002190 parts"].data,
        np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / "0002190.png")),
    )

    # a plain PNG opens with napari's own reader, as it would without this plugin
    viewer.layers.clear()
    file_open(viewer, plain)
    napari_decides(viewer, plain)
    assert [layer.name for layer in viewer.layers] == ["holiday", "holiday [1]"]
    assert all(isinstance(layer, Image) for layer in viewer.layers)
    np.testing.assert_array_equal(viewer.layers[0].data, np.asarray(PIL.Image.open(plain)))
    assert reader_dialog.offered == [reader_dialog.offered[0]]


@pytest.mark.parametrize("users_png_reader", ["napari", OURS])
def test_a_users_png_preference_is_kept_and_both_kinds_still_open(
    make_napari_viewer, written_dataset, tmp_path, cihp_samples, reader_dialog, users_png_reader
):
    """The user ticked "remember for .png" in the dialog, with either reader."""
    from napari.settings import get_settings

    plain = tmp_path / "holiday.png"
    PIL.Image.open(cihp_samples / "Images" / "0002190.jpg").save(plain)
    viewer = make_napari_viewer()
    get_settings().plugins.extension2reader = {"*.png": users_png_reader}
    reader_preferences.register()
    assert get_settings().plugins.extension2reader["*.png"] == users_png_reader  # kept

    file_open(viewer, written_dataset / "Training" / "Category_ids" / "0026375.png")
    assert [layer.name for layer in viewer.layers] == ["0026375", "0026375 parts"]
    viewer.layers.clear()
    napari_decides(viewer, plain)  # through our reader, where the user chose it for .png
    (layer,) = viewer.layers
    assert isinstance(layer, Image) and layer.name == "holiday"
    np.testing.assert_array_equal(layer.data, np.asarray(PIL.Image.open(plain)))
    assert reader_dialog.offered == []


def test_any_other_png_or_folder_is_handed_to_napari(cihp_samples, tmp_path):
    elsewhere = tmp_path / "photo.png"
    PIL.Image.open(cihp_samples / "Images" / "0005008.jpg").save(elsewhere)
    flipped_mask = cihp_samples / "Category_ids_flipped" / "0005008.png"  # not in Category_ids
    orphan = tmp_path / "orphan" / "Category_ids" / "0000001.png"  # no Images/ photo
    (tmp_path / "orphan" / "Images").mkdir(parents=True)
    orphan.parent.mkdir()
    PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(orphan)
    for path in (
        elsewhere,
        flipped_mask,
        orphan,
        tmp_path,
        tmp_path / "orphan",
        cihp_samples / "Images",
    ):
        assert get_reader(str(path)) is napari_reader(str(path)), path
    stack = [str(elsewhere), str(flipped_mask)]
    assert get_reader(stack) is napari_reader(stack)

    # Without a choice (napari's own fallback order), either reader reads it as napari does.
    layer_data = npe2.read([str(elsewhere)], stack=False)
    np.testing.assert_array_equal(layer_data[0][0], np.asarray(PIL.Image.open(elsewhere)))
    (orphan_layer,) = npe2.read([str(orphan)], stack=False, plugin_name=OURS)
    assert orphan_layer[0].shape == (4, 4)
    assert (orphan_layer[2:] or ("image",))[0] == "image"  # napari's tuple: no type = image


def test_npe2_matches_manifest_patterns_on_the_file_name_only(cihp_samples):
    """Why the narrow patterns live in napari's preferences and not in napari.yaml: npe2 drops
    the folders before matching, so a pattern naming ``Category_ids`` would never match."""
    mask = str(cihp_samples / "Category_ids" / "0005008.png")
    for pattern, matches in (("*/Category_ids/*.png", False), ("*.png", True)):
        manager = npe2.PluginManager()
        manager.register(
            npe2.PluginManifest(
                name="pattern-probe",
                contributions={
                    "commands": [
                        {"id": "pattern-probe.read", "title": "r", "python_name": "probe.io:read"}
                    ],
                    "readers": [{"command": "pattern-probe.read", "filename_patterns": [pattern]}],
                },
            )
        )
        assert bool(list(manager.iter_compatible_readers([mask]))) is matches, pattern


def test_the_installed_manifest_validates_and_has_categories():
    manifest = npe2.PluginManager.instance().get_manifest("napari-deeplab")
    npe2.PluginManifest.model_validate(manifest.model_dump())  # also what `npe2 validate` does
    assert set(manifest.categories) >= {"Segmentation", "Annotation"}
    (reader,) = manifest.contributions.readers
    assert reader.filename_patterns == ["*.png"] and reader.accepts_directories
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-deeplab"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Saving into a dataset that exists ------------------------------------------------------


@pytest.fixture
def dataset(tmp_path, cihp_samples):
    """A CIHP dataset with two real samples in Training (photos copied byte for byte)."""
    root = tmp_path / "dataset"
    for sample_id in ("0005008", "0026375"):
        cihp.write_sample(
            root,
            sample_id,
            np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png")),
            image_path=cihp_samples / "Images" / f"{sample_id}.jpg",
        )
    return root


def test_save_into_an_existing_dataset_keeps_the_photo_bytes_and_the_other_samples(
    make_napari_viewer, dataset
):
    viewer = make_napari_viewer()
    viewer.open(str(dataset / "Training" / "Category_ids" / "0005008.png"), plugin="napari-deeplab")
    photo, parts = viewer.layers
    assert parts.metadata["napari_deeplab"]["sample_id"] == "0005008"
    parts.data_setitem((np.array([10]), np.array([10])), 13)
    viewer.layers.selection = {photo, parts}
    before = (dataset / "Training" / "Images" / "0005008.jpg").read_bytes()
    assert viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    assert cihp.read_sample(dataset, "0005008").category_ids[10, 10] == 13
    assert (dataset / "Training" / "Images" / "0005008.jpg").read_bytes() == before  # copied
    assert sorted(cihp.read_id_list(dataset, "Training")) == ["0005008", "0026375"]
    assert not (dataset / "dataset").exists()

    # what the save dialog gives after going into the dataset (or its split) folder: the name
    # it offers there (the active layer's), which does not exist
    parts.data_setitem((np.array([11]), np.array([11])), 14)
    for target in (dataset / "0005008 parts", dataset / "Training", dataset / "Training" / "x"):
        assert viewer.layers.save(str(target), selected=True, plugin="napari-deeplab")
        assert cihp.read_sample(dataset, "0005008").category_ids[11, 11] == 14
    assert sorted(cihp.read_id_list(dataset, "Training")) == ["0005008", "0026375"]
    assert sorted(p.name for p in dataset.iterdir() if not p.name.startswith(".")) == ["Training"]


def test_the_parts_layer_alone_is_saved_with_its_photo_found_by_name(
    make_napari_viewer, dataset, cihp_samples
):
    viewer = make_napari_viewer()
    photo = viewer.add_image(
        np.asarray(PIL.Image.open(cihp_samples / "Images" / "0002190.jpg")), name="0002190"
    )
    parts = viewer.add_labels(
        np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / "0002190.png")),
        name="0002190 parts",
    )
    viewer.layers.selection = {parts}
    assert viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    sample = cihp.read_sample(dataset, "0002190")
    np.testing.assert_array_equal(sample.image, photo.data)
    np.testing.assert_array_equal(sample.category_ids, parts.data)

    # the photo layer gone: the one already in the dataset is kept
    viewer.layers.remove(photo)
    before = (dataset / "Training" / "Images" / "0005008.jpg").read_bytes()
    other = viewer.add_labels(
        cihp.read_sample(dataset, "0005008").category_ids, name="0005008 parts"
    )
    other.data_setitem((np.array([5]), np.array([5])), 3)
    viewer.layers.selection = {other}
    assert viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    assert cihp.read_sample(dataset, "0005008").category_ids[5, 5] == 3
    assert (dataset / "Training" / "Images" / "0005008.jpg").read_bytes() == before


def test_a_napari_copy_named_photo_1_is_refused_in_one_line(
    make_napari_viewer, dataset, cihp_samples
):
    viewer = make_napari_viewer()
    viewer.open(str(dataset / "Training" / "Category_ids" / "0005008.png"), plugin="napari-deeplab")
    copy = viewer.add_image(viewer.layers["0005008"].data)
    copy.name = "0005008"  # napari makes it "0005008 [1]"
    assert copy.name == "0005008 [1]"
    viewer.layers.selection = {copy, viewer.layers["0005008 parts"]}
    with pytest.raises(SaveRefused, match=r"^'0005008 \[1\]' is napari's name for a copy") as error:
        viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    assert "\n" not in str(error.value)
    assert sorted(cihp.read_id_list(dataset, "Training")) == ["0005008", "0026375"]


@pytest.mark.skipif(
    not hasattr(cihp, "sample_version"), reason="cihp.sample_version (H1) not merged yet"
)
def test_save_refuses_a_sample_changed_by_someone_else_since_it_was_opened(
    make_napari_viewer, dataset
):
    viewer = make_napari_viewer()
    viewer.open(str(dataset / "Training" / "Category_ids" / "0005008.png"), plugin="napari-deeplab")
    photo, parts = viewer.layers
    assert parts.metadata["napari_deeplab"]["version"] is not None
    changed = cihp.read_sample(dataset, "0005008").category_ids.copy()
    changed[0, 0] = 7
    cihp.write_sample(dataset, "0005008", changed, image=photo.data, overwrite=True)  # someone else
    parts.data_setitem((np.array([10]), np.array([10])), 13)
    viewer.layers.selection = {photo, parts}
    with pytest.raises(SaveRefused) as refused:
        viewer.layers.save(str(dataset), selected=True, plugin="napari-deeplab")
    assert isinstance(refused.value.__cause__, cihp.SampleChangedError)
    assert "since you opened it" in str(refused.value)  # who and when, from H1's record
    assert "\n" not in str(refused.value)
    assert cihp.read_sample(dataset, "0005008").category_ids[0, 0] == 7


RECORD_FILES = (
    "Images/{}.jpg",
    "Category_ids/{}.png",
    "Categories/{}.png",
    "Human_ids/{}.png",
    "Humans/{}.png",
    "Instance_ids/{}.png",
    "Instance_ids/{}.txt",
    "Instances/{}.png",
)


def _open_all_and_save(viewer, source, target) -> None:
    """File > Open ``source`` with napari-deeplab, select every layer (the instances too),
    File > Save Selected Layers into ``target``."""
    viewer.layers.clear()
    viewer.open(str(source), plugin="napari-deeplab")
    viewer.layers.selection = set(viewer.layers)
    assert viewer.layers.save(str(target), selected=True, plugin="napari-deeplab")


@pytest.mark.parametrize("sample_id", ["0005008"])
def test_the_whole_record_of_a_real_sample_round_trips_through_napari_byte_for_byte(
    make_napari_viewer, cihp_samples, tmp_path, sample_id
):
    viewer = make_napari_viewer()
    mask = cihp_samples / "Category_ids" / f"{sample_id}.png"
    _open_all_and_save(viewer, mask, tmp_path / "first")
    assert [layer.name for layer in viewer.layers][2:] == [
        f"{sample_id} people",
        f"{sample_id} instances",
    ]
    first = tmp_path / "first" / "Training"
    for name in RECORD_FILES:  # the people, instances and photo exactly as in tests/data
        if not name.startswith("Categor"):
            path = name.format(sample_id)
            assert (first / path).read_bytes() == (cihp_samples / path).read_bytes(), path
    _open_all_and_save(viewer, first / "Category_ids" / f"{sample_id}.png", tmp_path / "second")
    second = tmp_path / "second" / "Training"
    for name in RECORD_FILES:
        path = name.format(sample_id)
        assert (first / path).read_bytes() == (second / path).read_bytes(), path

    # an edit of the people in napari is saved with instances derived from it
    people = viewer.layers[f"{sample_id} people"]
    parts = viewer.layers[f"{sample_id} parts"].data
    merged = people.data.copy()
    merged[merged == 2] = 1
    people.visible = True  # opened hidden; napari paints on the layer shown
    people.data_setitem(np.nonzero(people.data == 2), 1)
    viewer.layers.selection = set(viewer.layers)
    assert viewer.layers.save(str(tmp_path / "second"), selected=True, plugin="napari-deeplab")
    sample = cihp.read_sample(tmp_path / "second", sample_id)
    np.testing.assert_array_equal(sample.human_ids, merged)
    np.testing.assert_array_equal(sample.instance_ids, cihp.part_instances(parts, merged)[0])
