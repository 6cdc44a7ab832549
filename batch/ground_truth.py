"""`python -m batch labels FILE.csv --db URL` and `python -m batch evaluate --db URL`: labels in
bulk, and accuracy per model version, for batch predictions and the online prediction log alike
(one database, `groundtruth.schema`).

labels: a CSV file with a header row; a `label` column (a class id, or a class name from the
model's labels.txt) and, per row, one of `image_key` (the batch job's key: the image's path
relative to SOURCE), `sha256` (of the image file) or `id` (a request id the transformer
answered, with `index`, default 0). Every row is checked before anything is written; loading the
same file again changes nothing (labels of the same subject are replaced, not added).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.cli import DEFAULT_MODEL_NAME
from common.database import Database, DatabaseError
from common.modelrepo import ModelRepositoryError, resolve
from groundtruth import accuracy
from groundtruth.labels import MAX_LABELS, ClassNames, Label, LabelError, parse_label, refused
from groundtruth.store import GroundTruthStore

from .settings import DB_ENV, DEFAULT_DB

EXIT_OK, EXIT_USAGE, EXIT_STOPPED = 0, 2, 3
SUBJECT_COLUMNS = ("image_key", "sha256", "id")


def parser() -> argparse.ArgumentParser:
    """The labels and evaluate command lines."""
    p = argparse.ArgumentParser(
        prog="python -m batch",
        description="Ground truth for batch and online predictions. Exit status: 0 done, "
        "2 bad flags or file, 3 database unreachable.",
    )
    commands = p.add_subparsers(dest="command", required=True)
    load = commands.add_parser(
        "labels",
        help="Load true labels from a CSV file (idempotent).",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument(
        "file", type=Path, help="CSV with a header: label, and image_key, sha256 or id (+ index)."
    )
    evaluate = commands.add_parser(
        "evaluate",
        help="Accuracy per model version: top-1/top-5 with 95%% intervals, confusions, "
        "calibration.",
    )
    evaluate.add_argument(
        "--since",
        default=None,
        help=f"Only predictions made in this window ({accuracy.DURATION_EXAMPLES}; default: all).",
    )
    evaluate.add_argument(
        "--source",
        choices=[accuracy.ONLINE, accuracy.BATCH, "all"],
        default="all",
        help="The prediction log (online), the batch job's predictions, or both.",
    )
    evaluate.add_argument("--json", action="store_true", help="Print the report as JSON.")
    for command in (load, evaluate):
        command.add_argument(
            "--db",
            default=None,
            help=f"SQLAlchemy URL (default: ${DB_ENV}, else {DEFAULT_DB}).",
        )
        command.add_argument(
            "--model_dir",
            type=Path,
            default=None,
            help="Model repository whose labels.txt names the classes (labels: needed for "
            "class names and to check class ids; evaluate: names in the report).",
        )
        command.add_argument(
            "--model_name",
            default=None,
            help=f"labels: the model request ids belong to (default: any); evaluate: only this "
            f"model (default: all). With --model_dir, default {DEFAULT_MODEL_NAME}.",
        )
    return p


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run `labels` or `evaluate`; returns the exit status."""
    env = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    try:
        names = _class_names(args.model_dir, args.model_name)
    except ModelRepositoryError as exc:
        print(f"batch {args.command}: --model_dir: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        db = Database(args.db or env.get(DB_ENV) or DEFAULT_DB)
    except DatabaseError as exc:
        print(f"batch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "labels":
            return _load(args, db, names)
        return _evaluate(args, db, names)
    except DatabaseError as exc:
        print(f"batch {args.command}: stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        db.close()


def _class_names(model_dir: Path | None, model_name: str | None) -> list[str] | None:
    if model_dir is None:
        return None
    return resolve(model_dir, model_name or DEFAULT_MODEL_NAME).labels()


def read_labels(path: Path, classes: ClassNames) -> list[Label]:
    """Every row of a labels CSV file; raises LabelError naming the bad lines (none stored)."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            columns = set(reader.fieldnames or [])
            if "label" not in columns or not columns & set(SUBJECT_COLUMNS):
                raise LabelError(
                    f"{path}: header {sorted(columns)}: expected a label column and one or more "
                    f"of {list(SUBJECT_COLUMNS)} (and index, with id)"
                )
            labels: list[Label] = []
            errors: list[str] = []
            for row in reader:
                try:
                    labels.append(parse_label(_item(row), classes, allow_image_key=True))
                except LabelError as exc:
                    errors.append(f"line {reader.line_num}: {exc}")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"{path}: {exc}") from exc
    if errors:
        raise refused(f"{path}: {len(errors)} rows refused", errors)
    if not labels:
        raise LabelError(f"{path}: no labels (only a header?)")
    return labels


def _item(row: Mapping[str, str | None]) -> dict[str, object]:
    """A CSV row as the labels API's object: empty cells left out, numbers as numbers."""
    item: dict[str, object] = {}
    for column, value in row.items():
        if column is None or value is None or not value.strip():
            continue  # cells past the header, or empty
        text = value.strip()
        if column in ("label", "index") and text.lstrip("-").isdigit():
            item[column] = int(text)
        else:
            item[column] = text
    return item


def _load(args: argparse.Namespace, db: Database, names: list[str] | None) -> int:
    if names is None:
        print(
            "batch labels: --model_dir is needed: its labels.txt says which class ids exist "
            "and what the class names are",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        labels = read_labels(args.file, ClassNames(names))
    except LabelError as exc:
        print(f"batch labels: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = GroundTruthStore(db)
    totals: Counter[str] = Counter()
    for start in range(0, len(labels), MAX_LABELS):
        totals.update(
            store.apply_labels(labels[start : start + MAX_LABELS], args.model_name).counts()
        )
    print(json.dumps({"file": str(args.file), **totals}))
    return EXIT_OK


def _evaluate(args: argparse.Namespace, db: Database, names: list[str] | None) -> int:
    try:
        window = accuracy.parse_duration(args.since) if args.since else None
    except accuracy.WindowError as exc:
        print(f"batch evaluate: --{exc}", file=sys.stderr)
        return EXIT_USAGE
    GroundTruthStore(db).ensure_schema()
    sources = (accuracy.ONLINE, accuracy.BATCH) if args.source == "all" else (args.source,)
    report = accuracy.report(db, window, args.model_name, sources).to_json(names or [])
    print(json.dumps(report, indent=2) if args.json else table(report))
    return EXIT_OK


def table(report: Mapping[str, Any]) -> str:
    """The report for people: one block per source and model version."""
    lines = [f"predictions from {report['from'] or 'the start'} until {report['until']}"]
    if not report["versions"]:
        lines.append("no labelled predictions in this window")
    for v in report["versions"]:
        top1, top5 = v["top1"], v["top5"]
        lines += [
            "",
            f"{v['source']} {v['model_name']} version {v['model_version']}: "
            f"{v['labelled']} labelled predictions",
            f"  top-1 {_share(top1)}   top-5 {_share(top5)}",
        ]
        if v["confusions"]:
            lines.append(
                "  most frequent confusions (true -> predicted): "
                + ", ".join(
                    f"{_name(c['true'])} -> {_name(c['predicted'])} ({c['count']})"
                    for c in v["confusions"]
                )
            )
        lines.append("  by confidence (top-1 score band: predictions, mean score, top-1 accuracy):")
        lines += [
            f"    {b['band']}: {b['predictions']}, {b['mean_score']:.3f}, {b['top1_accuracy']:.3f}"
            for b in v["calibration"]
        ]
    return "\n".join(lines)


def _share(p: Mapping[str, Any]) -> str:
    low, high = p["ci95"]
    return f"{p['accuracy']:.3f} ({p['correct']}; 95% CI {low:.3f}-{high:.3f})"


def _name(entry: Mapping[str, Any]) -> str:
    return entry["label"] or str(entry["class_id"])
