"""Files written all or nothing: the one atomic writer (temporary, fsync, rename, fsync the
folder), the temporaries' names and the sweep of those a dead writer left, and the test-only
crash points every writer passes."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

CRASH_ENV = "NAPARI_DEEPLAB_CRASH_AT"
"""Test-only: ``<n>`` or a step name makes the process exit (``os._exit``) at that commit step."""
CRASH_EXIT_CODE = 86

STALE_FOREIGN_S = 3600.0
"""Temporaries of another writer host are removed once this old (their writer cannot be asked)."""
STALE_ANY_S = 24 * 3600.0
"""Temporaries of any writer are removed once this old (a recycled process id)."""


def host_tag() -> str:
    """Who "this host" is for the sweep of dead writers' temporaries: a hash of the full host
    name, the pid namespace and the boot, so that two containers whose host names share a
    prefix, or that share a host name but not a pid namespace (where a pid means another
    process), never take each other's live writers for dead local processes."""
    parts = [socket.gethostname()]
    for read in (
        lambda: os.readlink("/proc/self/ns/pid"),
        lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    ):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return "h" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:15]


HOST_TAG = host_tag()
TEMPORARY_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}"
    r"\.tmp(\.[^./]*)?$"
)
_steps = itertools.count(1)


def checkpoint(step: str) -> None:
    """A commit step: the test-only crash hook (:data:`CRASH_ENV`) may stop the process here."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    number = next(_steps)
    if wanted in (step, str(number)):
        sys.stderr.write(f"napari-deeplab: test crash at commit step {number} ({step})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` naming this writer host (:func:`host_tag`) and process,
    ending in ``path``'s suffix (``model.save`` needs ``.keras``). At most 45 characters longer
    than ``path``'s name."""
    nonce = uuid.uuid4().hex[:8]
    return path.with_name(f".{path.name}.{HOST_TAG}-{os.getpid()}-{nonce}.tmp{path.suffix}")


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Replace ``path`` in one step: ``write(temporary path)``, fsync, rename, fsync the folder.

    A failure (or a kill) leaves ``path`` as it was; a killed writer's temporary is removed
    by :func:`remove_stale_temporaries`. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = stage(path, write)
    checkpoint(f"staged {path.name}")
    try:
        os.replace(staged, path)
    except BaseException:
        unlink_quietly(staged)
        raise
    fsync_folder(path.parent)
    return path


def stage(path: Path, write: Callable[[Path], object]) -> Path:
    staged = temporary_path(path)
    try:
        write(staged)
        fsync_file(staged)
    except BaseException:
        unlink_quietly(staged)
        raise
    return staged


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries (of ``name`` only, if given) in ``folder`` whose writer is gone:
    a dead process of this writer host (same full host name, pid namespace and boot, see
    :func:`host_tag`), or older than an hour for another (a day for anyone). A live writer's
    temporaries are left alone. Returns what was removed."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in os.scandir(folder):
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if age > STALE_ANY_S or (
            age > STALE_FOREIGN_S
            if match["host"] != HOST_TAG
            else not process_alive(int(match["pid"]))
        ):
            unlink_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host (and pid namespace) may still run; always True on
    Windows, where ``os.kill`` would end it (there only the age of a file tells)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: Path) -> None:
    """Make renames in ``path`` durable (POSIX; Windows has no folder fsync)."""
    if os.name != "nt":
        fsync_file(path)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
