"""COCO export and import, judged by pycocotools (COCO's own API), not by our encoder."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_api  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from napari_deeplab import cihp  # noqa: E402
from napari_deeplab.interchange import coco  # noqa: E402

IDS = ("0002190", "0005008", "0026375")


@pytest.fixture
def dataset(tmp_path, cihp_samples):
    """The three real CIHP samples; 0005008 with two people (left and right halves)."""
    root = tmp_path / "cihp"
    for sample_id in IDS:
        parts = np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        people = None
        if sample_id == "0005008":
            people = np.zeros_like(parts)
            half = parts.shape[1] // 2
            people[:, :half][parts[:, :half] > 0] = 1
            people[:, half:][parts[:, half:] > 0] = 2
        cihp.write_sample(
            root,
            sample_id,
            parts,
            image_path=cihp_samples / "Images" / f"{sample_id}.jpg",
            human_ids=people,
        )
    return root


def test_pycocotools_reads_our_export_pixel_for_pixel(dataset, tmp_path):
    path = coco.export_coco(dataset, tmp_path / "coco")
    api = COCO(str(path))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(cihp.CLASS_NAMES[1:])
    for image in api.loadImgs(api.getImgIds()):
        sample = cihp.read_sample(dataset, image["file_name"].split(".")[0])
        assert (image["height"], image["width"]) == sample.category_ids.shape
        assert (tmp_path / "coco" / "images" / image["file_name"]).is_file()
        rebuilt = np.zeros_like(sample.category_ids)
        people = np.zeros_like(sample.category_ids)
        for annotation in api.loadAnns(api.getAnnIds(imgIds=image["id"])):
            mask = api.annToMask(annotation).astype(bool)
            assert not rebuilt[mask].any()  # part instances do not overlap
            rebuilt[mask] = annotation["category_id"]
            people[mask] = annotation.get("attributes", {}).get("person", 0)
        np.testing.assert_array_equal(rebuilt, sample.category_ids)
        if sample.human_ids is not None:
            np.testing.assert_array_equal(
                people, np.where(sample.category_ids > 0, sample.human_ids, 0)
            )


def test_round_trip_cihp_coco_cihp_is_exact(dataset, tmp_path):
    path = coco.export_coco(dataset, tmp_path / "coco")
    counts = coco.import_coco(path, tmp_path / "back")
    assert counts == {"written": 3, "failed": 0}
    for sample_id in IDS:
        before, after = (
            cihp.read_sample(dataset, sample_id),
            cihp.read_sample(tmp_path / "back", sample_id),
        )
        np.testing.assert_array_equal(after.category_ids, before.category_ids)
        np.testing.assert_array_equal(after.image, before.image)
        if before.human_ids is None:
            assert after.human_ids is None
        else:
            np.testing.assert_array_equal(after.human_ids, before.human_ids)


def write_foreign_coco(tmp_path, cihp_samples, categories, annotate):
    """A COCO file whose masks pycocotools encodes (not our encoder), with the real photos."""
    folder = tmp_path / "foreign"
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, sample_id in enumerate(IDS, start=1):
        shutil.copy(cihp_samples / "Images" / f"{sample_id}.jpg", folder / "images")
        parts = np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        images.append(
            {
                "id": image_id,
                "file_name": f"{sample_id}.jpg",
                "height": parts.shape[0],
                "width": parts.shape[1],
            }
        )
        for class_id in np.unique(parts[parts > 0]):
            rle = mask_api.encode(np.asfortranarray((parts == class_id).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append(annotate(len(annotations) + 1, image_id, int(class_id), rle))
    path = folder / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_import_a_coco_file_pycocotools_wrote(tmp_path, cihp_samples):
    categories = [{"id": 100 + i, "name": name} for i, name in enumerate(cihp.CLASS_NAMES) if i]
    path = write_foreign_coco(
        tmp_path,
        cihp_samples,
        categories,
        lambda ann_id, image_id, class_id, rle: {
            "id": ann_id,
            "image_id": image_id,
            "category_id": 100 + class_id,
            "segmentation": rle,
            "iscrowd": 0,
        },
    )
    assert coco.import_coco(path, tmp_path / "ds") == {"written": 3, "failed": 0}
    for sample_id in IDS:
        expected = np.asarray(PIL.Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        np.testing.assert_array_equal(
            cihp.read_sample(tmp_path / "ds", sample_id).category_ids, expected
        )


def test_unmapped_categories_are_refused_unless_mapped(tmp_path, cihp_samples):
    categories = [{"id": i, "name": f"tool class {i}"} for i in range(1, 20)]
    path = write_foreign_coco(
        tmp_path,
        cihp_samples,
        categories,
        lambda ann_id, image_id, class_id, rle: {
            "id": ann_id,
            "image_id": image_id,
            "category_id": class_id,
            "segmentation": rle,
        },
    )
    with pytest.raises(ValueError, match="categories with no CIHP class: 1 'tool class 1'.*--map"):
        coco.import_coco(path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    mapping = {f"tool class {i}": i for i in range(1, 20)}
    assert coco.import_coco(path, tmp_path / "ds", mapping=mapping)["written"] == 3


def test_a_bad_record_gives_one_line_and_the_other_samples_land(dataset, tmp_path):
    path = coco.export_coco(dataset, tmp_path / "coco")
    document = json.loads(path.read_text())
    bad = next(a for a in document["annotations"] if a["image_id"] == 2)
    bad["segmentation"] = {"size": [3, 3], "counts": "0"}
    path.write_text(json.dumps(document))
    lines = []
    counts = coco.import_coco(path, tmp_path / "back", report=lines.append)
    assert counts == {"written": 2, "failed": 1}
    (line,) = lines
    assert "0005008.jpg" in line and "\n" not in line
    assert sorted(cihp.list_samples(tmp_path / "back")) == ["0002190", "0026375"]


def test_the_cli_exports_and_imports_with_predicts_exit_codes(dataset, tmp_path, capsys):
    from napari_deeplab.cli import main

    assert main(["export", str(dataset), "--format", "coco", "--out", str(tmp_path / "c")]) == 0
    path = tmp_path / "c" / "annotations" / "instances_Training.json"
    document = json.loads(path.read_text())
    document["images"][0]["height"] += 1  # its masks no longer fit: a bad record
    path.write_text(json.dumps(document))
    capsys.readouterr()
    assert main(["import", str(path), "--format", "coco", "--out", str(tmp_path / "d")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "0002190.jpg" in errors[0]
    assert sorted(cihp.list_samples(tmp_path / "d")) == ["0005008", "0026375"]

    document["categories"][0]["name"] = "hat of another tool"
    path.write_text(json.dumps(document))
    assert main(["import", str(path), "--format", "coco", "--out", str(tmp_path / "e")]) == 2
    assert "--map" in capsys.readouterr().err
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"hat of another tool": 1}))
    argv = ["import", str(path), "--format", "coco", "--out", str(tmp_path / "e")]
    assert main([*argv, "--map", str(mapping)]) == 1
