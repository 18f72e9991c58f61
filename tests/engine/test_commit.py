"""The dataset's commit protocol under crashes and concurrent writers (real files, real
processes): a sample is never lost, mixed or half-visible."""

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp, files

REPO = Path(__file__).resolve().parents[2]
SHAPE = (6, 8)

# A writer process: write one sample (mask and people filled with VALUE) with its photo copied.
WRITER = f"""
import sys
import numpy as np
from napari_deeplab import cihp, files
root, sample_id, value, photo = sys.argv[1:5]
value = int(value)
cihp.write_sample(root, sample_id, np.full({SHAPE}, value, np.uint8), image_path=photo,
                  human_ids=np.full({SHAPE}, value, np.uint8), overwrite=True,
                  writer_tool=(sys.argv[5:] or [None])[0])
"""

# An annotator's correction (class 5 everywhere) of one photo, saved from another process.
CORRECTION = """
import sys
import numpy as np
from PIL import Image
from napari_deeplab import cihp, files
root, photo = sys.argv[1:3]
shape = Image.open(photo).size[::-1]
cihp.write_sample(root, photo.rsplit("/", 1)[1].rsplit(".", 1)[0], np.full(shape, 5, np.uint8),
                  image_path=photo)
"""

# Many writes from one process: ids PREFIX-0..COUNT-1.
MANY_WRITES = """
import sys
import numpy as np
from napari_deeplab import cihp, files
root, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
labels, image = np.ones((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8)
for i in range(count):
    cihp.write_sample(root, f"{prefix}-{i}", labels, image=image)
"""


# A group commit from one process: samples g0 and g1 (mask and people filled with VALUE) in one
# lock, journal and id-list rewrite.
GROUP_WRITER = f"""
import sys
import numpy as np
from napari_deeplab import cihp, files
root, value, photo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
staged = [cihp.stage_sample(root, f"g{{i}}", np.full({SHAPE}, value, np.uint8), image_path=photo,
                            human_ids=np.full({SHAPE}, value, np.uint8), overwrite=True)
          for i in range(2)]
assert cihp.commit_samples(staged) == [None, None]
"""


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}
    env.pop(files.CRASH_ENV, None)
    env.update(extra)
    return env


# Forks one process per writer script from a Python that imported the engine once (a fresh
# interpreter spends about a second importing numpy and cihp before the first commit step):
# each script still runs in its own process, which dies at its crash point.
FORK_SERVER = """
import json, os, sys, tempfile, traceback
import numpy as np
from PIL import Image
from napari_deeplab import cihp, files
for line in sys.stdin:
    script, args, env = json.loads(line)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os.environ.update(env)
        sys.argv = ["-c", *args]
        code = 0
        try:
            exec(compile(script, "<string>", "exec"), {"__name__": "__main__"})
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    status = os.waitpid(pid, 0)[1]
    out.seek(0)
    err.seek(0)
    print(json.dumps([os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"),
                      err.read().decode(errors="replace")]), flush=True)
"""


