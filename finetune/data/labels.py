"""Rows to classes: labels used as they are (or as ids into ``dataset.label_names_file``), or ratings mapped
to sentiment; rows without text or label are dropped and counted. Multi-label rows are labelled in
:mod:`.multilabel`, which shares the names file and the class ordering defined here."""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from finetune.config.schema import DATA_TASKS, DatasetConfig
from finetune.data.sources import label_setting
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

SENTIMENT_LABELS = ["negative", "positive"]
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(value: Any) -> str:
    """The reference cleaning: ``<br />`` to a space, HTML entities unescaped, whitespace collapsed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = value if isinstance(value, str) else str(value)
    return " ".join(html.unescape(_BR.sub(" ", text)).split())


def _class_name(value: Any) -> Tuple[Optional[str], str]:
    """(class name, "") or (None, why the row is dropped)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "no label"
    if isinstance(value, (dict, list)):
        return None, f"label is a JSON {'object' if isinstance(value, dict) else 'list'}"
    name = value.strip() if isinstance(value, str) else str(value)
    return (name, "") if name else (None, "no label")


def _is_int(name: str) -> bool:
    try:
        return str(int(name)) == name
    except ValueError:
        return False


def sorted_labels(present: set) -> List[str]:
    # Integer classes in numeric order so that label 2 sorts before 10 and CSV "1" matches JSON 1.
    return sorted(present, key=int) if all(_is_int(n) for n in present) else sorted(present)


