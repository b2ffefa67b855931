"""The AutoML test step's NER half: AutoML's ``text_ner`` best model tagging the test split, scored by the entity
metric every NER candidate is scored by (:func:`finetune.tasks.ner_metrics.entity_metrics`).

AutoML's NER model is azureml-automl-dnn-nlp's NER ``ModelWrapper`` (azureml/automl/dnn/nlp/ner/model_wrapper.py)
saved as an MLflow model: ``predict_proba(X: str)`` takes the sentences as CoNLL text without labels and answers
``token TAG probability`` lines (:func:`finetune.serve.ner_score.automl_request` / ``automl_answer``, which the
endpoint's entry script uses too). Like the classifiers it loads only in AutoML's runtime, so it tags in a small
script run by that environment's interpreter. Its tags are argmax per token; they are repaired to IOB2 as every
NER candidate's are, and no rule is chosen on val (the NER decision is fixed: argmax, IOB2).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import List

from finetune.data.ner import read_prepared
from finetune.errors import UserError
from finetune.serve.ner_score import automl_answer, automl_request
from finetune.tasks.ner_metrics import entity_metrics, error_kinds, wrong_sentences

DECISION = {"rule": "argmax_iob2"}  # what NerTask.evaluate records for every NER candidate

# Runs in the AutoML model's environment (mlflow, no finetune package).
TAG_SCRIPT = """\
import sys
import mlflow

model_dir, request_file, answer_file = sys.argv[1:4]
try:
    import mlflow.sklearn
    model = mlflow.sklearn.load_model(model_dir)
except Exception:
    model = mlflow.pyfunc.load_model(model_dir).unwrap_python_model()
answer = model.predict_proba(open(request_file, encoding="utf-8").read())
open(answer_file, "w", encoding="utf-8").write(answer)
"""


def automl_tags(model_dir: Path, sentences: List[List[str]], python: str) -> list:
    """``[(tags, scores)]`` of each sentence (a list of words), from the AutoML model run by ``python``."""
    with tempfile.TemporaryDirectory(prefix="automl-ner-test-") as scratch:
        scratch = Path(scratch)
        (scratch / "request.txt").write_text(automl_request(sentences), encoding="utf-8")
        (scratch / "tag.py").write_text(TAG_SCRIPT, encoding="utf-8")
        subprocess.run(
            [
                python,
                str(scratch / "tag.py"),
                str(model_dir),
                str(scratch / "request.txt"),
                str(scratch / "answer.txt"),
            ],
            check=True,
        )
        return automl_answer((scratch / "answer.txt").read_text(encoding="utf-8"), sentences)


def ner_candidate_result(model_dir: Path, test_file: str, labels: List[str], python: str) -> dict:
    """AutoML's NER model as a candidate: a :meth:`finetune.tasks.ner.NerTask.evaluate` entry for the test split."""
    test = [sentence for sentence in read_prepared(test_file) if sentence.tokens]
    predicted = [tags for tags, _ in automl_tags(model_dir, [s.tokens for s in test], python)]
    unknown = sorted({tag for tags in predicted for tag in tags} - set(labels))
    if unknown:
        raise UserError(f"the AutoML NER model answers tags {unknown[:5]} that are not this run's tags {labels}")
    gold = [s.tags for s in test]
    return {
        "decision": dict(DECISION),
        "test": entity_metrics(gold, predicted),
        "errors": error_kinds(gold, predicted),
        "examples": wrong_sentences([s.tokens for s in test], gold, predicted),
        "rows": len(test),
    }
