"""The prepared folder (docs/contracts.md, "Prepared data"): ``prepare`` runs source -> labels -> split and
writes it; :class:`PreparedData` describes it (its ``to_dict()`` is the ``data`` section of summary.json) and
:func:`read_split` reads a single-label split file back for every stage that scores or trains on it
(multi-label files: :mod:`.targets`).

data.json records the task (``single_label`` | ``multi_label``) and how the rows were split (``stratified``,
``iterative_stratification`` or ``predefined``); a folder from before multi-label support has neither and
loads as single-label.

Output is written to a sibling staging folder and renamed into place, so a failure leaves no half-prepared
folder that a later stage (or a resumed run) could mistake for a good one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from finetune.config.schema import DatasetConfig
from finetune.data.labels import label_rows, read_label_names, task_problems
from finetune.data.multilabel import MULTI_LABEL, SINGLE_LABEL, label_cell, label_sets, resolve_task
from finetune.data.sources import SOURCES, local_source, read_source, sha256_file
from finetune.data.split import (
    assign_multi_label_splits,
    assign_predefined_splits,
    assign_splits,
    check_unseen_labels,
    split_index,
    split_problems,
)
from finetune.errors import UserError

SPLITS = ("train", "val", "test")


def split_file(task: str, split: str) -> str:
    """A prepared split's file name: CSV rows of text and label, or JSONL sentences for NER."""
    return f"{split}.jsonl" if task == "ner" else f"{split}.csv"


