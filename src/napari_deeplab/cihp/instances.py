"""Part instances (each part of each person) from parts x people: CIHP's ``Instance_ids``.

CIHP's own evaluation (CIHP_PGN, ``evaluation/test_inst_part_ap.py``) reads a part-instance
map ``Instance_ids/<id>.png`` (H x W uint8, 0 background, one value per part instance) and
``Instance_ids/<id>.txt``, one line ``<value> <class_id> <person_id>`` per instance. In the
shipped files the value is ``class + 20 * (person - 1)``; that fits 8 bits for person ids up
to 12 (19 + 20 * 11 = 239). With a higher person id the instances are numbered 1..N in order
of (person, class) instead, the ``.txt`` giving each one's class and person; more than 255
instances cannot be held in an 8-bit map and are refused.

Instances are always derived from parts and people, never edited on their own: every writer
derives them (:func:`instance_writers`), and the picture ``Instances/<id>.png`` colours each
value with :data:`~napari_deeplab.cihp.labels.INSTANCE_COLOURS`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .labels import INSTANCE_COLOURS, NUM_CLASSES
from .layout import INSTANCE_TABLE, DatasetError
from .png import save_label_png, save_rgb_png

MAX_PEOPLE_CIHP_NUMBERING = 12
"""Most people whose instances keep CIHP's numbering ``class + 20 * (person - 1)``."""


class Instance(NamedTuple):
    """One line of an ``Instance_ids/<id>.txt``: the map's value, its class and person."""

    value: int
    class_id: int
    person_id: int


def part_instances(
    category_ids: np.ndarray, human_ids: np.ndarray
) -> tuple[np.ndarray, list[Instance]]:
    """The part-instance map and its table.

    ``category_ids``: H x W integers, class ids 0..19; ``human_ids``: H x W integers, people
    0..255 (0 background). A pixel is an instance pixel when it has both a part and a person.
    Returns (H x W uint8 instance map, instances ordered by value). Raises ValueError when the
    shapes differ, a value is out of range or there are more than 255 instances.
    """
    parts = np.asarray(category_ids)
    people = np.asarray(human_ids)
    if parts.shape != people.shape or parts.ndim != 2:
        raise ValueError(f"parts {parts.shape} and people {people.shape}: expected one H x W shape")
    for array, name, largest in ((parts, "parts", NUM_CLASSES - 1), (people, "people", 255)):
        if array.size and (array.min() < 0 or array.max() > largest):
            raise ValueError(f"{name} must lie in 0..{largest}, got {array.min()}..{array.max()}")
    both = (parts > 0) & (people > 0)
    key = people.astype(np.uint16) * NUM_CLASSES + parts.astype(np.uint16)  # <= 5119
    key[~both] = 0
    present = np.flatnonzero(np.bincount(key.ravel()))  # sorted, as np.unique, but O(pixels)
    present = present[present > 0]
    pairs = [(int(k) // NUM_CLASSES, int(k) % NUM_CLASSES) for k in present]
    if len(pairs) > 255:
        raise ValueError(
            f"{len(pairs)} part instances: an 8-bit Instance_ids map holds at most 255"
        )
    cihp_numbering = not pairs or max(person for person, _ in pairs) <= MAX_PEOPLE_CIHP_NUMBERING
    if cihp_numbering:
        values = [cls + NUM_CLASSES * (person - 1) for person, cls in pairs]
    else:
        values = list(range(1, len(pairs) + 1))
    table = np.zeros(int(present.max()) + 1 if len(present) else 1, np.uint8)
    table[present] = values
    instance_map = table[key].astype(np.uint8)
    instances = sorted(
        Instance(value, cls, person) for value, (person, cls) in zip(values, pairs, strict=True)
    )
    return instance_map, instances


def format_instance_table(instances: list[Instance]) -> str:
    """The text of ``Instance_ids/<id>.txt``: ``<value> <class_id> <person_id>`` per line."""
    return "".join(f"{i.value} {i.class_id} {i.person_id}\n" for i in instances)


def parse_instance_table(text: str, where: str = "instance table") -> list[Instance]:
    """Read the lines of an ``Instance_ids/<id>.txt``; ValueError naming ``where`` and the
    line when one is not three integers."""
    instances = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            value, class_id, person_id = (int(field) for field in fields)
        except ValueError:
            raise ValueError(
                f"{where} line {number}: expected '<value> <class_id> <person_id>', got {line!r}"
            ) from None
        instances.append(Instance(value, class_id, person_id))
    return instances


def instance_writers(category_ids: np.ndarray, human_ids: np.ndarray) -> dict:
    """The writers of a sample's part-instance files, by :func:`~napari_deeplab.cihp.layout.
    sample_paths` key: ``Instance_ids`` (8-bit grey map), :data:`INSTANCE_TABLE` (its ``.txt``)
    and ``Instances`` (its picture), each a function of the temporary path to write. The
    instances are derived here, so a ValueError (more than 255) comes before any write."""
    instance_map, instances = part_instances(category_ids, human_ids)
    table = format_instance_table(instances).encode("ascii")
    return {
        "Instance_ids": lambda tmp: save_label_png(instance_map, tmp),
        INSTANCE_TABLE: lambda tmp: _write_new(tmp, table),
        "Instances": lambda tmp: save_rgb_png(instance_map, INSTANCE_COLOURS, tmp),
    }


def _write_new(path, data: bytes) -> None:
    with open(path, "xb") as file:
        file.write(data)


def sample_instance_writers(sample_id: str, labels: np.ndarray, people: np.ndarray) -> dict:
    """The writers of the sample's part-instance files (:func:`~napari_deeplab.cihp.instances.
    instance_writers`); more instances than an 8-bit map holds is a :class:`DatasetError`
    naming the sample."""
    try:
        return instance_writers(labels, people)
    except ValueError as error:
        raise DatasetError(
            f"sample {sample_id}: {error}, so its Instance_ids cannot be written; "
            "give fewer people or parts (nothing was written)"
        ) from None
