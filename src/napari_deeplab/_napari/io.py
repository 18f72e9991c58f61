"""napari reader and writer for the CIHP dataset layout.

Reader: a CIHP root, a split folder (or a folder laid out like one), or a ``Category_ids``
PNG beside its ``Images/`` photo opens as the photo, a parts Labels layer and, where the
sample has them, its people (``<photo> people``, from ``Human_ids``) and part instances
(``<photo> instances``: the stored ``Instance_ids``, else derived from parts x people). A
folder opens its first sample; the review queue walks them all.

Writer: File > Save Selected Layers (or ``viewer.layers.save(path, selected=True,
plugin="napari-deeplab")``) with a parts layer (with or without its photo and people layer)
writes one CIHP sample, named after the photo layer (or the parts layer less " parts"), with
its whole CIHP record where people are saved (``Human_ids``, ``Humans``, ``Instance_ids`` and
its ``.txt``, ``Instances``). An instances layer is information only: it is not saved (the
instances are derived again from the parts and people; edit those). Where:

- ``path`` an existing dataset (a CIHP root, or a split folder ``<dataset>/<split>``): into it.
- ``path`` a new name inside an existing dataset or split folder: into that folder. napari's
  save dialog opens a folder whose name is typed rather than choosing it, so in the dialog go
  into the dataset folder and press Save (the name it offers, the layer's, is not used).
- any other new name: a new dataset there (``<path>/Training/...``).

The photo: the selected image layer, else the image layer named after the sample in the viewer,
else the photo already in the dataset. It is copied byte for byte from the file it was opened
from when its pixels are that file's. napari's copies ("photo [1]") are refused, in one line.
A sample opened from a dataset remembers its version; saving refuses to overwrite it when
someone else changed it since (``cihp.SampleChangedError``).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from .. import cihp, photos
from .parts_layer import PARTS_SUFFIX, parts_colormap, parts_features

PEOPLE_SUFFIX = " people"
INSTANCES_SUFFIX = " instances"


def get_reader(path):
    """npe2 reader hook: a reader function for a CIHP root or split folder (it opens the first
    sample) or a ``Category_ids`` mask, where that sample's photo is in ``Images/``; anything
    else (a stack, any other PNG or folder) is read by napari's own reader, so a reader
    preference naming this plugin for ``*.png`` keeps plain photos opening. Also registers the
    reader preferences that spare the Choose reader dialog (:mod:`.reader_preferences`)."""
    from . import reader_preferences

    with contextlib.suppress(Exception):  # preferences are a convenience: never block a read
        reader_preferences.register()
    if not isinstance(path, (str, Path)):
        return napari_reader(path)
    try:
        location = cihp.locate(path)
        root, split, sample_id = location.root, location.split, location.sample_id
        if sample_id is None:
            samples = cihp.list_samples(root, split)
            if not samples:
                return napari_reader(path)
            sample_id = samples[0]
        cihp.find_image(root, sample_id, split)
    except (ValueError, OSError):
        return napari_reader(path)

    def read(_path):
        with contextlib.suppress(Exception):
            reader_preferences.register(root)
        return read_cihp(root, split, sample_id)

    return read


def napari_reader(path):
    """napari's own (builtin) reader function for ``path`` (a path or a stack's list), or None
    where it has none; what our reader hands back for files that are not CIHP samples."""
    from napari_builtins.io import napari_get_reader

    return napari_get_reader(path)


META_KEY = "napari_deeplab"
"""``layer.metadata[META_KEY]``: where a layer's sample came from, {"root", "split", "sample_id",
"version", "photo"} (the version: ``cihp.sample_version`` when the sample was read)."""

COPY_SUFFIX = re.compile(r" \[\d+\]$")
"""napari's name for a second layer of a name: "photo [1]"."""


def sample_version(root, sample_id: str, split: str | None):
    """The sample's version as ``cihp.sample_version`` gives it (None where cihp has none)."""
    version = getattr(cihp, "sample_version", None)
    if version is None:
        return None
    try:
        return version(root, sample_id, split)
    except (OSError, ValueError):
        return None


