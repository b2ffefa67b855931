"""Rows to classes: labels used as they are, or ratings mapped to sentiment; rows without text or label are
dropped and counted."""
from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from finetune.config import DatasetConfig
from finetune.data.sources import label_setting
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan import RunPlan

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


def label_rows(texts: list, values: list, dataset: DatasetConfig, source: str) -> Tuple[List[str], List[int], List[str]]:
    """(class names in id order, label id per kept row, text per kept row); dropped rows are counted."""
    dropped: Counter = Counter()
    kept_texts, names = [], []
    for row, (raw_text, value) in enumerate(zip(texts, values), 1):
        if isinstance(value, (list, tuple)):
            # Stringified, ['billing', 'sales'] would silently become a class of its own. (A JSON object is
            # no label at all: that row is dropped and counted like an empty cell.)
            key, column = label_setting(dataset)
            raise UserError(f"dataset.{key}={column}: row {row} of {source} holds a {type(value).__name__} of labels "
                            f"({json.dumps(value, default=str)[:60]}); multi-label data is not supported yet, give "
                            "each text a single label")
        text = clean_text(raw_text) if not isinstance(raw_text, (dict, list)) else ""
        name, reason = _sentiment(value, dataset) if dataset.rating_column else _class_name(value)
        if not text or name is None:
            dropped["empty text" if not text else reason] += 1
            continue
        kept_texts.append(text)
        names.append(name)

    key, column = label_setting(dataset)
    if not names:
        why = "dropped: " + ", ".join(f"{count} {why}" for why, count in dropped.items()) if dropped else "it has no rows"
        raise UserError(f"dataset.{key}={column}: no labelled rows left of {len(texts)} read from {source} "
                        f"({why}); check dataset.text_column={dataset.text_column} and dataset.{key}")
    present = set(names)
    if len(present) < 2:
        rule = (f" (positive: rating >= {dataset.positive_min_rating:g}, negative: rating <= "
                f"{dataset.negative_max_rating:g}); adjust the thresholds or use more data"
                if dataset.rating_column else "; a classifier needs 2 or more classes, check the column")
        raise UserError(f"dataset.{key}={column}: only one class ('{names[0]}') among {len(names)} labelled rows"
                        + rule)
    if dataset.rating_column:
        labels = list(SENTIMENT_LABELS)
    else:
        # Integer classes in numeric order so that label 2 sorts before 10 and CSV "1" matches JSON 1.
        labels = sorted(present, key=int) if all(_is_int(n) for n in present) else sorted(present)
    if dropped:
        print(f"dropped {sum(dropped.values())} of {len(texts)} rows: "
              + ", ".join(f"{count} {why}" for why, count in dropped.most_common()), flush=True)
    ids = {name: index for index, name in enumerate(labels)}
    return labels, [ids[name] for name in names], kept_texts


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
    """Which column labels the rows, and the rating thresholds, for the plan check."""
    data, problems = plan.dataset, []
    if bool(data.label_column) == bool(data.rating_column):
        problems.append(f"dataset.label_column={data.label_column}, dataset.rating_column={data.rating_column}: "
                        "set exactly one (labels as-is, or ratings mapped to sentiment)")
    if data.rating_column and data.negative_max_rating >= data.positive_min_rating:
        problems.append(f"dataset.negative_max_rating={data.negative_max_rating}: must be below "
                        f"dataset.positive_min_rating={data.positive_min_rating}")
    return problems
