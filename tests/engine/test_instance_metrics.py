"""APʳ and AP^p (instance_metrics): ground truth against itself, corrupted copies, and a plain
re-implementation of CIHP_PGN's ``evaluation/test_inst_part_ap.py`` loop reading the official
files (``Instance_ids`` png + txt; predictions png + ``<class> <score>`` txt)."""

import os

import numpy as np
import pytest
from PIL import Image

from napari_deeplab.cihp.instances import format_instance_table, part_instances
from napari_deeplab.instance_metrics import (
    IOU_THRESHOLDS,
    PART_CLASSES,
    APAccumulator,
    InstanceEvaluation,
    format_instance_summary,
)
from napari_deeplab.people import merge_people, propose_people
from tests.conftest import SAMPLE_IDS


def _sample_parts(cihp_samples):
    return [np.asarray(Image.open(cihp_samples / "Category_ids" / f"{i}.png")) for i in SAMPLE_IDS]


def _ap(pairs) -> dict:
    """The summary of InstanceEvaluation over (truth parts, truth people, parts, people)."""
    evaluation = InstanceEvaluation()
    for truth_parts, truth_people, parts, people in pairs:
        evaluation.add(truth_parts, truth_people, parts, people)
    return evaluation.summary()


@pytest.fixture(scope="module")
def truth(cihp_samples):
    """The samples' parts and, standing in for their Human_ids, Propose people on them."""
    return [(parts, propose_people(parts)) for parts in _sample_parts(cihp_samples)]


def test_ground_truth_against_itself_is_one(truth):
    summary = _ap([(parts, people, parts, people) for parts, people in truth])
    assert summary["ap_r"]["ap"] == 1.0 and summary["ap_p"]["ap"] == 1.0
    assert all(row["ap"] == 1.0 for row in summary["ap_r"]["per_threshold"])
    present = sum(v is not None for v in summary["ap_r"]["per_class"].values())
    assert 0 < present < 19  # the three samples lack gloves, sunglasses...
    # the script's mean counts each absent class 0
    assert summary["ap_r"]["ap_official"] == pytest.approx(present / 19)
    assert summary["ap_p"]["truth_instances"]["person"] == sum(p.max() for _, p in truth)
    text = format_instance_summary(summary)
    assert "1.0000" in text and "0.9" in text


def test_ap_falls_as_parts_are_erased(truth):
    previous = 1.0
    for erased in (1, 3, 6, 10):
        pairs = []
        for parts, people in truth:
            instance_map, instances = part_instances(parts, people)
            gone = np.isin(instance_map, [i.value for i in instances[:erased]])
            pairs.append((parts, people, np.where(gone, 0, parts), np.where(gone, 0, people)))
        ap = _ap(pairs)["ap_r"]["ap"]
        assert ap < previous, (erased, ap, previous)
        previous = ap


def test_ap_falls_as_people_are_merged(truth):
    previous_r = previous_p = 1.0
    for merges in (1, 2, 4):
        pairs = []
        for parts, people in truth:
            merged = people
            for _ in range(min(merges, int(people.max()) - 1)):
                merged = merge_people(merged, 1, 2)
            pairs.append((parts, people, parts, merged))
        summary = _ap(pairs)
        assert summary["ap_r"]["ap"] < previous_r and summary["ap_p"]["ap"] < previous_p
        previous_r, previous_p = summary["ap_r"]["ap"], summary["ap_p"]["ap"]


def test_ap_falls_as_masks_shift(truth):
    previous = 1.0
    for shift in (3, 10, 30, 80):
        pairs = [
            (parts, people, np.roll(parts, shift, axis=1), np.roll(people, shift, axis=1))
            for parts, people in truth
        ]
        summary = _ap(pairs)
        assert summary["ap_r"]["ap"] < previous, (shift, summary["ap_r"]["ap"])
        previous = summary["ap_r"]["ap"]
    assert previous < 0.2
    assert summary["ap_p"]["ap"] < 1.0


# A plain re-implementation of CIHP_PGN's loop, on its files, as literally as it goes: per
# class, per image, every mask of the class as a separate array, IoU by counting pixels.


def _official_masks(instance_map, wanted):
    masks = []
    for value in np.unique(instance_map):
        if value == 0 or value not in wanted:
            continue
        masks.append((instance_map == value).astype(np.uint8))
    return masks


def _official_voc_ap(recall, precision):
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])