def sample_layers(sample: cihp.Sample, root=None, split: str | None = None) -> list[tuple]:
    """The layer data tuples of one sample: photo, parts (and people), each with where it came
    from in its metadata (:data:`META_KEY`)."""
    origin = {}
    if root is not None:
        photo = None
        with contextlib.suppress(OSError, ValueError):
            photo = str(cihp.find_image(root, sample.sample_id, split))
        origin = {
            META_KEY: {
                "root": str(Path(root).absolute()),
                "split": split,
                "sample_id": sample.sample_id,
                "photo": photo,
                "version": sample_version(root, sample.sample_id, split),
            }
        }
    layers = [(sample.image, {"name": sample.sample_id, "metadata": dict(origin)}, "image")]
    if sample.category_ids is not None:
        layers.append(
            (
                sample.category_ids,
                {
                    "name": sample.sample_id + PARTS_SUFFIX,
                    "colormap": parts_colormap(),
                    "features": parts_features(),
                    "opacity": 0.6,
                    "metadata": dict(origin),
                },
                "labels",
            )
        )
    if sample.human_ids is not None:
        layers.append(
            (
                sample.human_ids,
                {
                    "name": sample.sample_id + PEOPLE_SUFFIX,
                    "visible": False,
                    "metadata": dict(origin),
                },
                "labels",
            )
        )
    instances = _instances_of(sample)
    if instances is not None:
        layers.append(
            (
                instances,
                {
                    "name": sample.sample_id + INSTANCES_SUFFIX,
                    "visible": False,
                    "metadata": dict(origin),
                },
                "labels",
            )
        )
    return layers


def _instances_of(sample: cihp.Sample) -> np.ndarray | None:
    """The sample's part-instance map (H x W uint8) for its information layer: as stored,
    else derived from its parts x people; None without people."""
    if sample.human_ids is None:
        return None
    if sample.instance_ids is not None and sample.instance_ids.shape == sample.human_ids.shape:
        return sample.instance_ids
    if sample.category_ids is None:
        return None
    with contextlib.suppress(ValueError):  # more instances than 8 bits: no layer
        return cihp.part_instances(sample.category_ids, sample.human_ids)[0]
    return None


def read_cihp(root: Path, split: str | None, sample_id: str | None = None) -> list[tuple]:
    sample_id = sample_id or cihp.list_samples(root, split)[0]
    return sample_layers(cihp.read_sample(root, sample_id, split), root, split)


class SaveRefused(OSError):
    """A save that did not happen, in one line (why, and what to do). Not a ValueError: napari
    takes a writer's ValueError for "not a valid writer" and drops its message."""


