"""Builders shared by the serving tests: small candidates of both families and a loopback HTTP call.

No tests here; the test_serve_* modules import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

LABELS = ["negative", "positive"]
TEXTS = [
    "Great value, fits my truck perfectly.",
    "Cheap plastic, broke in a week.",
    "Works as described.",
    "Terrible, returned it.",
    "Love it, easy install.",
    "Leaks and smells bad.",
]


def make_hf_candidate(base_dir: Path, folder: Path, registered: dict | None = None) -> Path:
    """A 2-label classifier on the tiny BERT, saved as an ``hf`` candidate."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)}
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    (folder / "candidate.json").write_text(json.dumps({"family": "hf", "labels": LABELS}))
    if registered:
        (folder / "registered.json").write_text(json.dumps(registered))
    return folder


def make_automl_candidate(folder: Path, unfitted_vectorizer: bool = False) -> Path:
    """A TF-IDF + logistic regression pipeline as an ``automl`` candidate.

    ``unfitted_vectorizer`` swaps in an unfitted first step: the server starts, every prediction fails.
    """
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    pipeline.fit(TEXTS, [1, 0, 1, 0, 1, 0])
    if unfitted_vectorizer:
        pipeline.steps[0] = ("tfidf", TfidfVectorizer())
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    (folder / "candidate.json").write_text(json.dumps({"family": "automl", "labels": LABELS}))
    return folder


def request(n: int = 2) -> dict:
    return {"data": [{"text": TEXTS[i % len(TEXTS)]} for i in range(n)]}


def post(
    port: int, body: bytes | dict, headers: dict | None = None, path: str = "/score", timeout: float = 60
) -> tuple[int, dict, object]:
    """POST to 127.0.0.1:port; (status, lower-cased headers, parsed JSON body or text)."""
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        found = {key.lower(): value for key, value in response.getheaders()}
    finally:
        connection.close()
    try:
        return response.status, found, json.loads(raw)
    except ValueError:
        return response.status, found, raw.decode("utf-8", "replace")


def score_alone(model_dir: Path, blocked_module: str) -> dict:
    """score.py's answer to one text, run in a fresh interpreter where importing ``blocked_module`` fails:
    what a deployment without that package (finetune on AML, torch in an ONNX environment) would do."""
    import json
    import subprocess
    import sys

    from finetune.serve import SCORE_SCRIPT

    program = f"""
import importlib.util, json, os, sys
sys.modules[{blocked_module!r}] = None  # any import of it now fails
os.environ["AZUREML_MODEL_DIR"] = {str(model_dir)!r}
spec = importlib.util.spec_from_file_location("score", {str(SCORE_SCRIPT)!r})
score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score)
score.init()
print(json.dumps(score.run(json.dumps({{"data": [{{"text": "works"}}]}}))))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
