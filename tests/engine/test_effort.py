"""The effort of a correction (changed pixels, confusion, active time), the kept pre-labels and
the dataset's effort log: appended by concurrent processes, survives a writer killed mid-line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import files
from napari_deeplab.cihp import effort_log
from napari_deeplab.effort import IDLE_GAP_S, ActiveClock, dense_matrix, effort, sparse_pairs
from napari_deeplab.review_effort import keep_prelabel, load_prelabel, prelabel_paths


def _real_mask(cihp_samples, sample_id="0005008") -> np.ndarray:
    return np.array(Image.open(cihp_samples / "Category_ids" / f"{sample_id}.png"))


def _corrected(prelabel: np.ndarray) -> np.ndarray:
    """An annotator's correction: a painted box of class 13 (face), left/right arms swapped."""
    accepted = prelabel.copy()
    accepted[20:60, 30:90] = 13
    left, right = prelabel == 14, prelabel == 15
    accepted[left & (accepted != 13)] = 15
    accepted[right & (accepted != 13)] = 14
    return accepted


def test_effort_is_the_numpy_diff_of_prelabel_and_accepted(cihp_samples):
    prelabel = _real_mask(cihp_samples)
    accepted = _corrected(prelabel)
    figures = effort(prelabel, accepted)
    changed = prelabel != accepted
    assert figures["pixels"] == prelabel.size
    assert figures["changed"] == int(changed.sum()) > 0
    assert figures["changed_fraction"] == pytest.approx(changed.mean())
    matrix = figures["confusion"]
    assert matrix.shape == (20, 20) and matrix.dtype == np.int64
    for a in range(20):
        for b in range(20):
            assert matrix[a, b] == int(((prelabel == a) & (accepted == b)).sum())
    # the swap is in the matrix as the two classes changed into each other
    assert matrix[14, 15] > 0 and matrix[15, 14] > 0
    # stored as sparse pairs and back
    assert np.array_equal(dense_matrix(sparse_pairs(matrix)), matrix)
    assert effort(prelabel, prelabel)["changed"] == 0


def test_effort_refuses_masks_that_do_not_compare():
    with pytest.raises(ValueError, match="cannot be counted"):
        effort(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="outside 0..19"):
        effort(np.zeros((4, 4), np.uint8), np.full((4, 4), 20, np.uint8))


def test_active_clock_leaves_idle_gaps_out():
    clock = ActiveClock()
    assert IDLE_GAP_S == 60.0
    clock.event(5.0)  # before the photo is shown: not counted
    clock.resume(100.0)
    clock.event(110.0)  # +10
    clock.event(170.0)  # +60: a gap of exactly a minute counts
    clock.event(230.5)  # a gap of 60.5 s: idle, left out
    clock.event(231.0)  # +0.5
    assert clock.pause(241.0) == pytest.approx(80.5)  # +10
    clock.event(500.0)  # paused (another photo shown): not counted
    clock.resume(1000.0)  # shown again
    clock.event(1001.0)  # +1
    clock.event(1000.5)  # out of order: counts as the previous moment
    assert clock.pause(1003.0) == pytest.approx(83.5)  # +2
    assert not clock.running


def test_kept_prelabel_round_trip(tmp_path, cihp_samples):
    mask = _real_mask(cihp_samples)
    assert load_prelabel(tmp_path, "0005008") is None
    keep_prelabel(tmp_path, "0005008", mask, "models/a.keras")
    kept = load_prelabel(tmp_path, "0005008")
    assert np.array_equal(kept.labels, mask) and kept.model == "models/a.keras"
    assert kept.when.endswith("+00:00")
    png, record = prelabel_paths(tmp_path, "0005008")
    assert json.loads(record.read_text())["format"] == "napari-deeplab pre-label"
    record.write_text("{")  # a damaged record: the pre-label stays, its model unknown
    kept = load_prelabel(tmp_path, "0005008")
    assert np.array_equal(kept.labels, mask) and kept.model is None


