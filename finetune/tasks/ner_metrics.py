"""Entity-level metrics of NER: one function for training's val metrics, the CRF, selection, the report and
the benchmark.

An entity is an exact (sentence, start, end, type) as seqeval's strict IOB2 mode reads tags (an ``I-X`` that
no ``B-X`` opens belongs to no entity), so ``f1_entity`` equals ``seqeval.metrics.f1_score(..., mode="strict",
scheme=IOB2)`` (tests/test_ner_metrics.py holds the two together). Spans with character offsets (what the
endpoint answers) are scored by :func:`span_metrics` with the same counting, exact (start, end, type) match.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Sequence, Set, Tuple

Entity = Tuple[int, int, int, str]  # (sentence, first token, end token exclusive, type)


def entities(tag_rows: Sequence[Sequence[str]]) -> Set[Entity]:
    """Every entity of ``tag_rows`` as seqeval's strict IOB2 mode finds it."""
    from seqeval.scheme import IOB2, Entities

    found = Entities([list(row) for row in tag_rows], IOB2, suffix=False)
    return {(entity.sent_id, entity.start, entity.end, entity.tag) for row in found.entities for entity in row}


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Dict[str, float]:
    """``f1_entity``/``precision_entity``/``recall_entity`` (micro over entities), their macro average over types,
    and ``precision.<type>``/``recall.<type>``/``f1.<type>``/``support.<type>``."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tag rows differ in length")
    return prf(entities(gold), entities(predicted))


def span_metrics(gold: Iterable[Iterable[tuple]], predicted: Iterable[Iterable[tuple]]) -> Dict[str, float]:
    """The same figures for per-text sets of ``(start, end, type)`` character spans (exact match)."""
    gold_set = {(i, *span) for i, spans in enumerate(gold) for span in spans}
    predicted_set = {(i, *span) for i, spans in enumerate(predicted) for span in spans}
    return prf(gold_set, predicted_set)


def prf(gold: Set[tuple], predicted: Set[tuple]) -> Dict[str, float]:
    """Precision, recall and F1 of exact matches; the type is each tuple's last field."""
    metrics = _scores(len(gold & predicted), len(predicted), len(gold))
    result = {f"{name}_entity": value for name, value in metrics.items()}
    types = sorted({entity[-1] for entity in gold | predicted})
    per_type = []
    for kind in types:
        gold_k = {e for e in gold if e[-1] == kind}
        predicted_k = {e for e in predicted if e[-1] == kind}
        scores = _scores(len(gold_k & predicted_k), len(predicted_k), len(gold_k))
        for name, value in scores.items():
            result[f"{name}.{kind}"] = value
        result[f"support.{kind}"] = len(gold_k)
        if gold_k:
            per_type.append(scores["f1"])
    result["f1_macro_entity"] = sum(per_type) / len(per_type) if per_type else 0.0
    return result


def _scores(correct: int, predicted: int, gold: int) -> Dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def error_kinds(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Dict[str, int]:
    """Each wrong predicted entity by kind: ``type`` (right span, wrong type), ``boundary`` (overlaps a gold
    entity of its type with other bounds), ``boundary_and_type`` (overlaps one of another type, other bounds),
    ``spurious`` (overlaps none); and ``missed``: gold entities no prediction overlaps."""
    gold_set, predicted_set = entities(gold), entities(predicted)
    kinds: Counter = Counter()
    for entity in predicted_set - gold_set:
        overlapping = [g for g in gold_set if _overlap(g, entity)]
        if not overlapping:
            kinds["spurious"] += 1
        elif any(g[1:3] == entity[1:3] for g in overlapping):
            kinds["type"] += 1
        elif any(g[3] == entity[3] for g in overlapping):
            kinds["boundary"] += 1
        else:
            kinds["boundary_and_type"] += 1
    kinds["missed"] = sum(1 for g in gold_set if not any(_overlap(g, p) for p in predicted_set))
    return {kind: kinds.get(kind, 0) for kind in ("type", "boundary", "boundary_and_type", "spurious", "missed")}


def wrong_sentences(
    tokens: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], limit: int = 5
) -> List[dict]:
    """A few sentences whose predicted entities differ from the gold ones, with both entity lists in context."""
    gold_set, predicted_set = entities(gold), entities(predicted)
    examples = []
    for index, words in enumerate(tokens):
        gold_here = sorted(e for e in gold_set if e[0] == index)
        predicted_here = sorted(e for e in predicted_set if e[0] == index)
        if gold_here == predicted_here:
            continue
        examples.append(
            {
                "text": " ".join(words),
                "gold": [(" ".join(words[e[1] : e[2]]), e[3]) for e in gold_here],
                "predicted": [(" ".join(words[e[1] : e[2]]), e[3]) for e in predicted_here],
            }
        )
        if len(examples) == limit:
            break
    return examples


def _overlap(a: Entity, b: Entity) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]
