"""The report's NER sections: entities per type and split, what reading repaired, every candidate's entity
F1 on test, per-type precision/recall/F1, boundary vs type errors and a few wrong predictions in context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.report.common import table

if TYPE_CHECKING:
    from finetune.plan.summary import RunSummary

# Written by selection (finetune.tasks.ner's evaluate) beside its outputs, read here: each candidate's error kinds
# and wrong examples.
ERRORS_FILE = "ner_errors.json"
ERROR_KINDS = {
    "type": "right span, wrong type",
    "boundary": "overlaps an entity of its type, other bounds",
    "boundary_and_type": "overlaps an entity of another type, other bounds",
    "spurious": "overlaps no entity",
    "missed": "gold entities nothing overlaps",
}


def ner_data_section(summary: "RunSummary") -> list[str]:
    data = summary.data
    if data is None or not data.splits:
        return []
    types = sorted({kind for split in data.splits.values() for kind in split.get("class_counts", {})})
    lines = [
        "## Data",
        "",
        f"Source: `{data.source}`; {data.rows_raw} sentences read, split {data.split}; "
        f"entity types: {', '.join(types)}. Counts are entities (B- tags).",
        "",
    ]
    rows = [
        [
            name,
            split.get("rows"),
            split.get("tokens"),
            *(split.get("class_counts", {}).get(t, 0) for t in types),
            (split.get("sha256") or "")[:12],
        ]
        for name, split in data.splits.items()
    ]
    lines += [table(["split", "sentences", "tokens", *types, "sha256"], rows), ""]
    if data.ner:
        lines += [
            "What reading repaired: stray `I-X` tags (no open `X`) became `O`, as seqeval's strict IOB2 "
            "mode reads them; span entities not on word boundaries were widened to the words, overlapping "
            "ones dropped.",
            "",
            table(
                [
                    "file",
                    "sentences",
                    "IOBES converted",
                    "stray I- tags",
                    "-DOCSTART- lines",
                    "unaligned spans",
                    "overlapping spans",
                ],
                [
                    [
                        name,
                        s["sentences"],
                        "yes" if s["iobes_converted"] else "no",
                        s["stray_inside_tags"],
                        s["docstart_lines"],
                        s["entities_unaligned"],
                        s["entities_overlapping"],
                    ]
                    for name, s in data.ner.items()
                ],
            ),
            "",
        ]
    return lines


def ner_selection_section(summary: "RunSummary", run_dir: Path) -> list[str]:
    selection, candidates = summary.selection, summary.candidates
    if selection is None:
        return []
    metric, winner = selection.metric, selection.winner
    columns = ["f1_entity", "precision_entity", "recall_entity", "f1_macro_entity"]
    rows = []
    for row in selection.table:
        candidate = candidates.get(row.candidate)
        val = ((candidate.val if candidate is not None else None) or {}).get(metric)
        name = f"**{row.candidate}** (chosen)" if row.candidate == winner else row.candidate
        rows.append(
            [name, row.family, val, *(["failed: " + row.error] if row.error else [row.test.get(c) for c in columns])]
        )
    lines = [
        "## Candidates on the test split",
        "",
        "Every candidate tags the test sentences' words as the endpoint does (argmax per word, repaired to "
        "IOB2); an entity counts when its span and type match exactly (seqeval, strict IOB2). Chosen by test "
        f"`{metric}` (margin over production: {selection.margin:g}).",
        "",
        table(["candidate", "family", f"val {metric}", *(f"test {c}" for c in columns)], rows),
        "",
        f"**Decision: {selection.verdict}** — {selection.reason}",
        "",
    ]
    scored = [row for row in selection.table if row.error is None]
    types = sorted({key.split(".", 1)[1] for row in scored for key in row.test if key.startswith("support.")})
    if types:
        lines += [
            "### Per entity type (test)",
            "",
            table(
                ["type", "support", *(f"{row.candidate} P / R / F1" for row in scored)],
                [
                    [
                        kind,
                        scored[0].test.get(f"support.{kind}"),
                        *(
                            " / ".join(f"{row.test.get(f'{m}.{kind}', 0.0):.3f}" for m in ("precision", "recall", "f1"))
                            for row in scored
                        ),
                    ]
                    for kind in types
                ],
            ),
            "",
        ]
    errors_file = Path(run_dir) / "select" / ERRORS_FILE
    analysis = json.loads(errors_file.read_text(encoding="utf-8")) if errors_file.is_file() else {}
    if analysis:
        lines += [
            "### Wrong entities by kind (test)",
            "",
            table(
                ["kind", "what", *analysis],
                [
                    [kind, what, *(entry["errors"].get(kind, 0) for entry in analysis.values())]
                    for kind, what in ERROR_KINDS.items()
                ],
            ),
            "",
        ]
        examples = (analysis.get(winner) or next(iter(analysis.values())))["examples"]
        if examples:
            lines += [
                f"### Wrong predictions of {winner if winner in analysis else next(iter(analysis))} in "
                "context (first test sentences that differ)",
                "",
            ]
            for example in examples:
                gold = ", ".join(f"{text} ({kind})" for text, kind in example["gold"]) or "none"
                predicted = ", ".join(f"{text} ({kind})" for text, kind in example["predicted"]) or "none"
                lines += [f"- {example['text']}", f"  - gold: {gold}", f"  - predicted: {predicted}"]
            lines.append("")
    return lines
