"""The ``napari-deeplab`` command: ``predict``, ``scores``, ``report``, ``evaluate``,
``audit``, ``finetune`` and ``convert``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130
"""Ctrl+C, as shells report a process ended by SIGINT (128 + 2)."""

DUPLICATES_SHOWN = 5
"""Ids a note about an id list that names some twice shows before "...": enough to find them."""


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter (oneDNN, CUDA probing) kept off the terminal.

    TensorFlow >= 2.20 prints it through absl before logging is configured, so no environment
    variable silences it; stderr is pointed at /dev/null for the import alone. Under another
    Keras backend (``KERAS_BACKEND=jax``) TensorFlow is not imported. Without TensorFlow under
    the default backend: one line saying what to install, and exit.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()
    except ImportError:
        missing = True
    else:
        missing = False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    if missing:
        print(
            "napari-deeplab: error: TensorFlow is not installed (Keras's default backend): "
            "pip install tensorflow, or set KERAS_BACKEND=jax with JAX installed "
            "(pip install 'napari-deeplab[jax]') to run .keras models",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The command line. Its choices come from the engine (:data:`~napari_deeplab.PRECISIONS`,
    the splits of :data:`~napari_deeplab.cihp.SPLIT_ID_FILES`, the defaults of
    :class:`~napari_deeplab.training.FinetuneSettings`), none of which loads Keras, so that
    ``--help`` and a mistyped option answer at once."""
    from . import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="napari-deeplab",
        description="Pre-label human body parts (CIHP, 20 classes) with DeepLabV3+.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = (
        f"model: a Hugging Face hub id (default {DEFAULT_MODEL}, cached after the "
        "first download), a SavedModel folder in the seed's format, or a .keras file"
    )

    _add_predict(commands, model_help)
    _add_scores(commands)
    _add_report(commands)
    _add_finetune(commands, model_help)
    _add_evaluate(commands, model_help)
    _add_audit(commands, model_help)
    _add_convert(commands, model_help)
    _add_interchange(commands)
    return parser


def _add_predict(commands, model_help: str) -> None:
    """``predict``: photos -> a CIHP dataset folder."""
    from .cihp import SPLIT_ID_FILES
    from .training import TRAINING_SPLIT

    predict = commands.add_parser(
        "predict",
        help="pre-label photos into a CIHP dataset folder",
        description="Segment each photo at full resolution and write it into OUT in the CIHP "
        "layout: <split>/Images (the photo as is), Category_ids, Categories, and "
        "the split's id list. Ids are the file stems.",
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="photo files, folders of photos, or glob patterns ('photos/*.jpg')",
    )
    predict.add_argument("--out", required=True, metavar="DIR", help="dataset root to write into")
    predict.add_argument("--model", metavar="PATH", default=None, help=model_help)
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        metavar="N",
        help="photos per model call (default 4)",
    )
    _add_precision(predict, "(faster where the hardware has it)")
    predict.add_argument(
        "--split",
        default=TRAINING_SPLIT,
        choices=tuple(SPLIT_ID_FILES),
        help=f"split folder to write (default {TRAINING_SPLIT})",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace samples that already exist (default: keep them)",
    )
    predict.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="parallel workers reading, preparing and writing photos (default: "
        "the machine's cores; with --engine ray, the number of model actors)",
    )
    predict.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): this process; ray: a Ray cluster (pip install "
        "'napari-deeplab[ray]'), see docs/scale.md",
    )
    predict.add_argument(
        "--address",
        default=None,
        metavar="auto|HOST:PORT",
        help="with --engine ray: the cluster to join (default: start a local one)",
    )
    predict.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="with --engine ray: GPUs per model actor (default 0: CPU)",
    )
    _add_tta(predict)
    predict.add_argument(
        "--scores",
        action="store_true",
        help="also record each photo's uncertainty score in the split's scores file "
        "(local engine; see `napari-deeplab scores`)",
    )
    predict.add_argument(
        "--people",
        action="store_true",
        help="also propose each photo's people (as napari's Propose people) and write them "
        "as Human_ids and Humans (local engine)",
    )
    predict.add_argument(
        "--per-person",
        type=_positive_int,
        default=None,
        metavar="MIN_PIXELS",
        help="re-parse every proposed person of at least MIN_PIXELS pixels on a crop around "
        "them, at the model's full input size (local engine, one model thread; see "
        "docs/workflow.md)",
    )


