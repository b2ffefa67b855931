"""The split, computed here rather than with scikit-learn: one permutation from numpy's legacy ``RandomState``
(whose stream numpy guarantees across versions) drives both ``dataset.sample`` and the split, so the same input
and seed give byte-identical split files locally and on Azure ML, and each class is split on its own so every
class is in every split by construction, or a UserError says why not."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List

from finetune.config import DatasetConfig
from finetune.data.sources import label_setting
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan import RunPlan


def assign_splits(label_ids: List[int], labels: List[str], dataset: DatasetConfig) -> Dict[int, int]:
    """Row index -> split index (0 train, 1 val, 2 test), in the seeded order the split files use."""
    import numpy as np

    total = len(label_ids)
    if dataset.sample is not None and dataset.sample > total:
        raise UserError(f"dataset.sample={dataset.sample}: larger than the {total} labelled rows; use "
                        f"dataset.sample={total} or less, or null for all rows")
    order = np.random.RandomState(dataset.seed).permutation(total).tolist()
    by_class: List[List[int]] = [[] for _ in labels]
    for row in order:
        by_class[label_ids[row]].append(row)

    wanted = total if dataset.sample is None else dataset.sample
    fractions = (dataset.val_fraction, dataset.test_fraction)
    assignment: Dict[int, int] = {}
    takes = _proportional(wanted, [len(rows) for rows in by_class])
    for label, rows, take in zip(labels, by_class, takes):
        # A class that would round to no row in val or test still gets one: metrics need every class there.
        val, test = (max(1, math.floor(take * f + 0.5)) for f in fractions)
        if take - val - test < 1:
            if dataset.sample is not None:
                setting, within, fix = f"dataset.sample={dataset.sample}", "the sample", "use a larger dataset.sample"
            else:
                key, column = label_setting(dataset)
                setting, within, fix = f"dataset.{key}={column}", "the data", "add rows of it or drop the class"
            raise UserError(f"{setting}: class '{label}' has {take} row{'' if take == 1 else 's'} in {within}, too few "
                            f"for one in each of train, val and test (it needs 3); {fix}")
        for position, row in enumerate(rows[:take]):
            assignment[row] = 0 if position < take - val - test else (1 if position < take - test else 2)
    return {row: assignment[row] for row in order if row in assignment}


def _proportional(total: int, sizes: List[int]) -> List[int]:
    """``total`` shared out in proportion to ``sizes`` (largest remainder; ties to the lower class id)."""
    whole = sum(sizes)
    shares = [total * size // whole for size in sizes]
    remainders = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def check_split(plan: "RunPlan") -> List[str]:
    """The split fractions and the sample size, for the plan check."""
    data, problems = plan.dataset, []
    fractions = (data.train_fraction, data.val_fraction, data.test_fraction)
    for key, value in zip(("train_fraction", "val_fraction", "test_fraction"), fractions):
        if not 0 < value < 1:
            problems.append(f"dataset.{key}={value}: must be between 0 and 1")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        problems.append(f"dataset.train_fraction+val_fraction+test_fraction={sum(fractions):g}: "
                        "the split fractions must sum to 1")
    if data.sample is not None and data.sample < 10:
        problems.append(f"dataset.sample={data.sample}: must be at least 10 rows (or null for all)")
    return problems
