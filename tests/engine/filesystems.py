"""Real small or read-only filesystems for the tests of full disks and unwritable folders."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "1m", read_only: bool = False):
    """Mount a tmpfs of ``size`` at ``folder`` (created) for the block, read-only if asked;
    skips the test where mounting is not permitted (not root, no ``mount``)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if os.name == "posix"
        else None
    )
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() if mounted else os.name})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def dead_pid() -> int:
    """The id of a process that has ended (for temporaries whose writer is gone)."""
    return int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