def _add_interchange(commands) -> None:
    """``export`` and ``import`` (other tools' formats): :mod:`.interchange.commands`."""
    from .interchange.commands import add_parsers

    add_parsers(commands)


def _add_scores(commands) -> None:
    """``scores``: the split's photos, least confident first."""
    from .training import TRAINING_SPLIT

    scores = commands.add_parser(
        "scores",
        help="rank a split's photos by how unsure the model was (predict --scores)",
        description="Print the split's scores file, least confident photo first: the score "
        "(mean of 1 - confidence), the fraction of pixels under the confidence threshold, the "
        "model, and the largest low-confidence regions.",
    )
    scores.add_argument("root", metavar="ROOT", help="dataset root (or a split folder)")
    scores.add_argument("--split", default=TRAINING_SPLIT, help=f"split (default {TRAINING_SPLIT})")
    scores.add_argument("--top", type=_positive_int, default=None, metavar="K", help="first K only")
    scores.add_argument("--json", action="store_true", help="print the ranked entries as JSON")


def _add_report(commands) -> None:
    """``report``: the effort log per model and over time (:mod:`napari_deeplab.report`)."""
    report = commands.add_parser(
        "report",
        help="what the corrections cost, per model and over time (the review queue's effort log)",
        description="Summarise the dataset's effort log (.napari-deeplab/effort.jsonl, one line "
        "per Accept in the review queue): per model that made the pre-labels, the photos, the "
        "mean fraction of pixels the annotator changed, the mean active time and editing "
        "actions; then the same per day (or per N accepts).",
    )
    report.add_argument("dataset", metavar="DATASET", help="dataset root (or a split folder)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument(
        "--plot", metavar="OUT.png", help="write the changed-pixel rate per accepted photo"
    )
    report.add_argument(
        "--every", type=_positive_int, metavar="N", help="over time per N accepts, not per day"
    )


def _add_finetune(commands, model_help: str) -> None:
    """``finetune``: its defaults are :class:`~napari_deeplab.training.FinetuneSettings`."""
    from .training import IMAGE_SIZE_MULTIPLE, TRAINING_SPLIT, VALIDATION_SPLIT, FinetuneSettings

    defaults = FinetuneSettings()
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a model on a CIHP-format folder",
        description="Train DeepLabV3+ on the corrected masks of a CIHP-format folder (ours or the "
        "official dataset), starting from any model --model accepts. Batch norm stays "
        "in inference mode; augmentation: random crop, horizontal flip with left/right "
        "classes swapped, colour jitter. After each epoch the mean IoU on the "
        "validation split (or a held-out fifth of the training samples) is measured "
        "and the best model so far is written to --out (atomically); Ctrl+C keeps it. "
        "Every sample is checked first; 255 in a mask means 'ignore'.",
    )
    finetune.add_argument("root", metavar="ROOT", help="dataset root (or a split folder)")
    finetune.add_argument("--model", metavar="SRC", default=None, help=model_help)
    finetune.add_argument("--out", required=True, metavar="OUT.keras", help="file to write")
    finetune.add_argument(
        "--split", default=TRAINING_SPLIT, help=f"training split (default {TRAINING_SPLIT})"
    )
    finetune.add_argument(
        "--val-split",
        default=VALIDATION_SPLIT,
        help=f"validation split (default {VALIDATION_SPLIT}; held out if absent)",
    )
    finetune.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    finetune.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    finetune.add_argument(
        "--image-size",
        type=_positive_int,
        default=defaults.image_size,
        help=f"square training size, a multiple of {IMAGE_SIZE_MULTIPLE} "
        f"(default {defaults.image_size}, as the seed)",
    )
    finetune.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    finetune.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT.keras, but only with a model better than "
        "both it (scored on the same validation) and the starting model "
        "(default: refuse an existing file)",
    )
    finetune.add_argument(
        "--replace-better",
        action="store_true",
        help="with --overwrite: replace OUT.keras by a model better than the "
        "starting one even if OUT.keras scores higher",
    )
    finetune.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        metavar="N",
        help="also score the validation split at full resolution every N epochs "
        "(default 0: once, at the end; every epoch is scored at the "
        "model's resolution to pick the best model)",
    )
    finetune.add_argument(
        "--devices",
        default=defaults.devices,
        metavar="all|N",
        help="train data-parallel on all or N local devices (JAX backend, "
        "keras.distribution; across machines when its environment is set)",
    )
    _add_precision(finetune, "mixed precision (weights stay float32)")