def _official_class_ap(truth_dir, predicted_dir, image_ids, class_id, thresholds):
    truth_total = 0
    tp = [[] for _ in thresholds]
    fp = [[] for _ in thresholds]
    scores = []
    for image_id in image_ids:
        truth_map = np.array(Image.open(os.path.join(truth_dir, f"{image_id}.png")))
        with open(os.path.join(truth_dir, f"{image_id}.txt")) as table:
            truth_lines = [line.strip().split(" ") for line in table]
        predicted_map = np.array(Image.open(os.path.join(predicted_dir, f"{image_id}.png")))
        with open(os.path.join(predicted_dir, f"{image_id}.txt")) as table:
            items = [line.strip().split(" ") for line in table]
        predicted_ids, predicted_scores = [], []
        for i, item in enumerate(items):
            if int(item[0]) == class_id:
                predicted_ids.append(i + 1)
                predicted_scores.append(float(item[1]))
        truth_ids = [int(line[0]) for line in truth_lines if int(line[1]) == class_id]
        truth_masks = _official_masks(truth_map, set(truth_ids))
        predicted_masks = _official_masks(predicted_map, set(predicted_ids))
        truth_total += len(truth_masks)
        if not predicted_masks:
            continue
        scores += predicted_scores
        if not truth_masks:
            for _ in predicted_masks:
                for k in range(len(thresholds)):
                    fp[k].append(1)
                    tp[k].append(0)
            continue
        overlaps = np.zeros((len(predicted_masks), len(truth_masks)))
        for j, truth_mask in enumerate(truth_masks):
            for i, predicted_mask in enumerate(predicted_masks):
                intersection = np.count_nonzero(np.logical_and(truth_mask, predicted_mask))
                areas = np.count_nonzero(truth_mask) + np.count_nonzero(predicted_mask)
                overlaps[i, j] = intersection / (areas - intersection)
        best = np.argmax(overlaps, axis=1)
        for i in range(len(best)):
            max_iou = overlaps[i][best[i]]
            for k, threshold in enumerate(thresholds):
                tp[k].append(1 if max_iou > threshold else 0)
                fp[k].append(0 if max_iou > threshold else 1)
    order = np.argsort(scores)[::-1]
    ap = np.zeros(len(thresholds))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(len(thresholds)):
            m_tp = np.cumsum(np.array(tp[k])[order])
            m_fp = np.cumsum(np.array(fp[k])[order])
            recall = m_tp / float(truth_total)
            precision = m_tp / np.maximum(m_fp + m_tp, np.finfo(np.float64).eps)
            ap[k] = _official_voc_ap(recall, precision)
    return ap


