"""Part instances (each part of each person) from parts x people: CIHP's ``Instance_ids``.

CIHP's own evaluation (CIHP_PGN, ``evaluation/test_inst_part_ap.py``) reads a part-instance
map ``Instance_ids/<id>.png`` (H x W uint8, 0 background, one value per part instance) and
``Instance_ids/<id>.txt``, one line ``<value> <class_id> <person_id>`` per instance. In the
shipped files the value is ``class + 20 * (person - 1)``; that fits 8 bits for up to 12
people (19 + 20 * 11 = 239). With more people the instances are numbered 1..N in order of
(person, class) instead, the ``.txt`` giving each one's class and person; more than 255
instances cannot be held in an 8-bit map and are refused.

Instances are always derived from parts and people, never edited on their own.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .labels import NUM_CLASSES

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

    ``category_ids``: H x W uint8 class ids 0..19; ``human_ids``: H x W uint8 people 0..N
    (0 background). A pixel is an instance pixel when it has both a part and a person.
    Returns (H x W uint8 instance map, instances ordered by value). Raises ValueError when the
    shapes differ or there are more than 255 instances.
    """
    parts = np.asarray(category_ids)
    people = np.asarray(human_ids)
    if parts.shape != people.shape or parts.ndim != 2:
        raise ValueError(f"parts {parts.shape} and people {people.shape}: expected one H x W shape")
    both = (parts > 0) & (people > 0)
    key = np.where(both, people.astype(np.int64) * NUM_CLASSES + parts, 0)
    present = np.unique(key[both])
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