def read_label_names(path: Path, dataset: DatasetConfig) -> List[str]:
    """The names of ``dataset.label_names_file``, one a line (trailing blank lines ignored)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    setting = f"dataset.label_names_file={dataset.label_names_file}"
    if "" in lines or len(set(lines)) != len(lines) or len(lines) < 2:
        why = (
            "line {} is blank".format(lines.index("") + 1)
            if "" in lines
            else "it repeats a name"
            if len(set(lines)) != len(lines)
            else "it names fewer than 2 labels"
        )
        raise UserError(f"{setting}: {why}; the file must name each label once, one a line, in id order")
    return lines


def name_of_id(value: Any, names: List[str], dataset: DatasetConfig, where: str) -> str:
    """The label named by the 0-based id ``value`` (an int, or a string of digits)."""
    text = str(value).strip()
    if isinstance(value, bool) or not _is_int(text) or not 0 <= int(text) < len(names):
        raise UserError(
            f"dataset.label_names_file={dataset.label_names_file}: {where} has label {text!r}, not an id "
            f"0-{len(names) - 1} of its {len(names)} names; fix the row, or set dataset.label_names_file="
            "null if the labels are names"
        )
    return names[int(text)]


def label_rows(
    texts: list,
    values: list,
    dataset: DatasetConfig,
    where: Callable[[int], str],
    source: str,
    label_names: Optional[List[str]] = None,
) -> Tuple[List[str], List[int], List[str], List[int]]:
    """(class names in id order, label id per kept row, text per kept row, index of each kept row); dropped
    rows are counted. ``where(index)`` says "row N of FILE" in errors; ``label_names`` are those of
    ``dataset.label_names_file``."""
    dropped: Counter = Counter()
    kept_texts, names, kept = [], [], []
    for index, (raw_text, value) in enumerate(zip(texts, values)):
        if isinstance(value, (list, tuple)):
            # Stringified, ['billing', 'sales'] would silently become a class of its own. (A JSON object is
            # no label at all: that row is dropped and counted like an empty cell.)
            key, column = label_setting(dataset)
            raise UserError(
                f"dataset.{key}={column}: {where(index)} holds a {type(value).__name__} of labels "
                f"({json.dumps(value, default=str)[:60]}) but dataset.task={dataset.task}; set "
                "dataset.task=multi_label (or auto), or give each text a single label"
            )
        text = clean_text(raw_text) if not isinstance(raw_text, (dict, list)) else ""
        name, reason = _sentiment(value, dataset) if dataset.rating_column else _class_name(value)
        if not text or name is None:
            dropped["empty text" if not text else reason] += 1
            continue
        kept_texts.append(text)
        names.append(name_of_id(name, label_names, dataset, where(index)) if label_names else name)
        kept.append(index)

    key, column = label_setting(dataset)
    if not names:
        why = (
            "dropped: " + ", ".join(f"{count} {why}" for why, count in dropped.items()) if dropped else "it has no rows"
        )
        raise UserError(
            f"dataset.{key}={column}: no labelled rows left of {len(texts)} read from {source} "
            f"({why}); check dataset.text_column={dataset.text_column} and dataset.{key}"
        )
    present = set(names)
    if len(present) < 2:
        rule = (
            f" (positive: rating >= {dataset.positive_min_rating:g}, negative: rating <= "
            f"{dataset.negative_max_rating:g}); adjust the thresholds or use more data"
            if dataset.rating_column
            else "; a classifier needs 2 or more classes, check the column"
        )
        raise UserError(
            f"dataset.{key}={column}: only one class ('{names[0]}') among {len(names)} labelled rows" + rule
        )
    labels = list(SENTIMENT_LABELS) if dataset.rating_column else label_names or sorted_labels(present)
    report_dropped(dropped, len(texts))
    ids = {name: index for index, name in enumerate(labels)}
    return labels, [ids[name] for name in names], kept_texts, kept


def report_dropped(dropped: Counter, total: int) -> None:
    if dropped:
        print(
            f"dropped {sum(dropped.values())} of {total} rows: "
            + ", ".join(f"{count} {why}" for why, count in dropped.most_common()),
            flush=True,
        )


def _sentiment(value: Any, dataset: DatasetConfig) -> Tuple[Optional[str], str]:
    """("positive" | "negative", "") or (None, why the row is dropped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "no rating"
    try:
        rating = float(value)
    except (TypeError, ValueError):
        return None, "non-numeric rating"
    if not math.isfinite(rating):
        return None, "no rating" if math.isnan(rating) else "infinite rating"
    if rating >= dataset.positive_min_rating:
        return "positive", ""
    if rating <= dataset.negative_max_rating:
        return "negative", ""
    return None, f"neutral rating ({dataset.negative_max_rating:g} < rating < {dataset.positive_min_rating:g})"


def check_labels(plan: "RunPlan") -> List[str]:
    """Which column labels the rows, the rating thresholds and the multi-label settings, for the plan check."""
    data = plan.dataset
    problems = task_problems(data)
    if data.task == "ner":
        return problems  # tags come with the tokens; no label or rating column
    if bool(data.label_column) == bool(data.rating_column):
        problems.append(
            f"dataset.label_column={data.label_column}, dataset.rating_column={data.rating_column}: "
            "set exactly one (labels as-is, or ratings mapped to sentiment)"
        )
    if data.rating_column and data.negative_max_rating >= data.positive_min_rating:
        problems.append(
            f"dataset.negative_max_rating={data.negative_max_rating}: must be below "
            f"dataset.positive_min_rating={data.positive_min_rating}"
        )
    return problems


def task_problems(data: DatasetConfig) -> List[str]:
    """The task and multi-label settings (also checked by ``prepare``, which the plan check may not precede)."""
    problems = []
    if data.task not in DATA_TASKS:
        problems.append(f"dataset.task={data.task}: unknown; use one of {', '.join(DATA_TASKS)}")
    if data.label_separator is not None and not data.label_separator.strip():
        problems.append(
            f"dataset.label_separator={data.label_separator!r}: must be a visible character such as "
            "',' or '|' (or null for one label a cell)"
        )
    if data.rating_column and (data.task == "multi_label" or data.label_separator or data.label_names_file):
        key, value = next(
            (k, getattr(data, k))
            for k in ("task", "label_separator", "label_names_file")
            if getattr(data, k) not in (None, "auto", "single_label")
        )
        problems.append(
            f"dataset.{key}={value}: ratings map to one sentiment a row; use dataset.label_column "
            f"instead of dataset.rating_column={data.rating_column}, or set dataset.{key}=null"
        )
    if data.label_separator and data.task == "single_label":
        problems.append(
            f"dataset.label_separator={data.label_separator}: splits a cell into several labels, but "
            "dataset.task=single_label; set dataset.task=multi_label (or auto)"
        )
    return problems
