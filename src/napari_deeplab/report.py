"""``napari-deeplab report``: what the corrections cost, per model and over time, from the
dataset's effort log (:mod:`napari_deeplab.cihp.effort_log`), and the plot of the changed-pixel
rate per accepted photo, coloured by the model that made the pre-label.

No Keras here: the report reads a JSON-lines file and draws with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from .cihp import effort_log

NO_MODEL = "(no pre-label)"
"""The group of Accepts without a pre-label (painted from an empty mask)."""


def model_name(model: str | None) -> str:
    """A model as the report names it: its file or folder name, or the hub id as it is."""
    if model is None:
        return NO_MODEL
    if os.sep in model or model.endswith((".keras", ".h5")) or Path(model).exists():
        return Path(model.rstrip("/\\")).name or model
    return model


def _means(entries: list[dict]) -> dict:
    count = len(entries)
    return {
        "count": count,
        "mean_changed_fraction": sum(e["changed_fraction"] for e in entries) / count,
        "mean_active_s": sum(e.get("active_s", 0.0) for e in entries) / count,
        "mean_actions": sum(e.get("actions", 0) for e in entries) / count,
    }


def summarise(entries: list[dict], every: int | None = None) -> dict:
    """The report of the log's ``entries`` (in the order appended).

    Returns ``{"accepts", "models": [{"model", "name", "count", "mean_changed_fraction",
    "mean_active_s", "mean_actions"}], "periods": [{"period", "first", "last", "models",
    "count", ...means}]}``: models in the order first used; periods per UTC day of the
    Accept, or per ``every`` Accepts in order (``first``/``last``: 1-based places)."""
    by_model: dict = defaultdict(list)
    for entry in entries:
        by_model[entry.get("model")].append(entry)
    models = [
        {"model": model, "name": model_name(model), **_means(group)}
        for model, group in by_model.items()
    ]
    places = list(enumerate(entries, 1))
    if every:
        chunks = [places[i : i + every] for i in range(0, len(places), every)]
        keys = [f"accepts {chunk[0][0]}-{chunk[-1][0]}" for chunk in chunks]
    else:
        days: dict = defaultdict(list)
        for place in places:
            days[str(place[1].get("when", "?"))[:10]].append(place)
        keys, chunks = list(days), list(days.values())
    periods = []
    for key, chunk in zip(keys, chunks, strict=True):
        group = [entry for _, entry in chunk]
        used = list(dict.fromkeys(model_name(e.get("model")) for e in group))
        periods.append(
            {
                "period": key,
                "first": chunk[0][0],
                "last": chunk[-1][0],
                "models": used,
                **_means(group),
            }
        )
    return {"accepts": len(entries), "models": models, "periods": periods}


def format_report(summary: dict, skipped: int = 0) -> str:
    """The report as text: a table per model, then one per period."""
    lines = [
        f"{summary['accepts']} accepted photos" + (f" ({skipped} lines skipped)" if skipped else "")
    ]
    header = f"{'changed':>8} {'active':>8} {'actions':>8}"

    def figures(row: dict) -> str:
        return (
            f"{row['mean_changed_fraction']:>8.1%} {row['mean_active_s']:>7.1f}s "
            f"{row['mean_actions']:>8.1f}"
        )

    width = max([len("model"), *(len(m["name"]) for m in summary["models"])])
    lines += ["", f"{'model':<{width}} {'photos':>6} {header}  (means per photo)"]
    lines += [f"{m['name']:<{width}} {m['count']:>6} {figures(m)}" for m in summary["models"]]
    width = max([len("period"), *(len(p["period"]) for p in summary["periods"])])
    lines += ["", f"{'period':<{width}} {'photos':>6} {header}  models"]
    lines += [
        f"{p['period']:<{width}} {p['count']:>6} {figures(p)}  {', '.join(p['models'])}"
        for p in summary["periods"]
    ]
    return "\n".join(lines)


def plot(entries: list[dict], out: str | os.PathLike) -> Path:
    """Draw the changed-pixel rate (%) of each accepted photo in order, a colour per model,
    each model's mean as a dashed line; written as a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    groups: dict = defaultdict(list)
    for place, entry in enumerate(entries, 1):
        groups[model_name(entry.get("model"))].append((place, 100 * entry["changed_fraction"]))
    colours = matplotlib.colormaps["tab10"]
    for index, (name, points) in enumerate(groups.items()):
        colour = colours(index % 10)
        places, rates = zip(*points, strict=True)
        mean = sum(rates) / len(rates)
        axes.plot(
            places,
            rates,
            "o-",
            color=colour,
            markersize=4,
            linewidth=0.8,
            label=f"{name}: mean {mean:.1f}% over {len(rates)}",
        )
        axes.hlines(mean, places[0], places[-1], colors=[colour], linestyles="dashed")
    axes.set_xlabel("accepted photo, in order")
    axes.set_ylabel("pixels changed from the pre-label (%)")
    axes.set_title("Corrections per accepted photo, by the model that pre-labelled it")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if groups:
        axes.legend(loc="upper right", fontsize="small")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def dataset_root(path: str | os.PathLike) -> Path:
    """The dataset root of ``path`` (a root, or a split folder of one)."""
    path = Path(path)
    if effort_log.effort_log_path(path).exists():
        return path
    from .cihp import locate

    try:
        return locate(path).root
    except ValueError:
        return path


def run(args) -> int:
    """The ``report`` command; its exit status."""
    root = dataset_root(args.dataset)
    try:
        log = effort_log.read_log(root)
    except OSError as error:
        print(
            f"napari-deeplab: error: {effort_log.effort_log_path(root)}: cannot be read "
            f"({error.strerror or error}); check that it is a file this user can read",
            file=sys.stderr,
        )
        return 2
    for line in log.skipped:
        print(f"napari-deeplab: {line}", file=sys.stderr)
    if not log.entries:
        print(
            f"napari-deeplab: no Accepts recorded in {log.path}; the review queue writes one "
            "line per accepted photo",
            file=sys.stderr,
        )
        if not args.json:
            return 0
    summary = summarise(log.entries, every=args.every)
    if args.json:
        print(json.dumps({**summary, "skipped_lines": len(log.skipped)}, indent=1))
    else:
        print(format_report(summary, skipped=len(log.skipped)))
    if args.plot:
        out = plot(log.entries, args.plot)
        print(f"napari-deeplab: plot written to {out}", file=sys.stderr)
    return 0