class ForkedScripts:
    """``run(script, *args, **env)``: the script in a process of its own (forked from
    :data:`FORK_SERVER`), as ``python -c script *args`` with ``env`` added to :func:`_env`;
    returns a :class:`subprocess.CompletedProcess` (text ``stdout`` and ``stderr``)."""

    def __init__(self):
        self.server = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, script: str, *args, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        self.server.stdin.write(json.dumps([script, [str(a) for a in args], env]) + "\n")
        self.server.stdin.flush()
        if not select.select([self.server.stdout], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(script, timeout)
        returncode, stdout, stderr = json.loads(self.server.stdout.readline())
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    def __enter__(self) -> "ForkedScripts":
        return self

    def __exit__(self, *exception) -> None:
        self.server.stdin.close()
        self.server.wait(60)


@pytest.fixture(scope="module")
def scripts():
    """One :class:`ForkedScripts` for the module."""
    with ForkedScripts() as forked:
        yield forked


def _photo(path: Path, value: int) -> Path:
    """A small photo whose pixels say which version of the sample it belongs to."""
    Image.fromarray(np.full(SHAPE + (3,), value * 40, np.uint8)).save(path)
    return path


def _write_filled(root: Path, sample_id: str, value: int, photo: Path, **options) -> None:
    """Write ``sample_id`` as :data:`WRITER` does, in this process: mask and people filled with
    ``value``, ``photo`` copied; ``options`` go to :func:`cihp.write_sample`."""
    cihp.write_sample(
        root,
        sample_id,
        np.full(SHAPE, value, np.uint8),
        image_path=photo,
        human_ids=np.full(SHAPE, value, np.uint8),
        **options,
    )


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def _assert_consistent(root: Path, versions: dict[int, bytes]) -> set[str]:
    """Every listed sample reads back wholly as one version: photo bytes, mask, picture and
    people all of the same write. Returns the listed ids."""
    listed = cihp.list_samples(root, "Training")  # completes an interrupted commit first
    assert not (root / "Training" / cihp.JOURNAL_NAME).exists()
    for sample_id in listed:
        sample = cihp.read_sample(root, sample_id)
        value = int(sample.category_ids[0, 0])
        assert value in versions, f"{sample_id}: mask of no known version"
        assert sample.image_path.read_bytes() == versions[value], (
            f"{sample_id}: photo of another version"
        )
        assert len(cihp.photos_of(root / "Training" / "Images", sample_id)) == 1
        np.testing.assert_array_equal(sample.category_ids, value)
        np.testing.assert_array_equal(sample.human_ids, value)
        picture = np.asarray(Image.open(root / "Training" / "Categories" / f"{sample_id}.png"))
        np.testing.assert_array_equal(picture, np.broadcast_to(cihp.PALETTE[value], SHAPE + (3,)))
        _assert_instances_of(root / "Training", sample_id, value, value)
    return set(listed)


def _assert_instances_of(split: Path, sample_id: str, part: int, person: int | None) -> None:
    """The sample's instance files are those of a mask filled with ``part`` and people filled
    with ``person``; with ``person`` None, the sample has no people or instance files."""
    files_of = [split / f / f"{sample_id}.png" for f in ("Human_ids", "Humans", "Instances")]
    files_of += [
        split / "Instance_ids" / f"{sample_id}.png",
        split / "Instance_ids" / f"{sample_id}.txt",
    ]
    if person is None:
        assert not [path for path in files_of if path.exists()]
        return
    value = part + 20 * (person - 1)
    instance_map = np.asarray(Image.open(split / "Instance_ids" / f"{sample_id}.png"))
    np.testing.assert_array_equal(instance_map, np.full(SHAPE, value))
    table = (split / "Instance_ids" / f"{sample_id}.txt").read_text()
    assert table == f"{value} {part} {person}\n"
    picture = np.asarray(Image.open(split / "Instances" / f"{sample_id}.png"))
    colour = cihp.INSTANCE_COLOURS[value]
    np.testing.assert_array_equal(picture, np.broadcast_to(colour, SHAPE + (3,)))


def _run_crashing_at(scripts, number: int, script: str, *args) -> str | None:
    """Run ``script`` with ``args`` in a process stopped at commit step ``number``: the name of
    the step it crashed at, or None when it completed."""
    run = scripts.run(script, *args, **{files.CRASH_ENV: str(number)})
    if run.returncode == 0:
        return None
    assert run.returncode == files.CRASH_EXIT_CODE, run.stderr
    return run.stderr.strip().rsplit("(", 1)[-1].rstrip(")")


def _crash_at_every_step(
    scripts, tmp_path, base: Path, photo: Path, value: int, versions, tool: str | None = None
) -> list[str]:
    """Run the writer stopped at step 1, 2, ... until it completes; after each crash check the
    dataset, re-run the write and check again. Returns the names of the steps crashed at.
    ``tool``: the writer records itself (``writer_tool``)."""
    steps = []
    for number in range(1, 100):
        root = tmp_path / f"crash-{base.name}-{tool}-{number}"
        shutil.copytree(base, root)
        step = _run_crashing_at(
            scripts, number, WRITER, root, "s", value, photo, *([tool] if tool else [])
        )
        if step is None:
            return steps
        steps.append(step)

        listed = _assert_consistent(root, versions)
        assert "keep" in listed
        if "s" not in listed:  # not committed: nothing of it may be visible
            assert not [p for p in (root / "Training").rglob("s.*") if not p.name.startswith(".")]
        assert not _temporaries(root), "stale temporaries of the dead writer were not removed"

        _write_filled(root, "s", value, photo, overwrite=True)
        assert _assert_consistent(root, versions) == listed | {"s"}
        assert cihp.read_sample(root, "s").category_ids[0, 0] == value
        assert not _temporaries(root)
    raise AssertionError("the writer never completed")


def test_a_crash_at_any_commit_step_leaves_old_or_new_and_a_rerun_completes(scripts, tmp_path):
    old_photo, new_photo = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    keep_photo = _photo(tmp_path / "keep.png", 3)
    versions = {1: old_photo.read_bytes(), 2: new_photo.read_bytes(), 3: keep_photo.read_bytes()}
    empty = tmp_path / "base-new"
    _write_filled(empty, "keep", 3, keep_photo)
    with_old = tmp_path / "base-old"
    shutil.copytree(empty, with_old)
    _write_filled(with_old, "s", 1, old_photo)

    new_sample_steps = _crash_at_every_step(scripts, tmp_path, empty, new_photo, 2, versions)
    # an overwrite that changes the photo's suffix (.jpg -> .png): the old photo must go too
    overwrite_steps = _crash_at_every_step(scripts, tmp_path, with_old, new_photo, 2, versions)

    # a crash while completing another writer's crashed commit (the roll-forward is idempotent)
    interrupted = tmp_path / "base-interrupted"
    shutil.copytree(with_old, interrupted)
    scripts.run(WRITER, interrupted, "s", 2, new_photo, **{files.CRASH_ENV: "journal written"})
    assert (interrupted / "Training" / cihp.JOURNAL_NAME).exists()
    recovery_steps = _crash_at_every_step(scripts, tmp_path, interrupted, new_photo, 2, versions)

    expected = {
        "staged Images",
        "staged Category_ids",
        "staged Categories",
        "staged Human_ids",
        "staged Humans",
        "staged Instance_ids",
        "staged Instance_table",
        "staged Instances",
        "locked",
        "journal staged",
        "journal written",
        "renamed Images/s.png",
        "renamed Category_ids/s.png",
        "renamed Humans/s.png",
        "renamed Instance_ids/s.png",
        "renamed Instance_ids/s.txt",
        "renamed Instances/s.png",
        "journal removed",
    }
    assert expected | {"id list staged", "id list written"} <= set(new_sample_steps)
    # an interactive writer (the review queue) also commits its writer record
    review_steps = _crash_at_every_step(
        scripts, tmp_path, with_old, new_photo, 2, versions, tool="review"
    )
    assert expected | {
        "staged writer record",
        f"renamed {cihp.WRITERS_FOLDER}/s.json",
        "removed Images/s.jpg",
    } <= set(review_steps)
    assert expected | {"removed Images/s.jpg"} <= set(overwrite_steps)
    assert recovery_steps.count("renamed Images/s.png") == 2  # the recovery's and its own
    print(
        f"\ncrash points: {len(new_sample_steps)} (new sample) + {len(overwrite_steps)} "
        f"(overwrite with another suffix) + {len(recovery_steps)} (a writer that first completes "
        "a crashed commit), all consistent and completed by a re-run"
    )


# A mask-only overwrite of sample "s" (mask filled with VALUE, HEIGHT rows; a new blank photo
# when the size changes): no people given.
MASK_ONLY_WRITER = f"""
import sys
import numpy as np
from napari_deeplab import cihp
root, value, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shape = (height, {SHAPE[1]})
photo = None if shape == {SHAPE} else np.zeros(shape + (3,), np.uint8)
cihp.write_sample(root, "s", np.full(shape, value, np.uint8), image=photo, overwrite=True)
"""


@pytest.mark.parametrize("height", [SHAPE[0], SHAPE[0] + 1], ids=["same size", "other size"])
def test_an_overwrite_without_people_keeps_or_removes_them_whole_at_any_crash(
    scripts, tmp_path, height
):
    base = tmp_path / "base"
    _write_filled(base, "s", 1, _photo(tmp_path / "p.png", 1))  # parts 1, one person
    steps = []
    for number in range(1, 100):
        root = tmp_path / f"crash-{number}"
        shutil.copytree(base, root)
        step = _run_crashing_at(scripts, number, MASK_ONLY_WRITER, root, 4, height)
        sample = cihp.read_sample(root, "s")  # completes an interrupted commit first
        split = root / "Training"
        assert not _temporaries(root)
        if sample.category_ids[0, 0] == 1:  # old: all of it
            _assert_instances_of(split, "s", 1, 1)
            np.testing.assert_array_equal(sample.human_ids, 1)
        elif height == SHAPE[0]:  # new parts, the people kept, their instances derived again
            np.testing.assert_array_equal(sample.human_ids, 1)
            _assert_instances_of(split, "s", 4, 1)
        else:  # new parts of another size: no people or instances left
            assert sample.human_ids is None and sample.instance_ids is None
            _assert_instances_of(split, "s", 4, None)
        if step is None:
            break
        steps.append(step)
    else:
        raise AssertionError("the writer never completed")
    assert cihp.read_sample(root, "s").category_ids[0, 0] == 4
    if height == SHAPE[0]:
        assert {"staged kept people's Instance_ids", "renamed Instance_ids/s.txt"} <= set(steps)
    else:
        assert {"removed Human_ids/s.png", "removed Instance_ids/s.txt"} <= set(steps)


def test_a_group_commit_is_all_or_nothing_at_any_crash_and_a_rerun_completes(scripts, tmp_path):
    old_photo, new_photo = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    versions = {1: old_photo.read_bytes(), 2: new_photo.read_bytes()}
    base = tmp_path / "base"
    _write_filled(base, "g0", 1, old_photo)  # g0 old (its photo a .jpg); g1 new
    steps = []
    for number in range(1, 200):
        root = tmp_path / f"crash-{number}"
        shutil.copytree(base, root)
        step = _run_crashing_at(scripts, number, GROUP_WRITER, root, 2, new_photo)
        if step is None:
            break
        steps.append(step)
        listed = _assert_consistent(root, versions)
        values = {cihp.read_sample(root, i).category_ids[0, 0] for i in listed}
        # both new (recovered), or g0 old and g1 absent
        assert (listed, values) in (({"g0"}, {1}), ({"g0", "g1"}, {2}))
        assert not _temporaries(root)
        rerun = scripts.run(GROUP_WRITER, root, 2, new_photo)
        assert rerun.returncode == 0, rerun.stderr
        assert _assert_consistent(root, versions) == {"g0", "g1"}
        assert {cihp.read_sample(root, i).category_ids[0, 0] for i in ("g0", "g1")} == {2}
    else:
        raise AssertionError("the group writer never completed")
    assert {
        "locked",
        "journal written",
        "renamed Images/g0.png",
        "renamed Humans/g1.png",
        "removed Images/g0.jpg",
        "id list written",
        "journal removed",
    } <= set(steps)
    assert steps.count("locked") == 1 and steps.count("id list written") == 1


def test_a_group_commit_decides_each_sample_under_the_lock(tmp_path):
    cihp.write_sample(
        tmp_path, "taken", np.full(SHAPE, 3, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )
    staged = [
        cihp.stage_sample(
            tmp_path, sample_id, np.full(SHAPE, 4, np.uint8), image=np.zeros(SHAPE, np.uint8)
        )
        for sample_id in ("b", "taken", "a")
    ]
    vanished = cihp.stage_sample(
        tmp_path, "c", np.full(SHAPE, 4, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )
    for tmp in vanished.staged.values():
        tmp.unlink()
    results = cihp.commit_samples(staged + [vanished])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], cihp.SampleExistsError)
    assert isinstance(results[3], cihp.DatasetError) and "vanished" in str(results[3])
    masks = tmp_path / "Training" / "Category_ids"
    assert np.asarray(Image.open(masks / "taken.png"))[0, 0] == 3
    assert np.asarray(Image.open(masks / "a.png"))[0, 0] == 4 and not (masks / "c.png").exists()
    assert (tmp_path / "Training" / "train_id.txt").read_text() == "a\nb\ntaken\n"  # sorted
    assert not _temporaries(tmp_path)


def test_two_processes_writing_one_split_lose_no_sample(tmp_path):
    root, count = tmp_path / "dataset", 300
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", MANY_WRITES, str(root), prefix, str(count)],
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in "ab"
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err
    listed = cihp.list_samples(root, "Training")
    assert len(listed) == 2 * count == len(set(listed))
    for sample_id in listed:
        assert cihp.read_sample(root, sample_id).category_ids.shape == (4, 4)
    assert not _temporaries(root)
    print(f"\nconcurrent writers: {len(listed)} listed of {2 * count} written")


@pytest.mark.one_backend
def test_predict_keeps_a_correction_committed_while_the_batch_runs(tmp_path, cihp_samples, model):
    from napari_deeplab.prelabel import prelabel_files

    photos = sorted((cihp_samples / "Images").glob("*.jpg"))
    out = tmp_path / "out"
    correction = np.full(np.asarray(Image.open(photos[2])).shape[:2], 5, np.uint8)
    for overwrite in (False, True):
        batch = prelabel_files(
            photos, model, out / str(overwrite), batch_size=1, overwrite=overwrite
        )
        first = next(batch)
        assert first.status == "written"
        # an annotator saves a correction of the third photo from another process
        subprocess.run(
            [sys.executable, "-c", CORRECTION, str(out / str(overwrite)), str(photos[2])],
            env=_env(),
            check=True,
            timeout=60,
        )
        outcomes = {o.sample_id: o for o in batch}
        mask = cihp.read_sample(out / str(overwrite), photos[2].stem).category_ids
        if overwrite:
            assert outcomes[photos[2].stem].status == "written" and not (mask == 5).all()
        else:
            assert outcomes[photos[2].stem].status == "skipped"
            assert "another writer" in outcomes[photos[2].stem].message
            np.testing.assert_array_equal(mask, correction)
        assert outcomes[photos[1].stem].status == "written"
        assert len(cihp.list_samples(out / str(overwrite), "Training")) == 3


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        ".hidden",
        " a",
        "a ",
        "a.",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\x0cb",
        "a\x85b",
        "a\u2028b",
        "a\u2029b",
        "a\x00b",
        "a:b",
        "a|b",
        "a?",
        "a*",
        'a"b',
        "<a>",
        "con",
        "CON",
        "nul.txt",
        "Com1",
        "lpt9.png",
        "aux.tar.gz",
        "x" * 121,
        "\u20ac" * 41,
    ],
)
def test_the_one_id_rule_refuses(tmp_path, bad_id):
    with pytest.raises(cihp.DatasetError, match="invalid sample id"):
        cihp.check_sample_id(bad_id)
    with pytest.raises(cihp.DatasetError, match="invalid sample id"):
        cihp.write_sample(tmp_path, bad_id, np.zeros((3, 3), np.uint8))
    assert not any(tmp_path.iterdir())


