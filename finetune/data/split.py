"""The split, computed here rather than with scikit-learn: one permutation from numpy's legacy ``RandomState``
(whose stream numpy guarantees across versions) drives both ``dataset.sample`` and the split, so the same input
and seed give byte-identical split files locally and on Azure ML, and each class is split on its own so every
class is in every split by construction, or a UserError says why not.

Multi-label rows cannot be split per class (a row has several), and a random split loses rare labels from
val and test. They are split by iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011, "On the
stratification of multi-label data"): the label with the fewest rows left goes first, each of its rows to the
split that still wants most of that label. It is implemented here rather than taken from scikit-multilearn,
an unmaintained extra dependency, and with the same seeded ``RandomState``; ``dataset.sample`` draws the rows
first, then they are stratified. Each label's wanted count per split is at least one when it has 3 rows or
more, as for single-label classes; a label with fewer gets a printed note instead of an error.

A predefined split (``dataset.split_files`` or ``dataset.split_column``) is reproduced as published, rows in
file order; ``dataset.sample`` then takes a seeded random sample of each split, in proportion to its size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Sequence

from finetune.config.schema import DatasetConfig
from finetune.data.sources import SPLIT_NAMES, label_setting
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan


def assign_splits(label_ids: List[int], labels: List[str], dataset: DatasetConfig) -> Dict[int, int]:
    """Row index -> split index (0 train, 1 val, 2 test), in the seeded order the split files use."""
    import numpy as np

    total = len(label_ids)
    wanted = _sample_size(total, dataset)
    order = np.random.RandomState(dataset.seed).permutation(total).tolist()
    by_class: List[List[int]] = [[] for _ in labels]
    for row in order:
        by_class[label_ids[row]].append(row)

    fractions = (dataset.val_fraction, dataset.test_fraction)
    assignment: Dict[int, int] = {}
    takes = _proportional(wanted, [len(rows) for rows in by_class])
    for label, rows, take in zip(labels, by_class, takes):
        if not rows:  # a name of dataset.label_names_file no row has
            continue
        # A class that would round to no row in val or test still gets one: metrics need every class there.
        val, test = (max(1, math.floor(take * f + 0.5)) for f in fractions)
        if take - val - test < 1:
            if dataset.sample is not None:
                setting, within, fix = f"dataset.sample={dataset.sample}", "the sample", "use a larger dataset.sample"
            else:
                key, column = label_setting(dataset)
                setting, within, fix = f"dataset.{key}={column}", "the data", "add rows of it or drop the class"
            raise UserError(
                f"{setting}: class '{label}' has {take} row{'' if take == 1 else 's'} in {within}, too few "
                f"for one in each of train, val and test (it needs 3); {fix}"
            )
        for position, row in enumerate(rows[:take]):
            assignment[row] = 0 if position < take - val - test else (1 if position < take - test else 2)
    return {row: assignment[row] for row in order if row in assignment}


def _sample_size(total: int, dataset: DatasetConfig) -> int:
    if dataset.sample is not None and dataset.sample > total:
        raise UserError(
            f"dataset.sample={dataset.sample}: larger than the {total} labelled rows; use "
            f"dataset.sample={total} or less, or null for all rows"
        )
    return total if dataset.sample is None else dataset.sample


def assign_multi_label_splits(label_sets: List[List[int]], labels: List[str], dataset: DatasetConfig) -> Dict[int, int]:
    """Row index -> split index by iterative stratification, in the seeded order the split files use."""
    import numpy as np

    wanted = _sample_size(len(label_sets), dataset)
    random = np.random.RandomState(dataset.seed)
    chosen = random.permutation(len(label_sets)).tolist()[:wanted]
    fractions = (dataset.val_fraction, dataset.test_fraction)
    counts = [0] * len(labels)
    rows_of: List[List[int]] = [[] for _ in labels]
    for row in chosen:
        for label in label_sets[row]:
            counts[label] += 1
            rows_of[label].append(row)
    desired_rows = _three_way(wanted, fractions)
    desired: List[List[float]] = []
    for label, count in enumerate(counts):
        if count >= 3:
            desired.append(_three_way(count, fractions, at_least_one=True))
        else:
            desired.append([count * (1 - sum(fractions)), count * fractions[0], count * fractions[1]])
            if count:
                print(
                    f"note: label '{labels[label]}' has {count} row{'' if count == 1 else 's'}"
                    f"{' in the sample' if dataset.sample is not None else ''}, too few for one in each of train, "
                    "val and test; it is not in every split",
                    flush=True,
                )

    assignment: Dict[int, int] = {}

    def place(row: int, wants: Sequence[float]) -> None:
        best = [s for s in range(3) if wants[s] == max(wants)]
        if len(best) > 1:  # the split that wants most rows overall, then a seeded draw
            best = [s for s in best if desired_rows[s] == max(desired_rows[t] for t in best)]
        split = best[0] if len(best) == 1 else best[random.randint(len(best))]
        assignment[row] = split
        desired_rows[split] -= 1
        for label in label_sets[row]:
            desired[label][split] -= 1
            left[label] -= 1

    left = list(counts)
    while any(left):
        label = min((n, label) for label, n in enumerate(left) if n)[1]
        for row in rows_of[label]:
            if row not in assignment:
                place(row, desired[label])
    for row in chosen:
        if row not in assignment:  # rows with no labels (dataset.allow_empty_labels)
            place(row, desired_rows)
    return {row: assignment[row] for row in chosen}


def _three_way(total: int, fractions: Sequence[float], at_least_one: bool = False) -> List[float]:
    """[train, val, test] counts of ``total``, val and test rounded half up (and at least 1 if asked)."""
    val, test = (math.floor(total * f + 0.5) for f in fractions)
    if at_least_one:
        val, test = max(1, val), max(1, test)
    return [total - val - test, val, test]


SPLIT_VALUES = {"train": 0, "val": 1, "validation": 1, "dev": 1, "test": 2}


def split_index(value, dataset: DatasetConfig, where: str) -> int:
    """0 train, 1 val, 2 test from a ``dataset.split_column`` cell."""
    index = SPLIT_VALUES.get(str(value).strip().lower()) if value is not None else None
    if index is None:
        raise UserError(
            f"dataset.split_column={dataset.split_column}: {where} holds {value!r}; use train, val "
            "(or validation, dev) or test"
        )
    return index


def assign_predefined_splits(splits: List[int], dataset: DatasetConfig) -> Dict[int, int]:
    """Row index -> split index as published, in file order; with ``dataset.sample`` a seeded sample of each
    split in proportion to its size."""
    import numpy as np

    wanted = _sample_size(len(splits), dataset)
    if wanted == len(splits):
        return dict(enumerate(splits))
    order = np.random.RandomState(dataset.seed).permutation(len(splits)).tolist()
    by_split: List[List[int]] = [[row for row in order if splits[row] == index] for index in range(3)]
    takes = _proportional(wanted, [len(rows) for rows in by_split])
    chosen = sorted(row for rows, take in zip(by_split, takes) for row in rows[:take])
    for name, rows, take in zip(SPLIT_NAMES, by_split, takes):
        if rows and not take:
            raise UserError(
                f"dataset.sample={dataset.sample}: leaves no row of the {name} split ({len(rows)} rows); "
                "use a larger dataset.sample"
            )
    return {row: splits[row] for row in chosen}


def check_unseen_labels(counts: Dict[str, Dict[str, int]], dataset: DatasetConfig, method: str) -> None:
    """A label in val or test that train never shows cannot be learnt, and its metrics would be meaningless."""
    unseen = [
        label
        for label in counts["train"]
        if not counts["train"][label] and (counts["val"][label] or counts["test"][label])
    ]
    if not unseen:
        return
    if dataset.predefined_files():
        setting = f"dataset.split_files={dataset.predefined_files()}"
        fix = "add train rows with them or drop them from val/test"
    elif dataset.split_column:
        setting, fix = f"dataset.split_column={dataset.split_column}", "mark rows with them as train"
    else:
        setting, fix = f"dataset.label_column={dataset.label_column}", "add rows with them or drop them"
    if dataset.sample is not None:
        fix += ", or use a larger dataset.sample"
    labels = f"label {unseen[0]!r} occurs" if len(unseen) == 1 else f"labels {', '.join(map(repr, unseen[:10]))} occur"
    raise UserError(f"{setting}: {labels} in val or test but never in train ({method} split); {fix}")


def _proportional(total: int, sizes: List[int]) -> List[int]:
    """``total`` shared out in proportion to ``sizes`` (largest remainder; ties to the lower class id)."""
    whole = sum(sizes)
    shares = [total * size // whole for size in sizes]
    remainders = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def check_split(plan: "RunPlan") -> List[str]:
    """The split fractions, the sample size and a predefined split, for the plan check."""
    data = plan.dataset
    problems = split_problems(data)
    fractions = (data.train_fraction, data.val_fraction, data.test_fraction)
    for key, value in zip(("train_fraction", "val_fraction", "test_fraction"), fractions):
        if not 0 < value < 1:
            problems.append(f"dataset.{key}={value}: must be between 0 and 1")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        problems.append(
            f"dataset.train_fraction+val_fraction+test_fraction={sum(fractions):g}: the split fractions must sum to 1"
        )
    if data.sample is not None and data.sample < 10:
        problems.append(f"dataset.sample={data.sample}: must be at least 10 rows (or null for all)")
    return problems


def split_problems(data: DatasetConfig) -> List[str]:
    """A predefined split's settings (also checked by ``prepare``, which the plan check may not precede)."""
    problems = []
    files = data.predefined_files()
    if files:
        if sorted(files) != sorted(SPLIT_NAMES):
            problems.append(
                f"dataset.split_files={files}: name a file for each of train, val and "
                "test and nothing else, e.g. {train: train.tsv, val: dev.tsv, test: test.tsv}"
            )
        if data.split_column:
            problems.append(
                f"dataset.split_column={data.split_column}: a second predefined split beside "
                "dataset.split_files; set one of them to null"
            )
    return problems
