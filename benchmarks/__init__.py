"""The benchmarks of docs/benchmarks.md, run from the repository root as modules
(``.venv/bin/python -m benchmarks.throughput ...``), so that they import the tests' model
builders (``tests.seed_reference``) and each other as packages."""

import os
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else the machine type: the figures' context."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