def test_ids_at_the_limits_round_trip(tmp_path):
    ids = [
        "x" * cihp.MAX_ID_BYTES,
        "\u20ac" * (cihp.MAX_ID_BYTES // 3),
        "a-b",
        "console",
        "com10",
        "ünïcödé",
        "0005008",
    ]
    photo = _photo(tmp_path / "photo-with-a-long-suffix.jpeg", 1)
    for sample_id in ids:
        cihp.write_sample(tmp_path / "d", sample_id, np.ones(SHAPE, np.uint8), image_path=photo)
        # a temporary name of the longest id stays under NAME_MAX
        longest = files.temporary_path(tmp_path / f"{sample_id}.jpeg").name
        assert len(longest.encode()) < 255
    assert cihp.list_samples(tmp_path / "d", "Training") == sorted(ids)
    for sample_id in ids:
        assert cihp.read_sample(tmp_path / "d", sample_id).category_ids.max() == 1


def test_masks_must_be_integer_arrays(tmp_path):
    for mask in (np.zeros((3, 3)), np.full((3, 3), np.nan), np.zeros((3, 3), np.float32)):
        with pytest.raises(cihp.DatasetError, match="integer array"):
            cihp.write_sample(tmp_path, "x", mask)
        with pytest.raises(cihp.DatasetError, match="integer array"):
            cihp.write_sample(tmp_path, "x", np.zeros((3, 3), int), human_ids=mask)
    assert not any(tmp_path.iterdir())


def test_overwrite_with_another_suffix_keeps_one_photo(tmp_path):
    old, new = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    cihp.write_sample(tmp_path / "d", "x", np.ones(SHAPE, np.uint8), image_path=old)
    # x.y: a sample of a dataset written before ids lost their dots (still read and listed)
    split = tmp_path / "d" / "Training"
    shutil.copy(old, split / "Images" / "x.y.jpg")
    shutil.copy(split / "Category_ids" / "x.png", split / "Category_ids" / "x.y.png")
    cihp.add_to_id_list(tmp_path / "d", "Training", ["x.y"])
    cihp.write_sample(
        tmp_path / "d", "x", np.full(SHAPE, 2, np.uint8), image_path=new, overwrite=True
    )
    images = sorted(
        p.name
        for p in (tmp_path / "d" / "Training" / "Images").iterdir()
        if not p.name.startswith(".")
    )
    assert images == ["x.png", "x.y.jpg"]  # x.y's photo is not x's
    sample = cihp.read_sample(tmp_path / "d", "x")
    assert sample.image_path.read_bytes() == new.read_bytes() and sample.category_ids.max() == 2
    assert cihp.find_image(tmp_path / "d", "x.y").name == "x.y.jpg"
    cihp.write_sample(tmp_path / "d", "x", np.ones(SHAPE, np.uint8), overwrite=True)  # mask only
    assert cihp.read_sample(tmp_path / "d", "x").image_path.read_bytes() == new.read_bytes()


def test_people_maps_of_another_size_do_not_survive_an_overwrite(tmp_path):
    people = np.ones(SHAPE, np.uint8)
    cihp.write_sample(
        tmp_path, "x", np.ones(SHAPE, np.uint8), human_ids=people, image=np.zeros(SHAPE, np.uint8)
    )
    cihp.write_sample(tmp_path, "x", np.ones(SHAPE, np.uint8), overwrite=True)  # same size: kept
    kept = tmp_path / "Training" / "Human_ids" / "x.png"
    np.testing.assert_array_equal(np.asarray(Image.open(kept)), people)
    cihp.write_sample(
        tmp_path, "x", np.ones((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8), overwrite=True
    )
    assert not (tmp_path / "Training" / "Human_ids" / "x.png").exists()
    assert not (tmp_path / "Training" / "Humans" / "x.png").exists()


def test_a_sample_exists_when_listed_and_unlisted_leftovers_are_replaced(tmp_path):
    cihp.write_sample(tmp_path, "a", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    leftover = tmp_path / "Training" / "Category_ids" / "b.png"
    Image.fromarray(np.full(SHAPE, 7, np.uint8)).save(leftover)  # files without a listed id
    assert not cihp.sample_exists(tmp_path, "b") and cihp.sample_exists(tmp_path, "a")
    assert cihp.list_samples(tmp_path, "Training") == ["a"]
    cihp.write_sample(
        tmp_path, "b", np.full(SHAPE, 2, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )  # no overwrite needed
    assert np.asarray(Image.open(leftover)).max() == 2
    with pytest.raises(cihp.SampleExistsError, match="overwrite"):
        cihp.write_sample(tmp_path, "b", np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    assert not _temporaries(tmp_path)


def test_a_folder_without_an_id_list_keeps_its_samples_when_written_into(tmp_path, cihp_samples):
    split = tmp_path / "Training"
    shutil.copytree(cihp_samples / "Images", split / "Images")
    shutil.copytree(cihp_samples / "Category_ids", split / "Category_ids")
    assert cihp.list_samples(tmp_path, "Training") == ["0002190", "0005008", "0026375"]
    with pytest.raises(cihp.SampleExistsError):
        cihp.write_sample(
            tmp_path,
            "0002190",
            np.zeros((200, 300), np.uint8),
            image=np.zeros((200, 300), np.uint8),
        )
    cihp.write_sample(tmp_path, "new", np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    assert cihp.read_id_list(tmp_path, "Training") == ["0002190", "0005008", "0026375", "new"]


def test_id_lists_are_read_by_lines_only(tmp_path):
    split = tmp_path / "Training"
    split.mkdir()
    (split / "train_id.txt").write_bytes(b"a\r\nb\r\n\r\nc\n")
    assert cihp.list_samples(tmp_path, "Training") == ["a", "b", "c"]


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    cihp.write_sample(tmp_path, "a", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    images = tmp_path / "Training" / "Images"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    host = (
        files.temporary_path(images / "x.png").name.split(".tmp")[0].rsplit(".", 1)[1].split("-")[0]
    )
    stale = images / f".b.png.{host}-{dead_pid}-0123abcd.tmp.png"
    live = images / f".c.png.{host}-{os.getpid()}-0123abcd.tmp.png"
    foreign_old = images / ".d.png.otherhost-1-0123abcd.tmp.png"
    foreign_new = images / ".e.png.otherhost-1-0123abcd.tmp.png"
    for path in (stale, live, foreign_old, foreign_new):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * files.STALE_FOREIGN_S
    os.utime(foreign_old, (hours_ago, hours_ago))
    cihp.recover(tmp_path, "Training")
    assert sorted(p.name for p in _temporaries(tmp_path)) == sorted([live.name, foreign_new.name])


def test_a_damaged_journal_is_reported_with_its_path(tmp_path):
    cihp.write_sample(tmp_path, "a", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    journal = tmp_path / "Training" / cihp.JOURNAL_NAME
    journal.write_text('{"renames": [["../../etc/x", "Images/a.png"]]}')
    with pytest.raises(cihp.DatasetError, match=str(journal)):
        cihp.list_samples(tmp_path, "Training")


def test_a_failing_write_under_the_lock_leaves_the_old_sample(tmp_path):
    cihp.write_sample(tmp_path, "x", np.ones((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(cihp.SampleExistsError):
        cihp.write_sample(
            tmp_path, "x", np.zeros((3, 3), np.uint8), image=np.zeros((3, 3), np.uint8)
        )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# A writer whose files may not grow past 4 KiB: the sample's small files fit, the long id list
# does not (as on a full disk, the rewrite of the id list fails half-way).
FULL_DISK = """
import resource, signal, sys
import numpy as np
from napari_deeplab import cihp, files
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    cihp.write_sample(sys.argv[1], "late", np.ones((4, 4), np.uint8), image=np.zeros((4, 4, 3), np.uint8))
except OSError as error:
    print(error.errno)
"""


def test_a_full_disk_while_listing_is_completed_by_the_next_run(tmp_path):
    import errno

    root = tmp_path / "d"
    cihp.write_sample(root, "first", np.ones((4, 4), np.uint8), image=np.zeros((4, 4, 3), np.uint8))
    cihp.add_to_id_list(root, "Training", [f"listed-{i:05d}" for i in range(600)])  # > 4 KiB
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(root)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.split() == [str(errno.EFBIG)], run.stderr
    assert (root / "Training" / cihp.JOURNAL_NAME).exists()  # the commit is recorded, not lost
    assert "late" in cihp.list_samples(root, "Training")  # completed by the next reader
    assert cihp.read_sample(root, "late").category_ids.max() == 1
    assert not (root / "Training" / cihp.JOURNAL_NAME).exists() and not _temporaries(root)


# --- versions, writer records, expected versions, removal (issue 17) ----------------------------

# Another annotator's save of sample s from another process (mask VALUE), through the review queue.
REVIEW_SAVE = f"""
import sys
import numpy as np
from napari_deeplab import cihp, files
root, value = sys.argv[1], int(sys.argv[2])
cihp.write_sample(root, "s", np.full({SHAPE}, value, np.uint8), overwrite=True, writer_tool="review")
"""


def test_a_sample_version_changes_on_every_commit_and_names_its_writer(tmp_path):
    assert cihp.sample_version(tmp_path, "s") is None and cihp.sample_writer(tmp_path, "s") is None
    versions = []
    for value in (1, 1, 2):
        cihp.write_sample(
            tmp_path,
            "s",
            np.full(SHAPE, value, np.uint8),
            overwrite=True,
            image=np.zeros(SHAPE, np.uint8),
            writer_tool="napari writer",
        )
        versions.append(cihp.sample_version(tmp_path, "s"))
        assert cihp.sample_version(tmp_path, "s") == versions[-1]  # stable between commits
    assert len(set(versions)) == 3 and all(isinstance(v, str) for v in versions)
    writer = cihp.sample_writer(tmp_path, "s")
    assert set(writer) == {"user", "host", "pid", "tool", "time"}
    assert writer["tool"] == "napari writer" and writer["pid"] == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", writer["time"])
    # the record is hidden from a foreign loader's globs of Images/* and Category_ids/*
    assert (tmp_path / "Training" / cihp.WRITERS_FOLDER / "s.json").is_file()
    assert sorted(
        p.name for p in (tmp_path / "Training" / "Images").iterdir() if not p.name.startswith(".")
    ) == ["s.png"]
    cihp.write_sample(
        tmp_path, "leftover-only", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )
    (tmp_path / "Training" / "train_id.txt").write_text("s\n")  # unlisted: no version
    assert cihp.sample_version(tmp_path, "leftover-only") is None


def test_a_foreign_sample_has_a_version_and_no_writer(cihp_samples):
    assert cihp.sample_version(cihp_samples, "0002190", split=None)
    assert cihp.sample_writer(cihp_samples, "0002190", split=None) is None


@pytest.mark.one_backend
def test_expected_version_refuses_a_sample_changed_by_another_process(tmp_path):
    cihp.write_sample(tmp_path, "s", np.full(SHAPE, 1, np.uint8), image=np.zeros(SHAPE, np.uint8))
    opened = cihp.sample_version(tmp_path, "s")  # an annotator opens the sample...
    subprocess.run(
        [sys.executable, "-c", REVIEW_SAVE, str(tmp_path), "2"], env=_env(), check=True, timeout=60
    )  # ...another saves it meanwhile
    with pytest.raises(cihp.SampleChangedError) as caught:
        cihp.write_sample(
            tmp_path,
            "s",
            np.full(SHAPE, 3, np.uint8),
            expected_version=opened,
            image=np.zeros(SHAPE, np.uint8),
        )
    error = caught.value
    writer = cihp.sample_writer(tmp_path, "s")
    assert error.sample_id == "s" and error.writer == writer and writer["pid"] != os.getpid()
    assert error.current_version == cihp.sample_version(tmp_path, "s") != opened
    when = writer["time"].replace("T", " ").replace("Z", " UTC")
    assert str(error).startswith(
        f"sample s was changed by {writer['user']}@{writer['host']} at "
        f"{when} (napari-deeplab review) since you opened it; "
    )
    assert "\n" not in str(error)
    assert cihp.read_sample(tmp_path, "s").category_ids.max() == 2
    # the version read now is accepted (an overwrite without overwrite=True)
    cihp.write_sample(
        tmp_path, "s", np.full(SHAPE, 3, np.uint8), expected_version=error.current_version
    )
    assert cihp.read_sample(tmp_path, "s").category_ids.max() == 3
    assert not _temporaries(tmp_path)


def test_expected_version_is_decided_under_the_lock_at_commit_time(tmp_path):
    cihp.write_sample(tmp_path, "s", np.full(SHAPE, 1, np.uint8), image=np.zeros(SHAPE, np.uint8))
    opened = cihp.sample_version(tmp_path, "s")
    staged = cihp.stage_sample(
        tmp_path,
        "s",
        np.full(SHAPE, 3, np.uint8),
        expected_version=opened,
        image=np.zeros(SHAPE, np.uint8),
    )
    new = cihp.stage_sample(
        tmp_path,
        "n",
        np.full(SHAPE, 3, np.uint8),
        expected_version=None,
        image=np.zeros(SHAPE, np.uint8),
    )
    subprocess.run(
        [sys.executable, "-c", REVIEW_SAVE, str(tmp_path), "2"], env=_env(), check=True, timeout=60
    )
    results = cihp.commit_samples([staged, new])
    assert isinstance(results[0], cihp.SampleChangedError) and results[1] is None
    assert cihp.read_sample(tmp_path, "s").category_ids.max() == 2
    with pytest.raises(
        cihp.SampleChangedError, match="sample n was committed by .* since you opened"
    ):
        cihp.write_sample(
            tmp_path,
            "n",
            np.ones(SHAPE, np.uint8),
            expected_version=None,
            image=np.zeros(SHAPE, np.uint8),
        )
    assert not _temporaries(tmp_path)


def test_remove_sample_unlists_it_and_removes_only_its_files(tmp_path):
    photo = _photo(tmp_path / "p.jpg", 1)
    root = tmp_path / "d"
    for sample_id in ("a", "s"):
        cihp.write_sample(
            root,
            sample_id,
            np.ones(SHAPE, np.uint8),
            image_path=photo,
            human_ids=np.ones(SHAPE, np.uint8),
            writer_tool="review",
        )
    split = root / "Training"
    (split / "Images" / "s.xmp").write_text("a sidecar")
    version = cihp.sample_version(root, "s")
    with pytest.raises(cihp.SampleChangedError):
        cihp.remove_sample(root, "s", expected_version="not-its-version")
    removed = cihp.remove_sample(root, "s", expected_version=version)
    assert sorted(_relative(p, split) for p in removed) == sorted(
        [
            "Images/s.jpg",
            "Category_ids/s.png",
            "Categories/s.png",
            "Human_ids/s.png",
            "Humans/s.png",
            "Instance_ids/s.png",
            "Instance_ids/s.txt",
            "Instances/s.png",
            f"{cihp.WRITERS_FOLDER}/s.json",
        ]
    )
    assert cihp.list_samples(root, "Training") == ["a"] and cihp.sample_version(root, "s") is None
    assert (split / "Images" / "s.xmp").read_text() == "a sidecar"
    assert cihp.read_sample(root, "a").category_ids.max() == 1
    assert cihp.remove_sample(root, "s", expected_version=None) == []
    with pytest.raises(cihp.DatasetError, match="not listed"):
        cihp.remove_sample(root, "s")
    cihp.write_sample(
        root, "s", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8), expected_version=None
    )  # undo the undo
    assert cihp.list_samples(root, "Training") == ["a", "s"]


def _relative(path: Path, split: Path) -> str:
    return path.relative_to(split).as_posix()


# Remove sample s (the review queue's "Undo export").
REMOVER = """
import sys
from napari_deeplab import cihp, files
cihp.remove_sample(sys.argv[1], "s")
"""


def test_a_crash_at_any_step_of_a_removal_leaves_the_sample_whole_or_gone(scripts, tmp_path):
    photo = _photo(tmp_path / "p.jpg", 1)
    keep = _photo(tmp_path / "keep.png", 3)
    versions = {1: photo.read_bytes(), 3: keep.read_bytes()}
    base = tmp_path / "base"
    _write_filled(base, "keep", 3, keep)
    _write_filled(base, "s", 1, photo, writer_tool="review")
    steps = []
    for number in range(1, 100):
        root = tmp_path / f"crash-{number}"
        shutil.copytree(base, root)
        step = _run_crashing_at(scripts, number, REMOVER, root)
        if step is None:
            break
        steps.append(step)
        listed = _assert_consistent(root, versions)  # s whole, if still listed
        assert "keep" in listed
        if "s" not in listed:
            assert not list((root / "Training").rglob("s.*")), "a file of s survived"
        assert not _temporaries(root)
        if "s" in listed:
            cihp.remove_sample(root, "s")
        assert cihp.list_samples(root, "Training") == ["keep"]
    else:
        raise AssertionError("the remover never completed")
    assert {
        "locked",
        "journal written",
        "removed Images/s.jpg",
        "removed Category_ids/s.png",
        f"removed {cihp.WRITERS_FOLDER}/s.json",
        "id list written",
        "journal removed",
    } <= set(steps)