def write_cihp(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer hook: a parts layer (with its photo, and a people layer, or alone) -> one
    CIHP sample in the dataset that ``path`` names (module docstring). Refusals raise
    :class:`SaveRefused` (napari shows it; nothing was written)."""
    try:
        return _write_cihp(path, layer_data)
    except ValueError as error:  # DatasetError, SampleChangedError (H1) are ValueErrors
        line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaveRefused(line) from error


def _write_cihp(path: str, layer_data: list[tuple]) -> list[str]:
    images = [(data, meta) for data, meta, kind in layer_data if kind == "image"]
    labels = [
        (data, meta)
        for data, meta, kind in layer_data
        if kind == "labels" and not _base_name(meta["name"]).endswith(INSTANCES_SUFFIX)
    ]  # instances are derived from the parts and people, never saved from their layer
    if len(images) > 1:
        raise ValueError("select one photo layer with its parts layer to save a CIHP sample")
    parts = [(d, m) for d, m in labels if not _base_name(m["name"]).endswith(PEOPLE_SUFFIX)]
    people = [(d, m) for d, m in labels if _base_name(m["name"]).endswith(PEOPLE_SUFFIX)]
    if len(parts) != 1 or len(people) > 1:
        raise ValueError(
            "select one parts layer (and at most one people layer) to save a CIHP sample"
        )
    root, split = dataset_target(path)
    written = save_sample(
        root, split, parts[0], images[0] if images else None, people[0] if people else None
    )
    return [str(p) for p in written.values()]


def _base_name(name: str) -> str:
    return COPY_SUFFIX.sub("", name)


def dataset_target(path: str | Path) -> tuple[Path, str]:
    """(root, split) that a save ``path`` names: an existing dataset or split folder, a new name
    inside one, or a new dataset."""
    path = Path(path).expanduser()
    for folder in (path, path.parent) if not path.is_dir() else (path,):
        if folder.is_dir():
            try:
                location = cihp.locate(folder)
            except ValueError:
                if folder.name in cihp.SPLIT_ID_FILES:  # an empty split folder of a dataset
                    return folder.parent, folder.name
                if folder is path:
                    return folder, "Training"  # an existing empty folder: a new dataset in it
                continue
            if (
                location.split is None
                and folder is path.parent
                and path.name in cihp.SPLIT_ID_FILES
            ):
                return location.root, path.name  # a new split of an existing dataset
            return location.root, location.split or "Training"
    if path.suffix or path.exists():
        raise ValueError(
            f"{path} is not a dataset folder: choose a dataset folder (or a new "
            "folder name) to save the sample into"
        )
    split = path.name if path.name in cihp.SPLIT_ID_FILES else "Training"
    return (path.parent if path.name in cihp.SPLIT_ID_FILES else path), split


def save_sample(
    root: Path, split: str, parts: tuple, image: tuple | None = None, people: tuple | None = None
) -> dict[str, Path]:
    """Write the (data, meta) of a parts layer, with its photo's and people's, as one sample of
    ``root``/``split``; every refusal is one line (:class:`ValueError`)."""
    import napari

    parts_data, parts_meta = parts
    name = image[1]["name"] if image is not None else parts_meta["name"]
    original = _base_name(name)
    if original != name or _base_name(parts_meta["name"]) != parts_meta["name"]:
        copy = name if original != name else parts_meta["name"]
        raise ValueError(
            f"'{copy}' is napari's name for a copy; rename the layers to the "
            f"sample id (e.g. '{original.removesuffix(PARTS_SUFFIX)}') to save "
            "them: nothing was written"
        )
    layer_id = name if image is not None else name.removesuffix(PARTS_SUFFIX)
    if image is None and layer_id == name:
        raise ValueError(f"'{name}' is not named '<photo> parts': select its photo too")
    # napari names a photo's layer by its file stem: its dots become '_' as in every writer
    sample_id = cihp.check_new_sample_id(cihp.sample_id_from_stem(layer_id))
    origin = (parts_meta.get("metadata") or {}).get(META_KEY) or {}
    photo_array, photo_path = None, None
    viewer = napari.current_viewer()
    if (
        image is None
        and viewer is not None
        and layer_id in viewer.layers
        and isinstance(viewer.layers[layer_id], napari.layers.Image)
    ):
        layer = viewer.layers[layer_id]
        image = (
            layer.data,
            {"name": layer.name, "metadata": layer.metadata, "source_path": layer.source.path},
        )
    if image is not None:
        photo_array = np.asarray(image[0])
        candidates = (
            ((image[1].get("metadata") or {}).get(META_KEY) or {}).get("photo"),
            image[1].get("source_path"),
            _source_path(viewer, image[1]["name"]),
        )
        photo_path = next(
            (path for path in candidates if path and _same_pixels(path, photo_array)), None
        )
    else:
        try:
            photo_path = cihp.find_image(root, sample_id, split)
        except (OSError, ValueError):
            raise ValueError(
                f"no photo for '{sample_id}': select its image layer with the parts "
                "layer (nothing was written)"
            ) from None
    # refused if someone changed the sample since these layers were read from it
    expected = (
        origin["version"]
        if origin.get("version") is not None and _same_sample(origin, root, split, sample_id)
        else cihp.ANY_VERSION
    )
    written = cihp.write_sample(
        root,
        sample_id,
        np.asarray(parts_data),
        split=split,
        image=None if photo_path else photo_array,
        image_path=photo_path,
        human_ids=np.asarray(people[0]) if people else None,
        overwrite=True,
        expected_version=expected,
        writer_tool="napari writer",
    )
    if viewer is not None:  # the layers now stand for the version just written
        new = {
            "root": str(Path(root).absolute()),
            "split": split,
            "sample_id": sample_id,
            "photo": str(written.get("Images", "")) or None,
            "version": sample_version(root, sample_id, split),
        }
        for layer_name in (
            layer_id,
            layer_id + PARTS_SUFFIX,
            layer_id + PEOPLE_SUFFIX,
            layer_id + INSTANCES_SUFFIX,
        ):
            if layer_name in viewer.layers:
                viewer.layers[layer_name].metadata[META_KEY] = dict(new)
    return written


def _same_sample(origin: dict, root: Path, split: str, sample_id: str) -> bool:
    try:
        return (
            Path(origin["root"]).resolve() == Path(root).resolve()
            and origin.get("split") == split
            and origin.get("sample_id") == sample_id
        )
    except (KeyError, OSError, TypeError):
        return False


def _source_path(viewer, name: str) -> str | None:
    if viewer is None or name not in viewer.layers:
        return None
    return viewer.layers[name].source.path


def _same_pixels(path: str, pixels: np.ndarray) -> bool:
    """Whether the file at ``path`` decodes to ``pixels`` (then it is copied, not re-encoded)."""
    try:
        with photos.open_image(path) as opened:
            decoded = np.asarray(opened)
    except (OSError, ValueError):
        return False
    return decoded.shape == pixels.shape and np.array_equal(decoded, pixels)
