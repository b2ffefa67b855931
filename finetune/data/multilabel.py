"""Multi-label rows: each text has a set of labels (none, one or several) instead of one class.

A set comes from a JSON / parquet list, or from one string cell split on ``dataset.label_separator``; with
``dataset.label_names_file`` its values are ids into that file. ``dataset.task=auto`` picks multi-label from
exactly those two signs, so single-label data keeps its behaviour. The prepared split files hold a set as the
Python literal of its label names in label-id order (``['anger', 'joy']``, ``[]``): the label format Azure ML
AutoML's text_classification_multilabel reads, so the same files serve both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Callable, List, Optional, Tuple

from finetune.config.schema import DatasetConfig
from finetune.data.labels import clean_text, name_of_id, report_dropped, sorted_labels
from finetune.data.sources import _open_text, is_ner, label_setting, local_source, source_url
from finetune.errors import UserError

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"


def resolve_task(dataset: DatasetConfig, values: list) -> str:
    """single_label | multi_label: ``dataset.task``, or for ``auto`` what the settings and the values say."""
    if dataset.task != "auto":
        return dataset.task
    if dataset.rating_column:
        return SINGLE_LABEL
    if dataset.label_separator or any(isinstance(value, (list, tuple)) for value in values):
        return MULTI_LABEL
    return SINGLE_LABEL


# Rows of a local JSON-lines or parquet file the plan reads to decide task=auto.
PEEK_ROWS = 200


def planned_task(dataset: DatasetConfig) -> str:
    """``dataset.task`` as the plan can decide it without loading the data: the setting; for ``auto`` what the
    settings say, else whether the first rows of a local JSONL / parquet file hold label lists (CSV and TSV
    cells are strings: lists come only with a separator). ``auto`` stays when only the data stage can tell
    (a download) or the source is broken (the plan check reports that)."""
    if dataset.task != "auto" or dataset.rating_column or dataset.label_separator:
        return resolve_task(dataset, [])
    if is_ner(dataset):
        return "ner"
    if source_url(dataset) is not None:
        return "auto"
    try:
        with local_source(dataset) as raw:
            _, path, fmt = raw.files[0]
            column = label_setting(dataset)[1]
            if fmt == "jsonl":
                values = _peek_jsonl(path, column)
            elif fmt == "parquet":
                import pyarrow.parquet as pq

                batch = next(pq.ParquetFile(path).iter_batches(batch_size=PEEK_ROWS, columns=[column]), None)
                values = batch.column(0).to_pylist() if batch is not None else []
            else:
                values = []
    except (UserError, OSError, ValueError, KeyError):
        return "auto"
    return resolve_task(dataset, values)


def _peek_jsonl(path, column: str) -> list:
    values = []
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                values.append(record.get(column) if isinstance(record, dict) else None)
                if len(values) == PEEK_ROWS:
                    break
    return values


def _label_set(value: Any, dataset: DatasetConfig, where: str) -> Optional[List[str]]:
    """The label names of one cell ([] for an empty cell), or None for a JSON object (dropped, as in
    single-label data)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, dict):
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise UserError(
                    f"dataset.label_column={dataset.label_column}: {where} holds "
                    f"{json.dumps(value, default=str)[:60]}; a list of labels may hold only strings or "
                    "integers, fix the row"
                )
        items = [str(item).strip() for item in value]
    elif isinstance(value, str) and dataset.label_separator:
        items = [item.strip() for item in value.split(dataset.label_separator)]
    else:
        items = [str(value).strip()]
    return [item for item in items if item]


def label_sets(
    texts: list,
    values: list,
    dataset: DatasetConfig,
    where: Callable[[int], str],
    source: str,
    label_names: Optional[List[str]] = None,
) -> Tuple[List[str], List[List[int]], List[str], List[int]]:
    """(label names in id order, sorted label ids per kept row, text per kept row, index of each kept row).

    Rows without text are dropped and counted; a row with no labels is an error unless
    ``dataset.allow_empty_labels`` (it is then kept with an empty set).
    """
    dropped: Counter = Counter()
    kept_texts, sets, kept = [], [], []
    for index, (raw_text, value) in enumerate(zip(texts, values)):
        text = clean_text(raw_text) if not isinstance(raw_text, (dict, list)) else ""
        names = _label_set(value, dataset, where(index)) if text else None
        if names is None:
            dropped["empty text" if not text else "label is a JSON object"] += 1
            continue
        if not names and not dataset.allow_empty_labels:
            raise UserError(
                f"dataset.allow_empty_labels=false: {where(index)} has no labels; label it, or set "
                "dataset.allow_empty_labels=true to keep such rows with an empty label set"
            )
        if label_names:
            names = [name_of_id(name, label_names, dataset, where(index)) for name in names]
        kept_texts.append(text)
        sets.append(names)
        kept.append(index)

    if not kept:
        why = "dropped: " + ", ".join(f"{n} {why}" for why, n in dropped.items()) if dropped else "it has no rows"
        raise UserError(
            f"dataset.label_column={dataset.label_column}: no labelled rows left of {len(texts)} read "
            f"from {source} ({why}); check dataset.text_column={dataset.text_column} and "
            "dataset.label_column"
        )
    present = {name for names in sets for name in names}
    labels = label_names or sorted_labels(present)
    if len(labels) < 2:
        raise UserError(
            f"dataset.label_column={dataset.label_column}: only {len(labels)} label "
            f"({', '.join(labels) or 'none'}) among {len(kept)} rows; a classifier needs 2 or more, "
            "check the column and dataset.label_separator"
        )
    unused = [name for name in labels if name not in present]
    if unused:
        print(
            f"note: {len(unused)} of the {len(labels)} labels in dataset.label_names_file occur in no row: "
            + ", ".join(unused[:10]),
            flush=True,
        )
    report_dropped(dropped, len(texts))
    ids = {name: index for index, name in enumerate(labels)}
    return labels, [sorted({ids[name] for name in names}) for names in sets], kept_texts, kept


def label_cell(label_ids: List[int], labels: List[str]) -> str:
    """The split-file cell of a label set: ``repr`` of its names in id order, e.g. ``['anger', 'joy']``."""
    return repr([labels[i] for i in label_ids])
