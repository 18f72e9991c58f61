"""``evaluate --instances`` and ``evaluate --against``: mean IoU together with APʳ / AP^p
(:mod:`~napari_deeplab.instance_metrics`), for a model whose people are proposed from its
parts, or for one dataset's masks scored against another's (two annotators), with no model.

A sample's ground-truth people are its ``Human_ids``; samples without them still count for
the mean IoU but not for APʳ / AP^p, and are counted in the result.
"""

from __future__ import annotations

import numpy as np

from . import cihp
from .instance_metrics import InstanceEvaluation, format_instance_summary
from .people import propose_people
from .training.data import (
    IGNORE_CLASS,
    Dataset,
    NoLabelledPixels,
    SampleProblems,
    require_good_samples,
    sample_problem_line,
)
from .training.metrics import confusion, scores

IDS_SHOWN = 5
"""Ids a line about ids missing from one dataset names before "...": enough to find them."""


def _read(dataset: Dataset, sample_id: str) -> cihp.Sample:
    """The sample, its people checked against its parts; errors as :class:`SampleProblems`."""
    where = str(cihp.split_folder(dataset.root, dataset.split))
    try:
        sample = cihp.read_sample(dataset.root, sample_id, dataset.split)
    except (ValueError, OSError) as error:
        raise SampleProblems([sample_problem_line(dataset, sample_id, str(error))], where) from None
    people = sample.human_ids
    if people is not None and people.shape != sample.category_ids.shape:  # type: ignore[union-attr]
        problem = (
            f"Human_ids {people.shape[1]} x {people.shape[0]} differs from its Category_ids "
            f"{sample.category_ids.shape[1]} x {sample.category_ids.shape[0]}"  # type: ignore[union-attr]
        )
        raise SampleProblems([sample_problem_line(dataset, sample_id, problem)], where)
    return sample


def _result(matrix: np.ndarray, instances: InstanceEvaluation, used: int, skipped: list[str]):
    if not matrix.any():
        return None
    result = scores(matrix, cihp.CLASS_NAMES)
    result["samples"] = used + len(skipped)
    result["instances"] = instances.summary() if used else None
    result["samples_without_people"] = skipped
    return result


def evaluate_instances(model, dataset: Dataset) -> dict:
    """Score ``model`` on ``dataset`` at full resolution: the mean IoU of :func:`~napari_deeplab.
    training.evaluate` plus, over the samples with ``Human_ids``, APʳ and AP^p of its part
    instances, its people proposed from its parts (:func:`~napari_deeplab.people.
    propose_people`, the Propose people button) and scored by its mean confidence.

    Returns what :func:`~napari_deeplab.training.scores` returns, plus ``samples``,
    ``instances`` (:meth:`InstanceEvaluation.summary`, None when no sample has people) and
    ``samples_without_people`` (their ids). Bad samples raise :class:`SampleProblems`.
    """
    from .inference import segment

    require_good_samples(dataset)
    matrix = np.zeros((cihp.NUM_CLASSES, cihp.NUM_CLASSES), np.int64)
    instances, used, skipped = InstanceEvaluation(), 0, []
    for sample_id in dataset.ids:
        sample = _read(dataset, sample_id)
        labels, confidence = segment(sample.image, model)
        matrix += confusion(sample.category_ids, labels, cihp.NUM_CLASSES)  # type: ignore[arg-type]
        if sample.human_ids is None:
            skipped.append(sample_id)
            continue
        instances.add(
            sample.category_ids,  # type: ignore[arg-type]
            sample.human_ids,
            labels,
            propose_people(labels),
            confidence,
        )
        used += 1
    result = _result(matrix, instances, used, skipped)
    if result is None:
        raise NoLabelledPixels(dataset)
    return result


def compare_datasets(dataset: Dataset, reference: Dataset) -> dict:
    """``dataset``'s masks scored against ``reference``'s as the truth, no model: the mean IoU
    (pixels 255 on either side ignored) and, over the samples with ``Human_ids`` on both
    sides, APʳ and AP^p (every instance scored 1.0).

    Both must list the same ids (else :class:`~napari_deeplab.cihp.DatasetError` naming the
    missing ones) and each sample's masks the same size. Returns as :func:`evaluate_instances`.
    """
    only_here = [i for i in dataset.ids if i not in set(reference.ids)]
    only_there = [i for i in reference.ids if i not in set(dataset.ids)]
    if only_here or only_there:
        raise cihp.DatasetError(
            "the two datasets must hold the same samples: "
            + "; ".join(
                f"{len(ids)} only in {cihp.split_folder(d.root, d.split)} ({_shown(ids)})"
                for ids, d in ((only_here, dataset), (only_there, reference))
                if ids
            )
            + "; score the common ids by giving each an id list of them"
        )
    require_good_samples(dataset, reference)
    matrix = np.zeros((cihp.NUM_CLASSES, cihp.NUM_CLASSES), np.int64)
    instances, used, skipped = InstanceEvaluation(), 0, []
    for sample_id in reference.ids:
        truth, masks = _read(reference, sample_id), _read(dataset, sample_id)
        truth_parts, parts = truth.category_ids, masks.category_ids
        if truth_parts is None or parts is None:
            raise cihp.DatasetError(f"sample {sample_id}: no Category_ids mask on one side")
        if truth_parts.shape != parts.shape:
            raise cihp.DatasetError(
                f"sample {sample_id}: its masks are {parts.shape[1]} x {parts.shape[0]} in "
                f"{cihp.split_folder(dataset.root, dataset.split)} but {truth_parts.shape[1]} "
                f"x {truth_parts.shape[0]} in {cihp.split_folder(reference.root, reference.split)}"
            )
        labelled = np.where(parts == IGNORE_CLASS, IGNORE_CLASS, truth_parts)
        matrix += confusion(labelled, np.where(parts == IGNORE_CLASS, 0, parts), cihp.NUM_CLASSES)
        if truth.human_ids is None or masks.human_ids is None:
            skipped.append(sample_id)
            continue
        instances.add(truth_parts, truth.human_ids, parts, masks.human_ids)
        used += 1
    result = _result(matrix, instances, used, skipped)
    if result is None:
        raise NoLabelledPixels(reference)
    return result


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:IDS_SHOWN]) + (", ..." if len(ids) > IDS_SHOWN else "")


def format_instances_report(result: dict) -> str:
    """The lines after the mean IoU: APʳ, AP^p and their table, or why there are none."""
    skipped = result["samples_without_people"]
    lines = []
    if skipped:
        lines.append(
            f"{len(skipped)} of {result['samples']} samples have no Human_ids (people) and are "
            f"left out of APr and APp ({_shown(skipped)})"
        )
    if result["instances"] is None:
        lines.append("no sample has people (Human_ids): no APr or APp")
    else:
        lines.append(format_instance_summary(result["instances"]))
    return "\n".join(lines)
