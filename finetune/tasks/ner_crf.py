"""The NER baseline candidate: a linear-chain CRF (sklearn-crfsuite) over classic word-shape features.

The simplest strong NER baseline (Lafferty et al. 2001; the features are
:func:`finetune.serve.ner_score.crf_features`, which also serve it). Its L1/L2 regularisation (``c1``, ``c2``)
is chosen on val by entity F1 (the one metric, :mod:`finetune.tasks.ner_metrics`), and the CRF fitted with that
pair is the candidate folder the NER entry script serves.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from finetune.data.ner import Sentence, read_prepared
from finetune.serve.ner_score import crf_features, repair_tags
from finetune.tasks.ner_metrics import entity_metrics

# c1 (L1) x c2 (L2): the grid around sklearn-crfsuite's tutorial values (c1=0.1, c2=0.1), its centre first and
# its corners last, so that a grid its time budget cuts short has tried the likeliest pairs.
GRID = tuple(
    sorted(
        ((c1, c2) for c1 in (0.01, 0.05, 0.25) for c2 in (0.01, 0.05, 0.25)),
        key=lambda pair: abs(math.log(pair[0] / 0.05)) + abs(math.log(pair[1] / 0.05)),
    )
)
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
    time_budget_s: float | None = None,
) -> dict:
    """Choose ``(c1, c2)`` on val and keep that fit as the candidate folder; returns candidate.json's content.

    With ``time_budget_s`` the grid stops before a fit that would end past it by the mean fit so far (the
    first always runs): the local plan gives this stage the AutoML stage's seconds."""
    data_dir, out_dir, grid = Path(data_dir), Path(out_dir), list(grid)
    train, val = read_prepared(data_dir / "train.jsonl"), read_prepared(data_dir / "val.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = out_dir / MODEL_FILE
    started = time.time()
    tried, best = [], None
    for c1, c2 in grid:
        elapsed = time.time() - started
        if tried and time_budget_s is not None and elapsed + elapsed / len(tried) > time_budget_s:
            break
        trying = out_dir / f"trying-{MODEL_FILE}"
        crf = fit(train, c1, c2, trying, max_iterations=max_iterations)
        metrics = entity_metrics([s.tags for s in val], predict(crf, val))
        tried.append({"c1": c1, "c2": c2, "val_f1_entity": metrics["f1_entity"]})
        if best is None or metrics["f1_entity"] > best[1]["f1_entity"]:
            best = (tried[-1], metrics)
            trying.replace(kept)
        else:
            trying.unlink()
    params, val_metrics = best
    candidate = {
        "family": "crf",
        "task": "ner",
        "labels": labels,
        "crf_file": MODEL_FILE,
        "best_estimator": "crf",
        "params": {"c1": params["c1"], "c2": params["c2"]},
        "grid": tried,
        "grid_skipped": len(grid) - len(tried),
        "val": val_metrics,
        "duration_s": round(time.time() - started, 1),
    }
    (out_dir / "candidate.json").write_text(json.dumps(candidate, indent=2) + "\n", encoding="utf-8")
    return {**candidate, "path": str(out_dir)}