def _entry(sample_id: str, model: str = "a.keras", changed_fraction: float = 0.25) -> dict:
    figures = effort(np.zeros((2, 2), np.uint8), np.array([[0, 1], [0, 0]], np.uint8))
    figures["changed_fraction"] = changed_fraction
    return effort_log.accept_entry(
        sample_id,
        "Training",
        figures,
        model=model,
        prelabelled_at=None,
        actions=3,
        active_s=12.5,
        state="corrected",
        annotator={"user": "alice", "host": "h", "pid": 1},
    )


def test_log_lines_are_versioned_and_read_back(tmp_path):
    assert effort_log.read_log(tmp_path).entries == []
    path = effort_log.append(tmp_path, _entry("a"))
    flagged = _entry("b", model="b.keras", changed_fraction=0.125)
    assert "note" not in flagged
    flagged = effort_log.accept_entry(
        "b",
        "Training",
        effort(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
        | {"changed_fraction": 0.125},
        model="b.keras",
        prelabelled_at=None,
        actions=0,
        active_s=1.0,
        state="flagged",
        annotator={"user": "bob", "host": "h", "pid": 2},
        note="legs swapped",
    )
    effort_log.append(tmp_path, flagged)
    assert path == tmp_path / ".napari-deeplab" / "effort.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["format"] == "napari-deeplab effort" and first["version"] == 1
    assert first["confusion"] == [[0, 0, 3], [0, 1, 1]]
    assert first["changed"] == 1 and first["pixels"] == 4 and first["actions"] == 3
    log = effort_log.read_log(tmp_path)
    assert [e["id"] for e in log.entries] == ["a", "b"] and log.skipped == []
    assert log.entries[1]["note"] == "legs swapped" and "note" not in log.entries[0]
    # read on from where a read ended: only the lines appended since
    assert log.end == path.stat().st_size
    assert effort_log.read_log(tmp_path, start=log.end).entries == []
    effort_log.append(tmp_path, _entry("c", model="b.keras", changed_fraction=0.125))
    assert [e["id"] for e in effort_log.read_log(tmp_path, start=log.end).entries] == ["c"]
    with path.open("r+b") as log_file:  # back to the two lines
        log_file.truncate(log.end)
    assert effort_log.running_figures(log.entries) == "mean changed 18.8% over 2 photos"
    assert (
        effort_log.running_figures(log.entries, "b.keras")
        == "mean changed 12.5% over 1 photo, this model"
    )
    # a line of a newer version is skipped, and said
    with path.open("a") as log_file:
        log_file.write(json.dumps({"format": "napari-deeplab effort", "version": 99}) + "\n")
    log = effort_log.read_log(tmp_path)
    assert len(log.entries) == 2 and "line 3 skipped: version 99" in log.skipped[0]


APPENDER = """
import sys, time
from pathlib import Path
from napari_deeplab.cihp import effort_log
root, name, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
for i in range(count):
    effort_log.append(root, {"id": f"{name}-{i}", "pad": "x" * (i % 50) * 40})
"""


def _run_appender(root, name: str, count: int, start: float, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(root), name, str(count), str(start)],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_appending_at_once_lose_no_line(tmp_path):
    import time

    count, start = 150, time.time() + 2.0
    writers = [_run_appender(tmp_path, name, count, start) for name in ("alice", "bob")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    log = effort_log.read_log(tmp_path)
    assert log.skipped == []
    ids = [entry["id"] for entry in log.entries]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in ("alice", "bob") for i in range(count))
    for name in ("alice", "bob"):  # each writer's lines in its own order
        mine = [i for i in ids if i.startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(count)]


def test_a_writer_killed_mid_line_leaves_the_log_readable(tmp_path):
    effort_log.append(tmp_path, _entry("before"))
    killed = _run_appender(
        tmp_path, "killed", 1, 0.0, **{files.CRASH_ENV: effort_log.HALF_LINE_STEP}
    )
    assert killed.wait(timeout=60) == files.CRASH_EXIT_CODE, killed.stderr.read()
    data = effort_log.effort_log_path(tmp_path).read_bytes()
    assert not data.endswith(b"\n")  # the torn half line is there
    log = effort_log.read_log(tmp_path)
    assert [e["id"] for e in log.entries] == ["before"]
    assert len(log.skipped) == 1 and "line 2 skipped: an unfinished append" in log.skipped[0]
    assert log.end == data.rfind(b"\n") + 1  # a reader reading on starts at the torn line
    # the next append ends the torn line first: its own line reads whole
    effort_log.append(tmp_path, _entry("after"))
    log = effort_log.read_log(tmp_path)
    assert [e["id"] for e in log.entries] == ["before", "after"]
    assert (
        len(log.skipped) == 1 and "line 2 skipped: not a line of the effort log" in log.skipped[0]
    )
    read_on = effort_log.read_log(tmp_path, start=data.rfind(b"\n") + 1)
    assert [e["id"] for e in read_on.entries] == ["after"] and len(read_on.skipped) == 1


def _synthetic_log(root) -> list[float]:
    """12 Accepts over two days: 6 pre-labelled by the first model, then 6 by a fine-tuned one
    that needs half the corrections; returns the changed fractions in order."""
    fractions = [0.30, 0.26, 0.34, 0.28, 0.32, 0.30, 0.16, 0.14, 0.12, 0.18, 0.15, 0.15]
    for place, fraction in enumerate(fractions):
        model = "/models/random0.keras" if place < 6 else "/models/finetuned-1.keras"
        entry = _entry(f"{place:07d}", model=model, changed_fraction=fraction)
        entry.update(
            when=f"2026-12-0{1 + place // 8}T10:{place:02d}:00+00:00",
            active_s=float(10 * (place + 1)),
            actions=place,
        )
        effort_log.append(root, entry)
    return fractions


def test_report_per_model_and_over_time(tmp_path, capsys):
    from napari_deeplab import cli

    root = tmp_path / "dataset"
    fractions = _synthetic_log(root)
    png = tmp_path / "plot" / "effort.png"
    assert cli.main(["report", str(root), "--json", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accepts"] == 12 and report["skipped_lines"] == 0
    first, tuned = report["models"]
    assert (first["name"], tuned["name"]) == ("random0.keras", "finetuned-1.keras")
    assert first["count"] == tuned["count"] == 6
    assert first["mean_changed_fraction"] == pytest.approx(np.mean(fractions[:6]))
    assert tuned["mean_changed_fraction"] == pytest.approx(np.mean(fractions[6:]))
    assert first["mean_active_s"] == pytest.approx(35.0)  # 10..60 s
    assert tuned["mean_actions"] == pytest.approx(8.5)  # 6..11
    day1, day2 = report["periods"]
    assert (day1["period"], day1["count"], day2["count"]) == ("2026-12-01", 8, 4)
    assert day1["models"] == ["random0.keras", "finetuned-1.keras"]
    assert day2["mean_changed_fraction"] == pytest.approx(np.mean(fractions[8:]))

    # the plot: a PNG with a colour for each model (matplotlib's tab10: blue, then orange)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (800, 400)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - colour).sum(axis=1) < 10).sum() > 200, colour

    # as text, per N accepts
    assert cli.main(["report", str(root), "--every", "5"]) == 0
    text = capsys.readouterr().out
    assert "12 accepted photos" in text
    assert "random0.keras          6    30.0%    35.0s      2.5" in text
    assert "accepts 11-12      2    15.0%   115.0s     10.5  finetuned-1.keras" in text


def test_report_of_a_dataset_without_a_log(tmp_path, capsys):
    from napari_deeplab import cli

    assert cli.main(["report", str(tmp_path)]) == 0
    assert "no Accepts recorded" in capsys.readouterr().err
