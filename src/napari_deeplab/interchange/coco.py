"""COCO instance segmentation <-> the CIHP layout.

Export: ``<out>/annotations/instances_<split>.json`` and the photos copied byte for byte into
``<out>/images/`` (so the folder stands alone, as COCO tools expect). The 19 part classes are
the categories (ids 1..19, CIHP's names); each annotation is one part instance with an RLE mask
in pycocotools' compressed encoding: one per person and class where the sample has people
(``cihp.instances.part_instances``; the person number is kept in ``attributes.person``), one
per connected region of a class otherwise.

Import: photos are looked up in ``images_dir``, else ``images/`` beside or above the JSON, else
beside it. Each image becomes one sample written with ``cihp.write_sample`` (all or nothing per
sample), its class map painted from its annotations in file order, its people rebuilt from
``attributes.person`` where present. Categories are mapped by CIHP name, or by ``mapping``
(category name or id -> CIHP class id 0..19); an unmapped category refuses the whole import.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import cihp
from ..cihp.instances import part_instances


def _mask_api():
    from pycocotools import mask as mask_api

    return mask_api


def encode(mask: np.ndarray) -> dict:
    """H x W bool -> COCO compressed RLE {"size": [H, W], "counts": str}."""
    rle = _mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def sample_annotations(category_ids: np.ndarray, human_ids: np.ndarray | None) -> list[dict]:
    """The part instances of one sample as annotation bodies (no ids): category_id,
    segmentation, area, bbox, iscrowd (and attributes.person where people exist)."""
    from scipy import ndimage

    regions: list[tuple[int, np.ndarray, int | None]] = []
    if human_ids is not None:
        instance_map, instances = part_instances(category_ids, human_ids)
        for instance in instances:
            regions.append((instance.class_id, instance_map == instance.value, instance.person_id))
    else:
        for class_id in np.unique(category_ids):
            if class_id == 0:
                continue
            labelled, count = ndimage.label(category_ids == class_id)
            for region in range(1, count + 1):
                regions.append((int(class_id), labelled == region, None))
    annotations = []
    for class_id, mask, person in regions:
        rle = encode(mask)
        compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        annotation = {
            "category_id": int(class_id),
            "segmentation": rle,
            "area": int(_mask_api().area(compressed)),
            "bbox": [float(v) for v in _mask_api().toBbox(compressed)],
            "iscrowd": 0,
        }
        if person is not None:
            annotation["attributes"] = {"person": int(person)}
        annotations.append(annotation)
    return annotations


def categories() -> list[dict]:
    """The 19 part classes as COCO categories: ids 1..19, CIHP's names."""
    return [
        {"id": class_id, "name": name, "supercategory": "person"}
        for class_id, name in enumerate(cihp.CLASS_NAMES)
        if class_id > 0
    ]


def export_coco(root, out, split: str = "Training") -> Path:
    """Write ``split`` of the dataset at ``root`` as COCO under ``out``; returns the JSON path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, sample_id in enumerate(cihp.list_samples(root, split), start=1):
        sample = cihp.read_sample(root, sample_id, split)
        if sample.category_ids is None:  # listed without a mask: nothing to export
            raise cihp.DatasetError(f"sample {sample_id}: no Category_ids mask to export")
        photo = cihp.find_image(root, sample_id, split)
        shutil.copyfile(photo, out / "images" / photo.name)
        height, width = sample.category_ids.shape
        images.append({"id": image_id, "file_name": photo.name, "height": height, "width": width})
        for body in sample_annotations(sample.category_ids, sample.human_ids):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **body})
    document = {
        "info": {"description": f"napari-deeplab export of {split}"},
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    path = out / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(document))
    return path


def category_mapping(document: dict, mapping: dict | None = None) -> dict[int, int]:
    """COCO category id -> CIHP class id: by ``mapping`` (keys a category name or id) first,
    else by CIHP name. ValueError, in one line, naming every category it cannot map."""
    names = {name.lower(): class_id for class_id, name in enumerate(cihp.CLASS_NAMES)}
    mapping = {str(k): v for k, v in (mapping or {}).items()}
    result, unmapped = {}, []
    for category in document.get("categories", []):
        key_id, key_name = str(category["id"]), str(category.get("name", ""))
        target = mapping.get(key_name, mapping.get(key_id, names.get(key_name.lower())))
        if target is None or not (0 <= int(target) < cihp.NUM_CLASSES):
            unmapped.append(f"{category['id']} '{key_name}'")
        else:
            result[int(category["id"])] = int(target)
    if unmapped:
        raise ValueError(
            f"categories with no CIHP class: {', '.join(unmapped)}; give --map FILE "
            "(JSON: category name or id -> CIHP class id 0..19)"
        )
    return result


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    mask_api = _mask_api()
    if isinstance(segmentation, list):  # polygons
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_api.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    mask = mask_api.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"mask {mask.shape} for an image of {(height, width)}")
    return mask


def import_coco(
    source,
    out,
    *,
    split: str = "Training",
    mapping: dict | None = None,
    images_dir=None,
    report: Callable[[str], None] = print,
) -> dict[str, int]:
    """Write each image of the COCO file ``source`` as one sample of ``out``/``split``.
    A bad record is reported in one line (``report``) and skipped; the others land. Returns
    {"written": n, "failed": m}. Raises ValueError (nothing written) for categories it cannot
    map or a file that is not COCO."""
    source = Path(source)
    try:
        document = json.loads(source.read_text())
        images = document["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{source}: not a COCO annotations file ({error})") from None
    classes = category_mapping(document, mapping)
    folders = (
        [Path(images_dir)]
        if images_dir
        else [source.parent.parent / "images", source.parent / "images", source.parent]
    )
    by_image: dict = {}
    for annotation in document.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    counts = {"written": 0, "failed": 0}
    for image in images:
        name = image.get("file_name", f"image {image.get('id')}")
        try:
            height, width = int(image["height"]), int(image["width"])
            photo = next((f / name for f in folders if (f / name).is_file()), None)
            if photo is None:
                raise ValueError(f"photo not found in {', '.join(map(str, folders))}")
            parts = np.zeros((height, width), np.uint8)
            people = np.zeros((height, width), np.uint8)
            for annotation in by_image.get(image["id"], []):
                mask = _decode(annotation["segmentation"], height, width)
                if annotation["category_id"] not in classes:
                    raise ValueError(f"annotation {annotation.get('id')}: unknown category")
                parts[mask] = classes[annotation["category_id"]]
                person = (annotation.get("attributes") or {}).get("person")
                if person is not None:
                    people[mask] = int(person)
            cihp.write_sample(
                out,
                os.path.splitext(name)[0],
                parts,
                split=split,
                image_path=photo,
                human_ids=people if people.any() else None,
                overwrite=True,
                writer_tool="import coco",
            )
            counts["written"] += 1
        except Exception as error:  # one line per bad record; the other samples land
            line = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            report(f"{source.name}: {name}: {line}: skipped")
            counts["failed"] += 1
    return counts