def _add_evaluate(commands, model_help: str) -> None:
    """``evaluate``: a model's IoU on a split."""
    from .training import VALIDATION_SPLIT

    evaluate = commands.add_parser(
        "evaluate",
        help="per-class IoU, mean IoU and pixel accuracy of a model on a split",
        description="Predict every sample of the split at full resolution and compare with its "
        "Category_ids masks.",
    )
    evaluate.add_argument("root", metavar="ROOT", help="dataset root (or a split folder)")
    evaluate.add_argument("--model", metavar="SRC", default=None, help=model_help)
    evaluate.add_argument(
        "--split", default=VALIDATION_SPLIT, help=f"split (default {VALIDATION_SPLIT})"
    )
    _add_precision(evaluate, "")
    _add_tta(evaluate)
    evaluate.add_argument(
        "--instances",
        action="store_true",
        help="also APr (part instances, as CIHP's evaluation computes it) and APp (people) "
        "over the samples with Human_ids, the model's people from Propose people",
    )
    evaluate.add_argument(
        "--against",
        metavar="REFERENCE",
        default=None,
        help="no model: score ROOT's masks against those of the dataset REFERENCE (same ids; "
        "its --split too) as the truth: mean IoU, and APr / APp where both have Human_ids",
    )
    evaluate.add_argument(
        "--json",
        action="store_true",
        help="print JSON with keys miou, miou_all_classes, pixel_accuracy, "
        "mean_class_accuracy, per_class (and with --instances or --against: samples, "
        "instances, samples_without_people)",
    )


def _add_audit(commands, model_help: str) -> None:
    """``audit``: accepted masks ranked by how strongly a confident model disagrees."""
    from .training import TRAINING_SPLIT

    audit = commands.add_parser(
        "audit",
        help="rank a split's masks by confident disagreement of a model (label noise)",
        description="Predict every sample of the split and list the regions where the model, "
        "confident, disagrees with the mask: a left/right swap, a missed part (the mask says "
        "background), an extra part (the model says background) or a wrong class; samples "
        "ranked by the total strength (area x confidence) of their regions.",
    )
    audit.add_argument("root", metavar="ROOT", help="dataset root (or a split folder)")
    audit.add_argument("--model", metavar="SRC", default=None, help=model_help)
    audit.add_argument("--split", default=TRAINING_SPLIT, help=f"split (default {TRAINING_SPLIT})")
    audit.add_argument("--top", type=_positive_int, default=None, metavar="K", help="first K only")
    audit.add_argument(
        "--min-confidence",
        type=float,
        default=0.8,
        metavar="P",
        help="only pixels where the model's top-class probability is at least P count (0.8)",
    )
    audit.add_argument(
        "--min-area", type=_positive_int, default=50, metavar="N", help="smallest region (50 px)"
    )
    _add_precision(audit, "")
    audit.add_argument("--json", action="store_true", help="print every sample and region as JSON")


def _add_convert(commands, model_help: str) -> None:
    """``convert``: any model source -> a ``.keras`` file."""
    convert = commands.add_parser(
        "convert",
        help="convert a model (e.g. the seed SavedModel) into a .keras file",
        description="Load any model that --model accepts and save it as a native Keras 3 "
        ".keras file that carries its class names and preprocessing.",
    )
    convert.add_argument("source", metavar="SRC", help=model_help)
    convert.add_argument("--out", required=True, metavar="FILE.keras", help="file to write")


