"""Reading a prepared split back as training / scoring targets: class ids for single-label data
(:func:`~finetune.data.prepared.read_split`), a multi-hot matrix for multi-label data.

A multi-label cell is the Python literal of a list of label names (``['anger', 'joy']``); it is parsed with
``ast.literal_eval``, which builds literals only and never runs code, because a split file may come from a
shared folder or a download.
"""

from __future__ import annotations

import ast
from typing import Any, List, Tuple

from finetune.data.multilabel import MULTI_LABEL, SINGLE_LABEL
from finetune.data.prepared import read_split
from finetune.errors import UserError


def read_multi_label_split(path, labels: List[str]) -> Tuple[List[str], Any]:
    """Texts and an n_rows x n_labels uint8 multi-hot matrix (columns in ``labels`` order) of a prepared
    multi-label split CSV (``text,label``, label = list literal of names)."""
    import numpy as np
    import pandas as pd

    # keep_default_na=False: a text reading "NA" or "null" is text, not a missing value.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    column = {name: index for index, name in enumerate(labels)}
    targets = np.zeros((len(frame), len(labels)), dtype=np.uint8)
    for row, cell in enumerate(frame["label"]):
        try:
            names = ast.literal_eval(cell)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            names = None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise UserError(
                f"{path}: row {row + 1} has label {cell[:60]!r}, not a list of label names such as "
                "['anger', 'joy']; prepare the data again"
            )
        unknown = [name for name in names if name not in column]
        if unknown:
            raise UserError(
                f"{path}: row {row + 1} has labels {unknown[:5]} that are not among the prepared labels "
                f"{labels}; prepare the data again"
            )
        targets[row, [column[name] for name in names]] = 1
    return frame["text"].tolist(), targets


def read_targets(path, labels: List[str], task: str) -> Tuple[List[str], Any]:
    """(texts, label ids) for ``single_label`` data, (texts, multi-hot uint8 matrix) for ``multi_label``."""
    if task == MULTI_LABEL:
        return read_multi_label_split(path, labels)
    if task == SINGLE_LABEL:
        return read_split(path, labels)
    raise ValueError(f"task={task!r}: use {SINGLE_LABEL} or {MULTI_LABEL}")
