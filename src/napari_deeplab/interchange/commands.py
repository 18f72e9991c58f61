"""``napari-deeplab export`` and ``import``: the CLI of :mod:`napari_deeplab.interchange`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

FORMATS = ("coco",)


def add_parsers(commands) -> None:
    """Add ``export`` and ``import`` to the CLI's subparsers."""
    export = commands.add_parser(
        "export",
        help="write a dataset split in another tool's format (COCO)",
        description="Write a split as COCO instance segmentation: OUT/annotations/"
        "instances_<split>.json (RLE masks, one annotation per part instance) and the photos "
        "copied into OUT/images/.",
    )
    export.add_argument("dataset", metavar="DATASET", help="dataset root")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--split", default="Training", help="split (default Training)")
    imports = commands.add_parser(
        "import",
        help="write another tool's annotations (COCO) into a dataset, sample by sample",
        description="Each image of SRC becomes one sample of DATASET/<split>, all or nothing; "
        "a bad record is skipped with one line. Categories are matched by CIHP name unless "
        "--map FILE (JSON: category name or id -> CIHP class id 0..19) says otherwise; an "
        "unmapped category refuses the import. Exit 0: all written, 1: some skipped, 2: none.",
    )
    imports.add_argument("source", metavar="SRC", help="COCO annotations JSON")
    imports.add_argument("--format", choices=FORMATS, required=True)
    imports.add_argument("--out", required=True, metavar="DATASET")
    imports.add_argument("--split", default="Training", help="split (default Training)")
    imports.add_argument("--map", default=None, metavar="FILE", help="category mapping (JSON)")
    imports.add_argument("--images", default=None, metavar="DIR", help="folder of the photos")


def run_export(args) -> int:
    from . import coco

    path = coco.export_coco(args.dataset, args.out, args.split)
    print(f"napari-deeplab: wrote {path}")
    return 0


def run_import(args) -> int:
    from . import coco

    try:
        mapping = json.loads(Path(args.map).read_text()) if args.map else None
        counts = coco.import_coco(
            args.source,
            args.out,
            split=args.split,
            mapping=mapping,
            images_dir=args.images,
            report=lambda line: print(f"napari-deeplab: {line}", file=sys.stderr),
        )
    except ValueError as error:
        print(f"napari-deeplab: error: {error}", file=sys.stderr)
        return 2
    print(f"napari-deeplab: {counts['written']} samples written, {counts['failed']} skipped")
    if counts["failed"]:
        return 2 if not counts["written"] else 1
    return 0