@dataclass
class PreparedData:
    train_path: Path
    val_path: Path
    test_path: Path
    labels_path: Path
    labels: List[str]
    source: str
    raw_sha256: str
    rows_raw: int
    rows_labelled: int
    # split name -> {"rows", "sha256", "class_counts"}; the path lives in the *_path fields. For multi-label
    # data a class count is the number of rows holding that label.
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    task: str = SINGLE_LABEL
    # stratified | iterative_stratification | predefined
    split: str = "stratified"
    # NER only: what reading repaired or skipped, per raw file (finetune.data.ner.NerReadStats)
    ner: Optional[Dict[str, Any]] = None

    @property
    def directory(self) -> Path:
        """The prepared folder: the split files, labels.json and data.json (the launchers pass it on)."""
        return self.train_path.parent

    def path(self, split: str) -> Path:
        return getattr(self, f"{split}_path")

    def to_dict(self) -> dict:
        """The ``data`` section of summary.json (docs/contracts.md)."""
        return {
            "source": self.source,
            "raw_sha256": self.raw_sha256,
            "task": self.task,
            "labels": list(self.labels),
            "rows_raw": self.rows_raw,
            "rows_labelled": self.rows_labelled,
            "split": self.split,
            "splits": {name: {"path": str(self.path(name)), **self.splits[name]} for name in SPLITS},
            **({"ner": self.ner} if self.ner is not None else {}),
        }

    @classmethod
    def load(cls, out_dir: Path | str) -> "PreparedData":
        """Rebuild the result of an earlier ``prepare`` from its folder (later stages, resumed runs).

        Paths are taken from where the folder is now, so a moved or downloaded copy still loads; split files
        are re-hashed because training on a silently edited split would make the run irreproducible.
        """
        out_dir = Path(out_dir).expanduser().resolve()
        try:
            data = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
            task = data.get("task", SINGLE_LABEL)
            prepared = cls(
                train_path=out_dir / split_file(task, "train"),
                val_path=out_dir / split_file(task, "val"),
                test_path=out_dir / split_file(task, "test"),
                labels_path=out_dir / "labels.json",
                labels=data["labels"],
                source=data["source"],
                raw_sha256=data["raw_sha256"],
                rows_raw=data["rows_raw"],
                rows_labelled=data["rows_labelled"],
                splits={name: {k: v for k, v in data["splits"][name].items() if k != "path"} for name in SPLITS},
                task=task,
                split=data.get("split", "stratified"),
                ner=data.get("ner"),
            )
        except FileNotFoundError:
            raise UserError(
                f"{out_dir}: no prepared data there (data.json missing); run the data stage again"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(
                f"{out_dir}/data.json: unreadable ({type(error).__name__}: {error}); delete {out_dir} to "
                "prepare the data again"
            ) from None
        for name in SPLITS:
            path = prepared.path(name)
            actual = sha256_file(path) if path.exists() else "missing"
            if actual != prepared.splits[name]["sha256"]:
                raise UserError(
                    f"{path}: changed since it was prepared (sha256 {actual}, recorded "
                    f"{prepared.splits[name]['sha256']}); delete {out_dir} to prepare the data again"
                )
        return prepared

    @classmethod
    def from_dict(cls, section: dict) -> "PreparedData":
        """summary.json's ``data`` section as a finished run's report reads it: the split files are where the
        section says and are not re-hashed (:meth:`load` is for training on them)."""
        paths = {name: Path(section["splits"][name]["path"]) for name in SPLITS}
        return cls(
            train_path=paths["train"],
            val_path=paths["val"],
            test_path=paths["test"],
            labels_path=paths["train"].parent / "labels.json",
            labels=section["labels"],
            source=section["source"],
            raw_sha256=section["raw_sha256"],
            rows_raw=section["rows_raw"],
            rows_labelled=section["rows_labelled"],
            splits={name: {k: v for k, v in section["splits"][name].items() if k != "path"} for name in SPLITS},
            task=section.get("task", SINGLE_LABEL),
            split=section.get("split", "stratified"),
            ner=section.get("ner"),
        )


def prepare(dataset: DatasetConfig, out_dir: Path | str) -> PreparedData:
    """Load, clean, label, sample and split ``dataset`` into ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir).expanduser().resolve()
    if dataset.source not in SOURCES:
        raise UserError(f"dataset.source={dataset.source}: unknown; use one of {', '.join(SOURCES)}")
    if bool(dataset.label_column) == bool(dataset.rating_column):
        raise UserError(
            f"dataset.label_column={dataset.label_column}, dataset.rating_column={dataset.rating_column}: "
            "set exactly one (labels as-is, or ratings mapped to sentiment)"
        )
    if dataset.sample is not None and dataset.sample < 1:
        raise UserError(f"dataset.sample={dataset.sample}: must be a positive number of rows (or null for all)")
    problems = task_problems(dataset) + split_problems(dataset)
    if problems:
        raise UserError(problems[0])

    texts, values, split_values, segments = [], [], [], []
    with local_source(dataset) as raw:
        for split, path, fmt in raw.files:
            source = raw.description if split is None else str(path)
            file_texts, file_values, file_splits, rows = read_source(path, fmt, dataset, source)
            texts += file_texts
            values += file_values
            split_values += [split] * rows if split else file_splits or []
            segments.append((source, rows))
        raw_sha256 = _raw_sha256(raw.files)
        label_names = read_label_names(raw.names_file, dataset) if raw.names_file else None
    where = _locator(segments)
    task = resolve_task(dataset, values)
    labeller = label_sets if task == MULTI_LABEL else label_rows
    labels, targets, kept_texts, kept = labeller(texts, values, dataset, where, raw.description, label_names)

    if split_values:
        method = "predefined"
        assignment = assign_predefined_splits([split_index(split_values[i], dataset, where(i)) for i in kept], dataset)
    elif task == MULTI_LABEL:
        method, assignment = "iterative_stratification", assign_multi_label_splits(targets, labels, dataset)
    else:
        method, assignment = "stratified", assign_splits(targets, labels, dataset)

    files: Dict[str, bytes] = {}
    splits: Dict[str, Dict[str, Any]] = {}
    for position, name in enumerate(SPLITS):
        members = [i for i in assignment if assignment[i] == position]
        row_labels = [targets[i] if task == MULTI_LABEL else [targets[i]] for i in members]
        cells = [label_cell(ids, labels) if task == MULTI_LABEL else labels[ids[0]] for ids in row_labels]
        files[f"{name}.csv"] = _csv_bytes([(kept_texts[i], cell) for i, cell in zip(members, cells)])
        counts = {label: 0 for label in labels}
        for ids in row_labels:
            for label_id in ids:
                counts[labels[label_id]] += 1
        splits[name] = {
            "rows": len(members),
            "sha256": hashlib.sha256(files[f"{name}.csv"]).hexdigest(),
            "class_counts": counts,
        }
    check_unseen_labels({name: splits[name]["class_counts"] for name in SPLITS}, dataset, method)
    prepared = PreparedData(
        train_path=out_dir / "train.csv",
        val_path=out_dir / "val.csv",
        test_path=out_dir / "test.csv",
        labels_path=out_dir / "labels.json",
        labels=labels,
        source=raw.description,
        raw_sha256=raw_sha256,
        rows_raw=len(texts),
        rows_labelled=len(kept),
        splits=splits,
        task=task,
        split=method,
    )
    files["labels.json"] = (json.dumps(labels) + "\n").encode("utf-8")
    files["data.json"] = (json.dumps(prepared.to_dict(), indent=2) + "\n").encode("utf-8")
    _write_folder(out_dir, files)
    return prepared


def _raw_sha256(files: List[Tuple[Optional[str], Path, str]]) -> str:
    """The raw file's sha256; for split files, the sha256 of their "split sha256" lines."""
    if len(files) == 1 and files[0][0] is None:
        return sha256_file(files[0][1])
    return hashlib.sha256("".join(f"{split} {sha256_file(path)}\n" for split, path, _ in files).encode()).hexdigest()


def _locator(segments: List[Tuple[str, int]]) -> Callable[[int], str]:
    """``where(index)``: "row N of FILE" for a row index into the files read one after another."""

    def where(index: int) -> str:
        for source, rows in segments:
            if index < rows:
                return f"row {index + 1} of {source}"
            index -= rows
        raise IndexError(index)

    return where


def _csv_bytes(rows: List[Tuple[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("text", "label"))
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_folder(out_dir: Path, files: Dict[str, bytes]) -> None:
    """Write ``files`` into a staging folder beside ``out_dir`` and swap it in whole."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "data.json").is_file():
        # Only a folder this stage prepared (it holds data.json) or an empty one is replaced; anything else
        # is the user's.
        raise UserError(
            f"{out_dir} exists and was not prepared by finetune (no data.json); move it away or "
            "choose another run_name / output_root"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{token}")
    previous = out_dir.with_name(f".{out_dir.name}.old-{token}")
    staging.mkdir()
    moved_aside = False
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        if out_dir.exists():
            os.replace(out_dir, previous)
            moved_aside = True
        os.replace(staging, out_dir)
    except BaseException:
        if moved_aside:
            os.replace(previous, out_dir)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def read_split(path, labels: List[str]) -> Tuple[List[str], List[int]]:
    """Texts and label ids of a prepared split CSV (``text,label``, label = class name)."""
    import pandas as pd

    # keep_default_na=False: a review reading "NA" or "null" is text, not a missing value.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    label_ids = {name: index for index, name in enumerate(labels)}
    unknown = sorted(set(frame["label"]) - set(label_ids))
    if unknown:
        raise UserError(f"{path}: labels {unknown[:5]} are not among the prepared labels {labels}")
    return frame["text"].tolist(), [label_ids[name] for name in frame["label"]]
