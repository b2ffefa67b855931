"""The NER baseline candidate: a linear-chain CRF (sklearn-crfsuite) over classic word-shape features.

The simplest strong NER baseline (Lafferty et al. 2001; the features are
:func:`finetune.serve.ner_score.crf_features`, which also serve it). Its L1/L2 regularisation (``c1``, ``c2``)
is chosen on val by entity F1 (the one metric, :mod:`finetune.tasks.ner_metrics`), then the CRF is refitted on
train with that pair and saved as a candidate folder the NER entry script serves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from finetune.data.ner import Sentence, read_prepared
from finetune.serve.ner_score import crf_features, repair_tags
from finetune.tasks.ner_metrics import entity_metrics

# c1 (L1) x c2 (L2): the grid around sklearn-crfsuite's tutorial values (c1=0.1, c2=0.1)
GRID = tuple((c1, c2) for c1 in (0.01, 0.05, 0.25) for c2 in (0.01, 0.05, 0.25))
MODEL_FILE = "model.crfsuite"


def features(sentences: Sequence[Sentence]) -> List[List[dict]]:
    return [[crf_features(s.tokens, i) for i in range(len(s.tokens))] for s in sentences]


def fit(train: Sequence[Sentence], c1: float, c2: float, model_file: Path | None = None, max_iterations: int = 100):
    import sklearn_crfsuite

    crf = sklearn_crfsuite.CRF(
        algorithm="lbfgs",
        c1=c1,
        c2=c2,
        max_iterations=max_iterations,
        all_possible_transitions=True,
        model_filename=str(model_file) if model_file else None,
    )
    crf.fit(features(train), [s.tags for s in train])
    return crf


def predict(crf, sentences: Sequence[Sentence]) -> List[List[str]]:
    return [repair_tags(list(tags)) for tags in crf.predict(features(sentences))]


def run_crf(
    data_dir: Path | str,
    labels: List[str],
    out_dir: Path | str,
    grid: Iterable[Tuple[float, float]] = GRID,
    max_iterations: int = 100,
) -> dict:
    """Choose ``(c1, c2)`` on val, refit on train, write the candidate folder; returns candidate.json's content."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train, val = read_prepared(data_dir / "train.jsonl"), read_prepared(data_dir / "val.jsonl")
    started = time.time()
    tried = []
    for c1, c2 in grid:
        crf = fit(train, c1, c2, max_iterations=max_iterations)
        score = entity_metrics([s.tags for s in val], predict(crf, val))["f1_entity"]
        tried.append({"c1": c1, "c2": c2, "val_f1_entity": score})
    best = max(tried, key=lambda row: row["val_f1_entity"])
    out_dir.mkdir(parents=True, exist_ok=True)
    crf = fit(train, best["c1"], best["c2"], out_dir / MODEL_FILE, max_iterations=max_iterations)
    val_metrics = entity_metrics([s.tags for s in val], predict(crf, val))
    candidate = {
        "family": "crf",
        "task": "ner",
        "labels": labels,
        "crf_file": MODEL_FILE,
        "best_estimator": "crf",
        "params": {"c1": best["c1"], "c2": best["c2"]},
        "grid": tried,
        "val": val_metrics,
        "duration_s": round(time.time() - started, 1),
    }
    (out_dir / "candidate.json").write_text(json.dumps(candidate, indent=2) + "\n", encoding="utf-8")
    return {**candidate, "path": str(out_dir)}
