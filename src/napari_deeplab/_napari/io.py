"""napari reader and writer for the CIHP dataset layout.

Reader: a CIHP root, a split folder (or a folder laid out like one), or a ``Category_ids``
PNG beside its ``Images/`` photo opens as the photo, a parts Labels layer and, where the
sample has them, its people. A folder opens its first sample; the review queue walks them all.

Writer: File > Save Selected Layers with a photo, its parts layer (and a people layer) and a
folder name writes one CIHP sample there (``<folder>/Training/...``, or into the split when
the folder is a split folder), named after the photo layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import cihp
from .parts_layer import PARTS_SUFFIX, parts_colormap, parts_features

PEOPLE_SUFFIX = " people"


def locate(path: str | Path) -> tuple[Path, str | None, str | None]:
    """(root, split, sample id or None) of a CIHP path, or raise ``ValueError``."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".png" and path.parent.name == "Category_ids" \
            and (path.parent.parent / "Images").is_dir():
        folder = path.parent.parent
        split = folder.name if folder.name in cihp.SPLIT_ID_FILES else None
        return (folder.parent if split else folder), split, path.stem
    if path.is_dir():
        if (path / "Images").is_dir():
            split = path.name if path.name in cihp.SPLIT_ID_FILES else None
            return (path.parent if split else path), split, None
        for split in cihp.SPLIT_ID_FILES:
            if (path / split / "Images").is_dir():
                return path, split, None
    raise ValueError(f"{path} is not a CIHP dataset, split folder or Category_ids mask")


def get_reader(path):
    """npe2 reader hook: a reader function for a CIHP root or split folder (it opens the first
    sample) or a ``Category_ids`` mask, where that sample's photo is in ``Images/``; None for
    anything else (a stack, any other PNG or folder), so napari opens those with its own reader."""
    if not isinstance(path, (str, Path)):
        return None
    try:
        root, split, sample_id = locate(path)
        if sample_id is None:
            samples = cihp.list_samples(root, split)
            if not samples:
                return None
            sample_id = samples[0]
        cihp.find_image(root, sample_id, split)
    except (ValueError, OSError):
        return None
    return lambda _: read_cihp(root, split, sample_id)


def sample_layers(sample: cihp.Sample) -> list[tuple]:
    """The layer data tuples of one sample: photo, parts (and people)."""
    layers = [(sample.image, {"name": sample.sample_id}, "image")]
    if sample.category_ids is not None:
        layers.append((sample.category_ids, {"name": sample.sample_id + PARTS_SUFFIX,
                                             "colormap": parts_colormap(),
                                             "features": parts_features(), "opacity": 0.6}, "labels"))
    if sample.human_ids is not None:
        layers.append((sample.human_ids, {"name": sample.sample_id + PEOPLE_SUFFIX,
                                          "visible": False}, "labels"))
    return layers


def read_cihp(root: Path, split: str | None, sample_id: str | None = None) -> list[tuple]:
    sample_id = sample_id or cihp.list_samples(root, split)[0]
    return sample_layers(cihp.read_sample(root, sample_id, split))


def write_cihp(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer hook: one photo layer plus its parts (and people) layer -> one CIHP sample."""
    images = [(data, meta) for data, meta, kind in layer_data if kind == "image"]
    labels = [(data, meta) for data, meta, kind in layer_data if kind == "labels"]
    if len(images) != 1:
        raise ValueError("select one photo layer with its parts layer to save a CIHP sample")
    image, image_meta = images[0]
    parts = [d for d, m in labels if not m["name"].endswith(PEOPLE_SUFFIX)]
    people = [d for d, m in labels if m["name"].endswith(PEOPLE_SUFFIX)]
    if len(parts) != 1:
        raise ValueError("select one parts layer (and at most one people layer) with the photo")
    folder = Path(path)
    split = folder.name if folder.name in cihp.SPLIT_ID_FILES else "Training"
    root = folder.parent if folder.name in cihp.SPLIT_ID_FILES else folder
    written = cihp.write_sample(root, image_meta["name"], np.asarray(parts[0]), split=split,
                                image=np.asarray(image),
                                human_ids=np.asarray(people[0]) if people else None,
                                overwrite=True, writer_tool="napari writer")
    return [str(p) for p in written.values()]
