"""Datasets as they are met in the wild (issue 23): id lists saved by Windows Notepad, sidecar
files beside the photos, planted journals and links, a linked lock file, writers in containers
that share a host name, read-only media, foreign loaders. Real files, links, processes and
mounts; nothing is mocked."""

import json
import os
import shutil
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_deeplab import cihp, files
from tests.engine.commands import run_as_nobody
from tests.engine.test_commit import (
    SHAPE,
    WRITER,
    ForkedScripts,
    _env,
    _photo,
    _temporaries,
    _write_filled,
)


@pytest.fixture(scope="module")
def scripts():
    """One :class:`~tests.engine.test_commit.ForkedScripts` for the module."""
    with ForkedScripts() as forked:
        yield forked


def _victim(tmp_path: Path) -> dict[Path, bytes]:
    """Someone's private folder outside the dataset, and what must stay in it."""
    victim = tmp_path / "victim" / ".ssh"
    victim.mkdir(parents=True)
    files = {victim / "id_rsa.png": b"PRIVATE KEY", victim / "authorized_keys": b"ssh-ed25519 AAAA"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def _assert_untouched(files: dict[Path, bytes]) -> None:
    folder = next(iter(files)).parent
    assert sorted(folder.iterdir()) == sorted(files), (
        "files appeared in or vanished from the victim"
    )
    for path, data in files.items():
        assert path.read_bytes() == data, f"{path} was changed"


# --- 1. id lists: byte-order mark, line ends, one normal form, case twins -----------------------


@pytest.mark.one_backend
def test_an_id_list_saved_by_notepad_still_protects_its_samples(tmp_path):
    cihp.write_sample(
        tmp_path, "0002190", np.full(SHAPE, 5, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )  # a hand correction
    cihp.write_sample(
        tmp_path, "0005008", np.full(SHAPE, 5, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )
    id_list = tmp_path / "Training" / "train_id.txt"
    id_list.write_bytes(b"\xef\xbb\xbf0002190\r\n0005008\r\n")  # Notepad: BOM and CRLF
    assert cihp.list_samples(tmp_path, "Training") == ["0002190", "0005008"]
    with pytest.raises(cihp.SampleExistsError):  # what a plain predict meets at commit time
        cihp.write_sample(
            tmp_path, "0002190", np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
        )
    from napari_deeplab.prelabel import listed_outcomes

    skipped = listed_outcomes([(Path("0002190.jpg"), "0002190")], tmp_path, "Training", False)
    assert skipped["0002190"].status == "skipped"
    assert np.asarray(Image.open(tmp_path / "Training" / "Category_ids" / "0002190.png")).max() == 5
    cihp.write_sample(tmp_path, "new", np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    assert id_list.read_bytes() == b"0002190\n0005008\nnew\n"  # written without BOM, with \n


def test_old_mac_line_ends_and_decomposed_ids_are_one_sample(tmp_path):
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    cihp.write_sample(
        tmp_path, nfd, np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )  # macOS
    assert cihp.list_samples(tmp_path, "Training") == [nfc]
    assert (tmp_path / "Training" / "Category_ids" / f"{nfc}.png").exists()
    (tmp_path / "Training" / "train_id.txt").write_bytes(f"a\r{nfd}\rb".encode())
    assert cihp.list_samples(tmp_path, "Training") == ["a", nfc, "b"]
    with pytest.raises(cihp.SampleExistsError):
        cihp.write_sample(tmp_path, nfc, np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    assert (
        cihp.sample_exists(tmp_path, nfd)
        and cihp.read_sample(tmp_path, nfd).category_ids.max() == 1
    )


@pytest.mark.one_backend
def test_an_id_differing_only_in_case_from_a_listed_one_is_refused(tmp_path):
    cihp.write_sample(tmp_path, "Photo1", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    with pytest.raises(
        cihp.DatasetError, match="differs only in case from the listed sample Photo1"
    ):
        cihp.write_sample(
            tmp_path, "photo1", np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
        )
    staged = [
        cihp.stage_sample(tmp_path, i, np.zeros(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
        for i in ("ab", "AB")
    ]
    results = cihp.commit_samples(staged)
    assert results[0] is None and "differ only in case" in str(results[1])
    assert cihp.list_samples(tmp_path, "Training") == ["Photo1", "ab"]
    assert not _temporaries(tmp_path)
    from napari_deeplab.prelabel import InputError, check_unique_ids

    with pytest.raises(InputError, match="only in case"):
        check_unique_ids([Path("x/IMG_1.jpg"), Path("y/img_1.png")])


# --- 2. only the files the protocol knows are removed ---------------------------------------------


def test_an_overwrite_keeps_sidecar_files_of_the_photo(tmp_path):
    old, new = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    cihp.write_sample(tmp_path / "d", "p00000", np.ones(SHAPE, np.uint8), image_path=old)
    images = tmp_path / "d" / "Training" / "Images"
    sidecars = {images / f"p00000.{ext}": f"{ext} notes".encode() for ext in ("xmp", "txt", "json")}
    for path, data in sidecars.items():
        path.write_bytes(data)
    cihp.write_sample(
        tmp_path / "d", "p00000", np.full(SHAPE, 2, np.uint8), image_path=new, overwrite=True
    )
    assert not (images / "p00000.jpg").exists() and (images / "p00000.png").exists()
    for path, data in sidecars.items():
        assert path.read_bytes() == data
    removed = cihp.remove_sample(tmp_path / "d", "p00000")
    assert sorted(p.name for p in removed if p.parent == images) == ["p00000.png"]
    for path, data in sidecars.items():
        assert path.read_bytes() == data


def test_photos_are_found_by_their_suffix_in_either_case_and_others_by_a_scan(tmp_path):
    split = tmp_path / "Training"
    (split / "Images").mkdir(parents=True)
    _photo(split / "Images" / "a.JPG", 1)
    _photo(split / "Images" / "b.gif", 1)  # a foreign dataset's photo of another suffix
    (split / "Images" / "a.xmp").write_text("sidecar")
    assert cihp.find_image(tmp_path, "a").name == "a.JPG"
    assert cihp.find_image(tmp_path, "b").name == "b.gif"
    with pytest.raises(FileNotFoundError):
        cihp.find_image(tmp_path, "c")


# --- 3. links and planted journals ----------------------------------------------------------------


def _write_x(root: Path, value: int, **options) -> None:
    """Write sample x of ``root``: mask ``value``, person 1 everywhere, a black photo;
    ``options`` go to :func:`cihp.write_sample`."""
    cihp.write_sample(
        root,
        "x",
        np.full(SHAPE, value, np.uint8),
        human_ids=np.ones(SHAPE, np.uint8),
        image=np.zeros(SHAPE, np.uint8),
        **options,
    )


@pytest.mark.parametrize("folder", ["Humans", "Human_ids", "Images", ".napari-deeplab"])
def test_a_sample_folder_replaced_by_a_link_is_refused(tmp_path, folder):
    files = _victim(tmp_path)
    root = tmp_path / "shared"
    _write_x(root, 1, writer_tool="review")
    shutil.rmtree(root / "Training" / folder)
    (root / "Training" / folder).symlink_to(next(iter(files)).parent)
    for action in (
        lambda: _write_x(root, 2, overwrite=True),
        lambda: cihp.list_samples(root, "Training"),
        lambda: cihp.remove_sample(root, "x"),
    ):
        with pytest.raises(
            cihp.DatasetError, match=f"{root / 'Training' / folder} is a symbolic link"
        ):
            action()
    _assert_untouched(files)


def test_a_split_folder_that_is_a_link_is_refused(tmp_path):
    files = _victim(tmp_path)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "Training").symlink_to(next(iter(files)).parent)
    with pytest.raises(cihp.DatasetError, match="is a symbolic link"):
        cihp.write_sample(
            tmp_path / "shared", "x", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
        )
    _assert_untouched(files)


def _plant(root: Path, journal: dict) -> Path:
    path = root / "Training" / cihp.JOURNAL_NAME
    path.write_text(json.dumps(journal))
    return path


def test_a_planted_journal_with_linked_folders_is_not_rolled_forward(tmp_path):
    files = _victim(tmp_path)
    victim = next(iter(files)).parent
    root = tmp_path / "shared"
    _write_x(root, 1)
    split = root / "Training"
    before = {p: p.read_bytes() for p in split.rglob("*") if p.is_file() and not p.is_symlink()}
    # The attack of the issue: the people folders are links to the victim's folder and the
    # journal "removes" and "renames" there.
    for folder in ("Humans", "Human_ids"):
        shutil.rmtree(split / folder)
        (split / folder).symlink_to(victim)
    journal = _plant(
        root,
        {
            "id_list": "train_id.txt",
            "samples": [
                {
                    "sample_id": "id_rsa",
                    "removals": ["Humans/id_rsa.png"],
                    "renames": [
                        ["Human_ids/.authorized_keys.h0-1-0123abcd.tmp", "Images/id_rsa.png"]
                    ],
                }
            ],
        },
    )
    for action in (
        lambda: cihp.list_samples(root, "Training"),
        lambda: cihp.recover(root),
        lambda: cihp.write_sample(root, "z", np.ones(SHAPE, np.uint8)),
    ):
        with pytest.raises(cihp.DatasetError, match="Human_ids is a symbolic link"):
            action()
    assert journal.exists()
    _assert_untouched(files)
    # Without the links, a journal naming files that are not its samples' is refused too.
    for folder in ("Humans", "Human_ids"):
        (split / folder).unlink()
    for bad in (
        {"sample_id": "x", "removals": ["Images/keep.jpg"], "renames": []},
        {"sample_id": "x", "removals": ["Category_ids/y.png"], "renames": []},
        {
            "sample_id": "x",
            "removals": [],
            "renames": [["Images/.y.png.h0-1-0123abcd.tmp.png", "Images/x.png"]],
        },
        {
            "sample_id": "x",
            "removals": [],
            "renames": [["Human_ids/.x.png.h0-1-0123abcd.tmp.png", "Images/x.png"]],
        },
        {"sample_id": "x", "removals": ["../victim/.ssh/id_rsa.png"], "renames": []},
    ):
        journal = _plant(root, {"id_list": "train_id.txt", "samples": [bad]})
        with pytest.raises(cihp.DatasetError, match="was not applied"):
            cihp.write_sample(root, "z", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    journal.unlink()
    after = {p: p.read_bytes() for p in split.rglob("*") if p.is_file() and not p.is_symlink()}
    assert {p: d for p, d in after.items() if p.parent.name not in ("Humans", "Human_ids")} == {
        p: d for p, d in before.items() if p.parent.name not in ("Humans", "Human_ids")
    }
    _assert_untouched(files)


def test_a_planted_temporary_that_is_a_link_is_not_renamed_into_the_dataset(tmp_path):
    files = _victim(tmp_path)
    root = tmp_path / "shared"
    cihp.write_sample(root, "x", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    images = root / "Training" / "Images"
    (images / ".x.png.h0-1-0123abcd.tmp.png").symlink_to(next(iter(files)))
    journal = _plant(
        root,
        {
            "id_list": "train_id.txt",
            "samples": [
                {
                    "sample_id": "x",
                    "removals": [],
                    "renames": [["Images/.x.png.h0-1-0123abcd.tmp.png", "Images/x.png"]],
                }
            ],
        },
    )
    with pytest.raises(cihp.DatasetError, match="not a regular file"):
        cihp.read_sample(root, "x")
    assert not (images / "x.png").is_symlink() and journal.exists()
    _assert_untouched(files)


# --- 4. the lock file ---------------------------------------------------------------------------


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    files = _victim(tmp_path)
    root = tmp_path / "shared"
    cihp.write_sample(root, "x", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    lock = root / "Training" / cihp.LOCK_NAME
    lock.unlink()
    lock.symlink_to(tmp_path / "victim" / ".ssh" / "authorized_keys")
    for action in (
        lambda: cihp.list_samples(root, "Training"),
        lambda: cihp.read_sample(root, "x"),
        lambda: cihp.write_sample(
            root, "y", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
        ),
    ):
        with pytest.raises(
            cihp.DatasetError,
            match=f"{lock}: the dataset's lock file is a symbolic link.*remove it",
        ):
            action()
    _assert_untouched(files)
    lock.unlink()
    lock.mkdir()  # not a regular file either
    with pytest.raises(cihp.DatasetError, match="not a regular file"):
        cihp.list_samples(root, "Training")
    lock.rmdir()
    cihp.write_sample(
        root, "y", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8)
    )  # made again
    assert lock.is_file() and not lock.is_symlink()


def test_the_lock_file_is_never_truncated(tmp_path):
    cihp.write_sample(tmp_path, "x", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    lock = tmp_path / "Training" / cihp.LOCK_NAME
    lock.write_bytes(b"kept")
    cihp.write_sample(tmp_path, "y", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    cihp.list_samples(tmp_path, "Training")
    assert lock.read_bytes() == b"kept"


# --- 5. writers in containers -----------------------------------------------------------------

# Stage a sample, say so, wait for a line on stdin, then commit it.
STAGE_AND_WAIT = f"""
import sys
import numpy as np
from napari_deeplab import cihp, files
root, sample_id = sys.argv[1:3]
staged = cihp.stage_sample(root, sample_id, np.ones({SHAPE}, np.uint8),
                           image=np.zeros({SHAPE}, np.uint8))
print("staged", files.HOST_TAG, flush=True)
sys.stdin.readline()
print(cihp.commit_samples([staged])[0], flush=True)
"""

SWEEP = """
import sys
from napari_deeplab import cihp, files
cihp.recover(sys.argv[1], "Training")
print(files.HOST_TAG, flush=True)
"""


def _in_container(hostname: str) -> list[str]:
    """A command prefix running in new UTS and pid namespaces (as a pod) named ``hostname``."""
    return [
        "unshare",
        "--uts",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        'hostname "$0" && exec "$@"',
        hostname,
    ]


def _namespaces_available() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return (
            subprocess.run(
                _in_container("probe") + ["true"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _namespaces_available(), reason="needs unshare of uts and pid namespaces")
@pytest.mark.parametrize(
    "hostnames",
    [
        ("prelabel-workers-5f7c9d8b4-aaaaa", "prelabel-workers-5f7c9d8b4-bbbbb"),  # a shared prefix
        (socket.gethostname(), socket.gethostname()),  # one host name, two pid namespaces
    ],
    ids=["pods-sharing-a-prefix", "one-hostname-two-pid-namespaces"],
)
def test_a_writer_in_another_container_keeps_its_live_temporaries(tmp_path, hostnames):
    root = tmp_path / "shared"
    cihp.write_sample(root, "first", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    writer = subprocess.Popen(
        _in_container(hostnames[0]) + [sys.executable, "-c", STAGE_AND_WAIT, str(root), "live"],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = writer.stdout.readline()
        assert line.startswith("staged"), writer.stderr.read()
        staged = _temporaries(root)
        assert staged
        # the pid of the writer in its namespace (1 or 2) is dead or someone else here
        sweeper = subprocess.run(
            _in_container(hostnames[1]) + [sys.executable, "-c", SWEEP, str(root)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sweeper.returncode == 0, sweeper.stderr
        assert sweeper.stdout.strip() != line.split()[1]  # two writer hosts
        cihp.recover(root, "Training")  # and this process, in the machine's own namespaces
        assert _temporaries(root) == staged, "a live writer's temporaries were swept"
        out, err = writer.communicate("\n", timeout=120)
    finally:
        writer.kill()
    assert out.strip() == "None", err
    assert cihp.list_samples(root, "Training") == ["first", "live"]
    assert not _temporaries(root)


def test_a_dead_writer_of_this_host_is_swept_at_once(tmp_path):
    root = tmp_path / "d"
    cihp.write_sample(root, "first", np.ones(SHAPE, np.uint8), image=np.zeros(SHAPE, np.uint8))
    writer = subprocess.Popen(
        [sys.executable, "-c", STAGE_AND_WAIT, str(root), "dead"],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().startswith("staged")
    writer.kill()
    writer.wait(timeout=60)
    assert _temporaries(root)
    cihp.recover(root, "Training")
    assert not _temporaries(root)


# --- 7. foreign loaders and read-only media ---------------------------------------------------


def _seed_pairs(split: Path) -> tuple[list[str], list[str]]:
    """What the seed's loader pairs: sorted globs of ``Images/*`` and ``Category_ids/*``."""
    from glob import glob  # as the seed: hidden files (temporaries) are not matched

    return (
        [Path(p).stem for p in sorted(glob(str(split / "Images" / "*")))],
        [Path(p).stem for p in sorted(glob(str(split / "Category_ids" / "*")))],
    )


def test_a_foreign_loader_never_pairs_a_photo_with_another_samples_mask(scripts, tmp_path):
    """At every crash point of a commit (a new sample, and an overwrite that changes the
    photo's suffix), the seed's pairing of two sorted globs either has lists of unequal length
    (``from_tensor_slices`` refuses) or pairs each photo with its own mask."""
    old_photo, new_photo = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    empty = tmp_path / "base-new"
    for sample_id in ("a", "t"):  # "s" sorts between them
        cihp.write_sample(empty, sample_id, np.full(SHAPE, 3, np.uint8), image_path=old_photo)
    with_old = tmp_path / "base-old"
    shutil.copytree(empty, with_old)
    cihp.write_sample(with_old, "s", np.full(SHAPE, 1, np.uint8), image_path=old_photo)
    unequal = 0
    for base in (empty, with_old):
        for number in range(1, 100):
            root = tmp_path / f"crash-{base.name}-{number}"
            shutil.copytree(base, root)
            run = scripts.run(WRITER, root, "s", 2, new_photo, **{files.CRASH_ENV: str(number)})
            photos, masks = _seed_pairs(root / "Training")  # before any reader rolls forward
            if len(photos) == len(masks):
                assert photos == masks, f"{run.stderr.strip()}: {photos} paired with {masks}"
            else:
                unequal += 1
            shutil.rmtree(root)
            if run.returncode == 0:
                break
    assert unequal <= 2  # one step of each commit: between the mask's and the photo's rename


def _crashed_after_journal(tmp_path: Path) -> tuple[Path, bytes]:
    """A dataset whose overwrite of ``s`` (.jpg -> .png, mask 1 -> 2) stopped right after its
    journal was written, and the new photo's bytes."""
    old_photo, new_photo = _photo(tmp_path / "old.jpg", 1), _photo(tmp_path / "new.png", 2)
    root = tmp_path / "media"
    _write_filled(root, "s", 1, old_photo)
    cihp.write_sample(root, "keep", np.full(SHAPE, 3, np.uint8), image_path=old_photo)
    run = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), "s", "2", str(new_photo), "review"],
        env=_env(**{files.CRASH_ENV: "renamed Category_ids/s.png"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == files.CRASH_EXIT_CODE, run.stderr
    assert (root / "Training" / cihp.JOURNAL_NAME).exists()
    return root, new_photo.read_bytes()


# Read the dataset (argv[1]) and print what was read, as JSON.
READER = """
import json, sys
from napari_deeplab import cihp, files
root = sys.argv[1]
listed = cihp.list_samples(root, "Training")
s = cihp.read_sample(root, "s")
print(json.dumps({"listed": listed, "mask": int(s.category_ids.max()),
                  "people": int(s.human_ids.max()), "photo": s.image_path.read_bytes().hex(),
                  "found": cihp.find_image(root, "s").read_bytes().hex(),
                  "version": cihp.sample_version(root, "s"),
                  "writer": (cihp.sample_writer(root, "s") or {}).get("tool")}))
"""


def _read_only_bind_available() -> bool:
    if not shutil.which("unshare") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    run = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount --bind -o ro / /mnt"],
        capture_output=True,
        timeout=30,
    )
    return run.returncode == 0


@pytest.mark.skipif(not _read_only_bind_available(), reason="needs a private read-only bind mount")
def test_read_only_media_with_a_pending_journal_reads_as_its_last_complete_state(tmp_path):
    root, new_photo = _crashed_after_journal(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    view = tmp_path / "view"
    view.mkdir()
    # The reader sees the dataset through a read-only bind mount in its own mount namespace:
    # every write it tried would fail with EROFS, root or not.
    script = (
        'mount --bind -o ro "$0" "$1" && touch "$1/probe" 2>/dev/null && exit 9; '
        'exec "$2" -c "$3" "$1"'
    )
    run = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, str(root), str(view), sys.executable, READER],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["listed"] == ["keep", "s"]
    assert (seen["mask"], seen["people"]) == (2, 2)  # the new version, read from temporaries
    assert bytes.fromhex(seen["photo"]) == new_photo == bytes.fromhex(seen["found"])
    assert seen["version"] and seen["writer"] == "review"
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing written
    cihp.list_samples(root, "Training")  # writable again: rolled forward for real
    assert cihp.read_sample(root, "s").image_path.read_bytes() == new_photo
    assert not (root / "Training" / cihp.JOURNAL_NAME).exists()


@pytest.mark.one_backend
def test_a_reader_without_write_permission_reads_the_last_complete_state(tmp_path):
    """The same without a mount: the reader runs as ``nobody`` on a folder it may not write."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the reader as another user")
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="napari-deeplab-ro-"))  # pytest's folders are 0700
    try:
        _read_as_nobody(shared)
    finally:
        shutil.rmtree(shared)


def _read_as_nobody(tmp_path: Path) -> None:
    root, new_photo = _crashed_after_journal(tmp_path)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by all, writable by root only
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    env = _env(HOME=str(tmp_path))
    run = run_as_nobody(READER, root, env=env, timeout=120)
    if "Permission denied" in run.stderr and "napari_deeplab" not in run.stderr:
        pytest.skip("nobody cannot read the test folders here")
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["listed"] == ["keep", "s"] and (seen["mask"], seen["people"]) == (2, 2)
    assert bytes.fromhex(seen["photo"]) == new_photo
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
