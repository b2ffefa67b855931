"""The report's data section: class balance (multi-label: label frequency and co-occurrence) and text length
per split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.report.common import Figures, table
from finetune.report.multilabel import data_lines

if TYPE_CHECKING:
    from finetune.plan.summary import RunSummary


def data_section(summary: "RunSummary", figures: Figures) -> list[str]:
    data = summary.data
    if data is None or not data.splits:
        return []
    # The split files' paths beside their counts, as summary.json has them.
    labels, splits = data.labels, data.to_dict()["splits"]
    lines = [
        "## Data",
        "",
        f"Source: `{data.source}`; {data.rows_raw} raw rows, "
        f"{data.rows_labelled} labelled; {'labels' if data.task == 'multi_label' else 'classes'}: "
        f"{', '.join(labels)}.",
        "",
    ]
    if data.task == "multi_label":
        return lines + data_lines(labels, splits, figures) + _length_lines(splits, figures)
    rows = []
    for name, split in splits.items():
        counts, total = split.get("class_counts", {}), split.get("rows") or 0
        rows.append(
            [
                name,
                total,
                *(f"{counts.get(label, 0)} ({100 * counts.get(label, 0) / max(total, 1):.1f}%)" for label in labels),
                (split.get("sha256") or "")[:12],
            ]
        )
    lines += [table(["split", "rows", *labels, "sha256"], rows), ""]

    figure, (axis,) = figures.new()
    width, highest = 0.8 / max(len(labels), 1), 0.0
    for index, label in enumerate(labels):
        shares = [
            100 * split.get("class_counts", {}).get(label, 0) / max(split.get("rows") or 0, 1)
            for split in splits.values()
        ]
        positions = [i + (index - (len(labels) - 1) / 2) * width for i in range(len(splits))]
        bars = axis.bar(positions, shares, width, label=label)
        axis.bar_label(bars, fmt="%.0f%%", fontsize=8)
        highest = max([highest, *shares])
    axis.set_xticks(range(len(splits)), [f"{name}\n({split.get('rows')} rows)" for name, split in splits.items()])
    axis.set_ylabel("share of split (%)")
    axis.set_ylim(0, highest * 1.3 + 1)  # headroom: the legend sits above the bars
    axis.set_title("Class balance per split")
    axis.legend(title="class", loc="upper center", ncols=min(len(labels), 4))
    lines += [figures.save(figure, "data_class_balance", "class balance per split"), ""]
    return lines + _length_lines(splits, figures)


def _length_lines(splits: dict, figures: Figures) -> list[str]:
    lines: list[str] = []
    lengths = _text_lengths(splits)
    if lengths:
        import numpy as np

        figure, (axis,) = figures.new()
        everything = np.concatenate(list(lengths.values()))
        upper = max(float(np.percentile(everything, 99)), 1.0)
        bins = np.linspace(0, upper, 40)
        for name, values in lengths.items():
            axis.hist(
                np.clip(values, 0, upper),
                bins=bins,
                histtype="step",
                linewidth=1.5,
                weights=np.full(len(values), 100 / len(values)),
                label=f"{name} (median {np.median(values):.0f})",
            )
        axis.set_xlabel("text length (words; longer texts counted in the last bin)")
        axis.set_ylabel("share of split (%)")
        axis.set_title("Text length per split")
        axis.legend(title="split")
        lines += [figures.save(figure, "data_text_length", "text length per split"), ""]
    return lines


def _text_lengths(splits: dict) -> dict:
    import numpy as np
    import pandas as pd

    lengths = {}
    for name, split in splits.items():
        path = split.get("path")
        if path and Path(path).is_file():
            texts = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["text"])["text"]
            if len(texts):
                lengths[name] = np.asarray(texts.str.split().str.len(), dtype=float)
    return lengths