def _random_instances(rng, shape, count, classes):
    """A random instance map of blocky blobs with values 1..count (some may be covered) and a
    class for each value."""
    small = rng.integers(0, count + 1, (shape[0] // 4, shape[1] // 4))
    instance_map = np.kron(small, np.ones((4, 4), np.int64)).astype(np.uint8)
    return instance_map, {v: int(rng.choice(classes)) for v in range(1, count + 1)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_matches_a_plain_reimplementation_of_the_official_loop(tmp_path, seed, ties):
    rng = np.random.default_rng(seed)
    truth_dir, predicted_dir = tmp_path / "Instance_part_val", tmp_path / "predicted"
    truth_dir.mkdir()
    predicted_dir.mkdir()
    classes = rng.choice(PART_CLASSES, 5, replace=False)  # few classes: several per image
    accumulator = APAccumulator(PART_CLASSES, [str(c) for c in PART_CLASSES])
    image_ids = [f"{i:07d}" for i in range(5)]
    for image_id in image_ids:
        shape = (48, 64)
        truth_map, truth_classes = _random_instances(rng, shape, int(rng.integers(1, 9)), classes)
        if rng.random() < 0.5:  # predictions near the truth, else unrelated
            predicted_map = np.roll(truth_map, int(rng.integers(0, 6)), axis=int(rng.integers(2)))
            predicted_classes = {
                v: (c if rng.random() < 0.8 else int(rng.choice(classes)))
                for v, c in truth_classes.items()
            }
        else:
            predicted_map, predicted_classes = _random_instances(
                rng, shape, int(rng.integers(0, 9)), classes
            )
        present = set(np.unique(predicted_map)) - {0}
        predicted_classes = {v: c for v, c in predicted_classes.items() if v in present}
        # the official predicted files number the instances 1..N by line
        values = sorted(predicted_classes)
        renumber = np.zeros(256, np.uint8)
        renumber[values] = np.arange(1, len(values) + 1)
        predicted_map = renumber[predicted_map]
        predicted_classes = {i + 1: predicted_classes[v] for i, v in enumerate(values)}
        scores = {
            v: 1.0 if ties else float(rng.choice([0.25, 0.5, 0.75]) if seed % 2 else rng.random())
            for v in predicted_classes
        }
        Image.fromarray(truth_map).save(truth_dir / f"{image_id}.png")
        (truth_dir / f"{image_id}.txt").write_text(
            "".join(f"{v} {c} 1\n" for v, c in sorted(truth_classes.items()))
        )
        Image.fromarray(predicted_map).save(predicted_dir / f"{image_id}.png")
        (predicted_dir / f"{image_id}.txt").write_text(
            "".join(f"{predicted_classes[v]} {scores[v]!r}\n" for v in sorted(predicted_classes))
        )
        accumulator.add_image(truth_map, truth_classes, predicted_map, predicted_classes, scores)
    ours = accumulator.average_precision()
    official = np.array(
        [
            _official_class_ap(truth_dir, predicted_dir, image_ids, c, IOU_THRESHOLDS)
            for c in PART_CLASSES
        ]
    )
    np.testing.assert_array_equal(ours, official)  # NaN where the script gives NaN, too
    assert np.isfinite(ours[classes - 1]).all() and (ours[classes - 1] > 0).any()
    summary = accumulator.summary()
    with np.errstate(invalid="ignore"):
        script_figure = np.mean(np.mean(official, axis=0))
    assert summary["ap_official"] == (None if np.isnan(script_figure) else script_figure)


def test_instance_table_of_the_truth_files_is_what_the_loop_reads(truth):
    """The GT table the loop reads is cihp's own Instance_ids .txt: value and class first."""
    parts, people = truth[1]
    instance_map, instances = part_instances(parts, people)
    lines = [line.split() for line in format_instance_table(instances).splitlines()]
    for (value, class_id, _), instance in zip(lines, instances, strict=True):
        assert int(value) == instance.value and int(class_id) == instance.class_id
        assert (parts[instance_map == instance.value] == instance.class_id).all()


def test_scores_are_the_mean_confidence_and_rank_the_predictions():
    """Two predictions of one class over one truth instance: the confident one ranked first
    gives AP 1 at a threshold only it passes; ranked second, 0.5."""
    truth = np.zeros((10, 10), np.uint8)
    truth[:, :5] = 1
    predicted = np.zeros((10, 10), np.uint8)
    predicted[:, :5] = 1  # exact
    predicted[:, 5:] = 2  # no overlap
    for good, bad, expected in ((0.9, 0.2, 1.0), (0.2, 0.9, 0.5)):
        confidence = np.where(predicted == 1, good, bad)
        accumulator = APAccumulator((2,), ("hair",))
        from napari_deeplab.instance_metrics import instance_scores

        scores = dict(zip((1, 2), instance_scores(predicted, [1, 2], confidence), strict=True))
        assert scores == {1: pytest.approx(good), 2: pytest.approx(bad)}
        accumulator.add_image(truth, {1: 2}, predicted, {1: 2, 2: 2}, scores)
        assert accumulator.average_precision()[0, 4] == pytest.approx(expected)


# The command line: evaluate --instances (a model) and evaluate --against (two datasets).


def _write_dataset(root, cihp_samples, people=True, parts_of=lambda parts: parts, ids=SAMPLE_IDS):
    """The samples written into ``root``'s Validation split through write_sample, their
    people (Propose people on the true parts) as Human_ids when ``people``."""
    from napari_deeplab.cihp import write_sample

    for sample_id in ids:
        truth = np.asarray(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        parts = parts_of(truth)
        write_sample(
            root,
            sample_id,
            parts,
            split="Validation",
            image_path=cihp_samples / "Images" / f"{sample_id}.jpg",
            human_ids=propose_people(parts) if people else None,
        )
    return root


def test_evaluate_instances_prints_apr_app_and_the_table(
    cihp_samples, model_file, tmp_path, capsys
):
    import json

    from napari_deeplab.cli import main

    ids = SAMPLE_IDS[:2]  # two photos: each run predicts at full resolution on the CPU
    root = _write_dataset(tmp_path / "truth", cihp_samples, ids=ids)
    assert main(["evaluate", str(root), "--model", str(model_file), "--instances"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "APr" in out and "APp" in out
    table = [line.split() for line in out.splitlines() if line.strip()[:3] in {"0.1", "0.5"}]
    assert len(table) == 2 and all(len(row) == 4 for row in table)
    assert main(["evaluate", str(root), "--model", str(model_file), "--instances", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ap_r = result["instances"]["ap_r"]
    assert len(ap_r["per_threshold"]) == 9 and ap_r["images"] == 2
    assert 0.0 <= ap_r["ap"] < 0.5  # random weights
    instances = 0
    for sample_id in ids:
        parts = np.asarray(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))
        instances += len(part_instances(parts, propose_people(parts))[1])
    assert sum(ap_r["truth_instances"].values()) == instances
    assert result["samples_without_people"] == []


def test_evaluate_against_a_copy_is_one_and_less_against_a_corrupted_copy(
    cihp_samples, tmp_path, capsys
):
    import json
    import shutil

    from napari_deeplab.cli import main

    truth = _write_dataset(tmp_path / "truth", cihp_samples)
    copy = tmp_path / "copy"
    shutil.copytree(truth, copy)
    assert main(["evaluate", str(copy), "--against", str(truth), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["miou"] == 1.0 and same["miou_all_classes"] < 1.0  # absent classes count 0
    assert same["instances"]["ap_r"]["ap"] == 1.0 and same["instances"]["ap_p"]["ap"] == 1.0

    shifted = _write_dataset(
        tmp_path / "shifted", cihp_samples, parts_of=lambda p: np.roll(p, 12, axis=1)
    )
    assert main(["evaluate", str(shifted), "--against", str(truth), "--json"]) == 0
    worse = json.loads(capsys.readouterr().out)
    assert worse["miou"] < 0.9 and worse["instances"]["ap_r"]["ap"] < 0.9
    assert main(["evaluate", str(shifted), "--against", str(truth)]) == 0
    out = capsys.readouterr().out
    assert f"{worse['miou']:.4f}" in out and f"{worse['instances']['ap_r']['ap']:.4f}" in out


def test_evaluate_against_refuses_other_ids_and_counts_samples_without_people(
    cihp_samples, tmp_path, capsys
):
    import json

    from napari_deeplab.cli import main

    truth = _write_dataset(tmp_path / "truth", cihp_samples)
    fewer = _write_dataset(tmp_path / "fewer", cihp_samples, ids=SAMPLE_IDS[:2])
    assert main(["evaluate", str(fewer), "--against", str(truth)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"1 only in {truth / 'Validation'} ({SAMPLE_IDS[2]})" in err[0], err

    assert main(["evaluate", str(truth), "--against", str(truth), "--model", "unused"]) == 2
    assert "drop --model" in capsys.readouterr().err

    no_people = _write_dataset(tmp_path / "no_people", cihp_samples, people=False)
    assert main(["evaluate", str(no_people), "--against", str(truth)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 samples have no Human_ids" in out and "no APr or APp" in out
    assert main(["evaluate", str(no_people), "--against", str(truth), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["miou"] == 1.0 and result["instances"] is None
    assert result["samples_without_people"] == list(SAMPLE_IDS)


def test_the_scored_instances_are_those_of_part_instances_in_their_order(truth):
    from napari_deeplab.instance_metrics import part_instance_map

    for parts, people in truth:
        cihp_map, instances = part_instances(parts, people)
        scored_map, classes = part_instance_map(parts, people)
        assert list(classes.values()) == [i.class_id for i in instances]
        for value, instance in zip(sorted(classes), instances, strict=True):
            assert np.array_equal(scored_map == value, cihp_map == instance.value)
    # more than 255 instances: part_instances refuses them (8 bits), scoring does not
    many_parts = np.tile(np.arange(1, 20, dtype=np.uint8), (20, 1))
    many_people = np.repeat(np.arange(1, 21, dtype=np.uint8), 19).reshape(20, 19)
    with pytest.raises(ValueError, match="255"):
        part_instances(many_parts, many_people)
    summary = _ap([(many_parts, many_people, many_parts, many_people)])
    assert summary["ap_r"]["ap"] == 1.0 and sum(summary["ap_r"]["truth_instances"].values()) == 380


def test_duplicate_hits_all_count_so_ap_can_exceed_one_as_in_the_script(tmp_path):
    """One true person with hair everywhere, proposed as two people side by side: each half's
    hair has IoU 0.5 with the true hair, both are hits under 0.5 (no one-to-one matching),
    recall reaches 2 and AP is 2.0; the plain re-implementation of the script says the same."""
    evaluation = InstanceEvaluation()
    parts = np.full((10, 10), 2, np.uint8)
    people = np.ones((10, 10), np.uint8)
    split = np.ones((10, 10), np.uint8)
    split[:, 5:] = 2
    evaluation.add(parts, people, parts, split)
    summary = evaluation.summary()
    per_threshold = {row["iou"]: row["ap"] for row in summary["ap_r"]["per_threshold"]}
    assert per_threshold[0.1] == 2.0 and per_threshold[0.4] == 2.0 and per_threshold[0.5] == 0.0
    assert "an AP over 1" in format_instance_summary(summary)
    truth_dir, predicted_dir = tmp_path / "truth", tmp_path / "predicted"
    truth_dir.mkdir()
    predicted_dir.mkdir()
    truth_map, instances = part_instances(parts, people)
    Image.fromarray(truth_map).save(truth_dir / "a.png")
    (truth_dir / "a.txt").write_text(format_instance_table(instances))
    Image.fromarray(split).save(predicted_dir / "a.png")  # values 1, 2: lines 1, 2
    (predicted_dir / "a.txt").write_text("2 1.0\n2 1.0\n")
    official = _official_class_ap(truth_dir, predicted_dir, ["a"], 2, IOU_THRESHOLDS)
    assert list(official) == [per_threshold[t] for t in IOU_THRESHOLDS]
