"""Per-photo uncertainty scores: the score and its regions, the shared scores file, and
``predict --scores`` / ``napari-deeplab scores`` as a user runs them."""

import json
import multiprocessing
import shutil

import numpy as np
import pytest

from napari_deeplab import cihp
from napari_deeplab.cli import EXIT_ERROR, EXIT_OK, main
from napari_deeplab.scoring import LOW_CONFIDENCE, score_photo, uncertainty_score
from tests.engine.commands import predict_command


def test_score_and_regions_of_a_known_confidence_map():
    confidence = np.full((40, 60), 0.9, np.float32)
    confidence[5:15, 10:30] = 0.3  # 200 pixels, the larger region
    confidence[30:35, 50:54] = 0.4  # 20 pixels
    confidence[0, 0] = 0.1  # a single pixel: counted in the score, not a region
    labels = np.zeros((40, 60), np.uint8)
    labels[5:15, 10:25] = 14
    labels[5:15, 25:30] = 15
    scored = score_photo(labels, confidence)
    expected = 1 - confidence.astype(np.float64).mean()
    assert scored.score == pytest.approx(expected, abs=1e-9)
    assert scored.low_fraction == pytest.approx(221 / 2400)
    first, second = scored.regions
    assert (first.top, first.left, first.bottom, first.right, first.pixels) == (5, 10, 15, 30, 200)
    assert first.class_id == 14 and first.confidence == pytest.approx(0.3, abs=1e-4)
    assert (second.top, second.left, second.pixels, second.class_id) == (30, 50, 20, 0)
    assert uncertainty_score(np.ones((3, 3))) == 0.0
    assert LOW_CONFIDENCE == 0.5


def _record(root, first, count):
    for i in range(first, first + count):
        cihp.record_scores(root, "Training", {f"p{i:03d}": {"score": i / 100}}, model=f"m{first}")


def test_two_writers_at_once_keep_every_entry(tmp_path):
    (tmp_path / "Training").mkdir()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_record, args=(tmp_path, first, 15)) for first in (0, 50)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    scores = cihp.read_scores(tmp_path, "Training")
    assert len(scores) == 30
    assert cihp.ranked(scores)[0] == "p064" and scores["p064"]["model"] == "m50"


def test_a_newer_or_foreign_file_is_refused_with_one_line(tmp_path):
    (tmp_path / "Training").mkdir()
    path = cihp.record_scores(tmp_path, "Training", {"a": {"score": 0.5}})
    document = json.loads(path.read_text())
    document["version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(cihp.DatasetError, match="version 99 is newer.*upgrade"):
        cihp.read_scores(tmp_path, "Training")
    path.write_text("{}")
    with pytest.raises(cihp.DatasetError, match="not a napari-deeplab scores file"):
        cihp.read_scores(tmp_path, "Training")
    assert main(["scores", str(tmp_path)]) == EXIT_ERROR


def test_predict_scores_then_scores_prints_the_ranking(cihp_samples, model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(cihp_samples / "Images", photos)
    out = tmp_path / "dataset"
    assert main(predict_command(photos, model=model_file, out=out, options=["--scores"])) == EXIT_OK
    scores = cihp.read_scores(out, "Training")
    assert sorted(scores) == sorted(path.stem for path in photos.iterdir())
    for sample_id, entry in scores.items():
        assert 0 <= entry["score"] <= 1 and entry["model"]
        mask = np.asarray(cihp.read_sample(out, sample_id).category_ids)
        for region in entry["regions"]:
            assert 0 <= region["top"] < region["bottom"] <= mask.shape[0]
    capsys.readouterr()
    assert main(["scores", str(out), "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [entry["id"] for entry in listed] == cihp.ranked(scores)
    assert [entry["score"] for entry in listed] == sorted(
        (entry["score"] for entry in scores.values()), reverse=True
    )
    assert main(["scores", str(out), "--top", "1"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and cihp.ranked(scores)[0] in lines[1]