def _add_precision(command: argparse.ArgumentParser, note: str) -> None:
    """``--precision``, one of :data:`~napari_deeplab.PRECISIONS` (the first the default)."""
    from . import PRECISIONS

    default, others = PRECISIONS[0], " or ".join(PRECISIONS[1:])
    command.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default,
        help=f"{default} (default) or {others}" + (f" {note}" if note else ""),
    )


def _add_tta(command: argparse.ArgumentParser) -> None:
    from .inference import TTA_CHOICES

    command.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="none",
        help="test-time augmentation: flip averages the logits with the mirrored photo's, "
        "left/right swapped back (about 2x the model's time; local engine; default none)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status. Ctrl+C at any moment, even while TensorFlow
    is still being imported, ends it with one line and :data:`EXIT_INTERRUPTED`."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(
            "napari-deeplab: interrupted before any work started; nothing was written",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":  # reads a log: no Keras
        from .report import run

        return run(args)
    _import_tensorflow_quietly()
    from .cihp import DatasetError
    from .model import ModelError
    from .prelabel import InputError
    from .training import SampleProblems

    try:
        command = {
            "predict": _predict,
            "scores": _scores,
            "finetune": _finetune,
            "evaluate": _evaluate,
            "audit": _audit,
            "convert": _convert,
            "export": _interchange,
            "import": _interchange,
        }[args.command]
        return command(args)
    except SampleProblems as error:
        for problem in error.problems:
            print(f"napari-deeplab: {problem}", file=sys.stderr)
        print(f"napari-deeplab: error: {error.summary}", file=sys.stderr)
        return EXIT_ERROR
    except (ModelError, InputError, DatasetError) as error:
        print(f"napari-deeplab: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # e.g. an output folder or id list this user cannot write or read
        where = f"{error.filename}: " if error.filename else ""
        print(
            f"napari-deeplab: error: {where}{error.strerror or error}; check that the path "
            "exists, is of the right kind and is readable and writable by this user",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "napari-deeplab: interrupted; the samples written so far are complete", file=sys.stderr
        )
        return EXIT_INTERRUPTED


def _interchange(args) -> int:
    from .interchange import commands

    return (commands.run_export if args.command == "export" else commands.run_import)(args)


def _scores(args) -> int:
    import json

    from . import cihp

    location = cihp.locate(args.root, split=args.split)
    entries = cihp.read_scores(location.root, location.split)
    order = cihp.ranked(entries)[: args.top]
    if args.json:
        print(json.dumps([{"id": key, **entries[key]} for key in order], indent=1))
        return EXIT_OK
    if not order:
        print(
            f"napari-deeplab: no scores in {cihp.scores_path(location.root, location.split)}; "
            "pre-label with `napari-deeplab predict --scores`",
            file=sys.stderr,
        )
        return EXIT_OK
    print(f"{'rank':>4}  {'id':<24} {'score':>7} {'low':>6}  model  (regions: class@box)")
    for rank, key in enumerate(order, 1):
        entry = entries[key]
        regions = ", ".join(
            f"{region.get('class_id')}@{region.get('top')},{region.get('left')}-"
            f"{region.get('bottom')},{region.get('right')}"
            for region in entry.get("regions", ())[:3]
        )
        print(
            f"{rank:>4}  {key:<24} {entry['score']:>7.4f} {entry.get('low_fraction', 0):>6.1%}  "
            f"{entry.get('model', '')}  ({regions})"
        )
    return EXIT_OK


def _predict(args) -> int:
    from tqdm import tqdm

    from .cihp import NUM_CLASSES
    from .model import load_model
    from .prelabel import check_unique_ids, expand_inputs, prelabel_files

    if args.engine == "ray":
        from .ray_engine import RayEngineError, expand_ray_inputs, prelabel_with_ray

        uris, problems = expand_ray_inputs(args.inputs)  # URIs too: s3://, gs://, ...
        paths: list[str] | list[Path] = uris
        engine_errors: tuple[type[Exception], ...] = (RayEngineError,)
    else:
        photos, problems = expand_inputs(args.inputs)
        paths = photos
        engine_errors = ()
    for problem in problems:
        print(f"napari-deeplab: {problem}", file=sys.stderr)
    if not paths:
        print("napari-deeplab: error: no photos to pre-label", file=sys.stderr)
        return EXIT_ERROR
    for option in ("scores", "people", "tta", "per_person"):
        if getattr(args, option) not in (False, None, "none") and args.engine == "ray":
            flag = option.replace("_", "-")
            print(f"napari-deeplab: error: --{flag} needs --engine local", file=sys.stderr)
            return EXIT_ERROR
    if args.engine == "ray":
        outcomes = prelabel_with_ray(
            uris,
            args.model,
            args.out,
            split=args.split,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            address=args.address,
            precision=args.precision,
        )
    else:
        check_unique_ids(photos)
        model = load_model(args.model, precision=args.precision, num_classes=NUM_CLASSES)
        outcomes = prelabel_files(
            photos,
            model,
            args.out,
            split=args.split,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            workers=args.workers,
            scores=args.scores,
            people=args.people,
            tta=args.tta,
            per_person=args.per_person,
        )
    counts = {"written": 0, "skipped": 0, "failed": 0}
    converted = 0  # written with a note: a photo stored as PNG (not JPEG or PNG)
    try:
        with tqdm(total=len(paths), unit="photo", file=sys.stderr, dynamic_ncols=True) as bar:
            for outcome in outcomes:
                counts[outcome.status] += 1
                converted += outcome.status == "written" and bool(outcome.message)
                if outcome.status != "written" or outcome.message:
                    bar.write(
                        f"{outcome.path}: {outcome.status}: {outcome.message}", file=sys.stderr
                    )
                bar.update()
    except engine_errors as error:
        print(f"napari-deeplab: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    note = (
        f" ({converted} photo{'s' if converted > 1 else ''} converted losslessly to PNG: "
        "Images/ holds JPEG or PNG only)"
        if converted
        else ""
    )
    print(
        f"{counts['written']} written{note}, {counts['skipped']} skipped, "
        f"{counts['failed']} failed -> {os.path.join(args.out, args.split)}"
    )
    return EXIT_SOME_FAILED if counts["failed"] or problems else EXIT_OK


def _finetune(args) -> int:
    from contextlib import nullcontext

    from .cihp import NUM_CLASSES
    from .distributed import DevicesError, data_parallel
    from .model import load_model
    from .training import (
        IMAGE_SIZE_MULTIPLE,
        FinetuneSettings,
        finetune,
        require_good_samples,
        training_and_validation,
    )

    if not args.out.endswith(".keras"):
        print("napari-deeplab: error: --out must end in .keras", file=sys.stderr)
        return EXIT_ERROR
    if args.image_size % IMAGE_SIZE_MULTIPLE:
        print(
            f"napari-deeplab: error: --image-size must be a multiple of {IMAGE_SIZE_MULTIPLE}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if os.path.exists(args.out) and not args.overwrite:
        print(
            f"napari-deeplab: error: {args.out} exists; choose another --out, or add --overwrite "
            "(it is then replaced only by a model better than the starting one)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.replace_better and not args.overwrite:
        print("napari-deeplab: error: --replace-better goes with --overwrite", file=sys.stderr)
        return EXIT_ERROR
    train, val = training_and_validation(args.root, args.split, args.val_split)
    _report_duplicates(train, val)
    require_good_samples(train, val)  # before loading the model: fail fast, naming each sample
    print(f"training on {len(train.ids)} samples, validating on {len(val.ids)}")
    best = existing = None
    start = newest = -1.0
    try:
        distribution = data_parallel(args.devices)  # the model's variables are made under it
        with distribution.scope() if distribution is not None else nullcontext():
            model = load_model(args.model, precision=args.precision, num_classes=NUM_CLASSES)
        settings = FinetuneSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=args.image_size,
            learning_rate=args.learning_rate,
            overwrite=args.overwrite,
            replace_better=args.replace_better,
            eval_every=args.eval_every,
            devices=args.devices,
        )
        for report in finetune(model, train, val, args.out, settings):
            if report.epoch == 0:
                start = report.val_miou
                if not report.saved:  # --out existed
                    existing = report.out_miou
                    print(_existing_out_line(args, report), flush=True)
            else:
                newest = max(newest, report.val_miou)
            loss = "start" if report.loss is None else f"loss {report.loss:.4f}"
            full = (
                ""
                if report.full_resolution_miou is None
                else f", at full resolution {report.full_resolution_miou:.4f}"
            )
            mark = "  saved" if report.saved else ""
            print(
                f"epoch {report.epoch}/{report.epochs}: {loss}, validation mean IoU "
                f"{report.val_miou:.4f} at {report.val_size} px{full}{mark}",
                flush=True,
            )
            if report.saved:
                best = report.val_miou
    except DevicesError as error:
        print(f"napari-deeplab: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # a full disk while saving: the last saved file is whole
        kept = (
            f"{args.out} holds the best model saved before (validation mean IoU {best:.4f})"
            if best is not None
            else f"{args.out} is as it was"
        )
        print(
            f"napari-deeplab: error: cannot write {error.filename or args.out} "
            f"({error.strerror or error}); {kept}; free some space or choose another --out",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            f"interrupted; {args.out} holds the best model so far (validation mean IoU {best:.4f})"
            if best is not None
            else f"interrupted before any model was saved; {args.out} is as it was",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if best is None and existing is not None and newest > start and not args.replace_better:
        print(
            f"no new model beat {args.out} (validation mean IoU {existing:.4f}; the best new "
            f"one {newest:.4f} at {args.image_size} px); kept as it was (--replace-better "
            "replaces it by the best model better than the starting one)"
        )
    elif best is None:
        print(f"no epoch improved on the starting model; {args.out} kept as it was")
    else:
        print(f"saved {args.out} (validation mean IoU {best:.4f} at {args.image_size} px)")
    return EXIT_OK


def _existing_out_line(args, report) -> str:
    """One line comparing the existing ``--out`` with the starting model on the validation."""
    if report.out_miou is None:
        return (
            f"{args.out} exists but cannot be scored ({report.out_problem}); it is replaced "
            f"by a model better than the starting one ({report.val_miou:.4f})"
        )
    bar = report.val_miou if args.replace_better else max(report.val_miou, report.out_miou)
    return (
        f"{args.out} exists: validation mean IoU {report.out_miou:.4f}, the starting model "
        f"{report.val_miou:.4f} (at {report.val_size} px); it is replaced only by a model "
        f"scoring over {bar:.4f}" + (" (--replace-better)" if args.replace_better else "")
    )


def _report_duplicates(*datasets) -> None:
    """Name, on one line each, the id lists that list an id twice (it is used once)."""
    for dataset in datasets:
        if dataset.duplicates:
            shown = ", ".join(dataset.duplicates[:DUPLICATES_SHOWN]) + (
                ", ..." if len(dataset.duplicates) > DUPLICATES_SHOWN else ""
            )
            print(
                f"napari-deeplab: note: the id list of {dataset.root / (dataset.split or '')} "
                f"names {len(dataset.duplicates)} id{'s' if len(dataset.duplicates) > 1 else ''} "
                f"more than once ({shown}); each sample is used once",
                file=sys.stderr,
            )


def _samples_to_score(args):
    """The split ``evaluate`` and ``audit`` score, every sample checked before the model loads
    (each bad one named); None, with one line, when it has no labelled sample."""
    from .training import locate_dataset, require_good_samples

    dataset = locate_dataset(args.root, args.split)
    _report_duplicates(dataset)
    if not dataset.ids:
        print(
            f"napari-deeplab: error: no labelled samples in {os.path.join(args.root, args.split)}",
            file=sys.stderr,
        )
        return None
    require_good_samples(dataset)
    return dataset


def _evaluate(args) -> int:
    import json

    from .cihp import NUM_CLASSES
    from .model import load_model
    from .training import evaluate

    if args.against is not None and args.model is not None:
        print(
            "napari-deeplab: error: --against scores masks without a model: drop --model",
            file=sys.stderr,
        )
        return EXIT_ERROR
    dataset = _samples_to_score(args)
    if dataset is None:
        return EXIT_ERROR
    if args.against is not None:
        from .agreement import compare_datasets
        from .training import locate_dataset

        reference = locate_dataset(args.against, args.split)
        _report_duplicates(reference)
        result = compare_datasets(dataset, reference)
    elif args.instances:
        from .agreement import evaluate_instances

        model = load_model(args.model, precision=args.precision, num_classes=NUM_CLASSES)
        result = evaluate_instances(model, dataset)
    else:
        model = load_model(args.model, precision=args.precision, num_classes=NUM_CLASSES)
        result = evaluate(model, dataset, tta=args.tta)
    if args.json:
        print(json.dumps(result, indent=1))
        return EXIT_OK
    for name, iou in result["per_class"].items():
        print(f"{name:>14}  {'-' if iou is None else f'{iou:.4f}'}")
    print(
        f"{'mean IoU':>14}  {result['miou']:.4f}  (classes present; CIHP_PGN)\n"
        f"{'':>14}  {result['miou_all_classes']:.4f}  (all 20, absent = 0; "
        "Self-Correction-Human-Parsing)\n"
        f"{'pixel accuracy':>14}  {result['pixel_accuracy']:.4f}  ({len(dataset.ids)} samples)\n"
        f"{'class accuracy':>14}  {result['mean_class_accuracy']:.4f}  (mean over all 20)"
    )
    if "instances" in result:
        from .agreement import format_instances_report

        print(format_instances_report(result))
    return EXIT_OK


def _audit(args) -> int:
    import json

    from . import cihp
    from .audit import rank_samples, region_dict, suspect_regions
    from .inference import segment
    from .model import load_model

    dataset = _samples_to_score(args)
    if dataset is None:
        return EXIT_ERROR
    model = load_model(args.model, precision=args.precision, num_classes=cihp.NUM_CLASSES)
    found = {}
    for sample_id in dataset.ids:
        sample = cihp.read_sample(dataset.root, sample_id, dataset.split)
        labels, confidence = segment(sample.image, model)
        found[sample_id] = suspect_regions(
            sample.category_ids,  # type: ignore[arg-type]
            labels,
            confidence,
            min_confidence=args.min_confidence,
            min_area=args.min_area,
        )
    ranking = rank_samples(found)[: args.top]
    if args.json:
        listed = [
            {"id": key, "strength": total, "regions": [region_dict(r) for r in found[key]]}
            for key, total in ranking
        ]
        print(json.dumps(listed, indent=1))
        return EXIT_OK
    for rank, (key, total) in enumerate(ranking, 1):
        worst = "; ".join(
            f"{r.kind} {cihp.CLASS_NAMES[r.mask_class]}->{cihp.CLASS_NAMES[r.model_class]} "
            f"{r.area} px at {r.bbox[0]},{r.bbox[1]}-{r.bbox[2]},{r.bbox[3]}"
            for r in found[key][:3]
        )
        print(f"{rank:>4}  {key:<24} {total:>10.0f}  {worst or 'nothing suspect'}")
    return EXIT_OK


def _convert(args) -> int:
    from .files import remove_stale_temporaries, write_file_atomically
    from .model import load_model, save_model

    if not args.out.endswith(".keras"):
        print("napari-deeplab: error: --out must end in .keras", file=sys.stderr)
        return EXIT_ERROR
    model = load_model(args.source)
    out = os.path.abspath(args.out)
    remove_stale_temporaries(os.path.dirname(out), os.path.basename(out))  # of a killed convert
    try:
        write_file_atomically(out, lambda path: save_model(model, path))
    except OSError as error:  # a full disk: the temporary is removed, the file left as it was
        print(
            f"napari-deeplab: error: cannot write {args.out} ({error.strerror or error}); it is "
            "as it was; free some space or choose another --out",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"saved {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
