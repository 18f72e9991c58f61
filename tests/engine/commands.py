"""Command lines the engine tests run: ``predict`` and a quick ``finetune`` of the command line
(:func:`napari_deeplab.cli.main`'s arguments), and a Python script run as user ``nobody``."""

import subprocess
import sys
from collections.abc import Sequence


def predict_command(
    *inputs: object, model: object, out: object, options: Sequence[str] = ()
) -> list[str]:
    """``predict INPUTS --model MODEL --out OUT OPTIONS``."""
    return ["predict", *map(str, inputs), "--model", str(model), "--out", str(out), *options]


def quick_finetune_command(dataset: object, model: object, out: object) -> list[str]:
    """``finetune DATASET --model MODEL --out OUT``, one epoch at 64 px."""
    return [
        "finetune",
        str(dataset),
        "--model",
        str(model),
        "--out",
        str(out),
        "--image-size",
        "64",
        "--epochs",
        "1",
    ]


def run_as_nobody(script: str, *args: object, **options) -> subprocess.CompletedProcess:
    """``python -c script args`` as user ``nobody`` (``setpriv``, root only), its output captured
    as text; ``options`` go to :func:`subprocess.run` (``timeout``, ``cwd``, ``env``)."""
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        **options,
    )
