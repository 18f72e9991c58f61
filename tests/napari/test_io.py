"""Opening and saving CIHP samples through napari's own File menu paths."""

import numpy as np
from PIL import Image

from napari_deeplab import cihp
from napari_deeplab.cihp import CLASS_NAMES, PALETTE


def test_open_a_split_folder_and_a_mask(make_napari_viewer, cihp_samples):
    viewer = make_napari_viewer()
    viewer.open(str(cihp_samples), plugin="napari-deeplab")
    photo, parts = viewer.layers
    assert photo.name == "0002190" and parts.name == "0002190 parts"
    np.testing.assert_array_equal(parts.data, np.asarray(Image.open(
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
