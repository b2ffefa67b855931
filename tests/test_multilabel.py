"""Multi-label models: metrics, per-label thresholds chosen on val, and what score.py answers with them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.selection.metrics import multi_label_metrics, per_class_key, task_metrics
from finetune.selection.rules import choose_label_thresholds, describe
from finetune.serve.rollout import prediction_problems
from finetune.serve.score import decide, decided_labels
from test_serve_score import load_score
from test_serve_support import TEXTS

LABELS = ["anger", "joy", "it's, odd"]


def test_metrics_match_scikit_learn_definitions():
    from sklearn.metrics import f1_score, hamming_loss, roc_auc_score

    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]])
    proba = np.array([[0.9, 0.2, 0.1], [0.6, 0.4, 0.2], [0.3, 0.8, 0.7], [0.2, 0.1, 0.4], [0.7, 0.6, 0.9]])
    metrics = multi_label_metrics(y, proba, labels=LABELS)
    predicted = (proba >= 0.5).astype(int)
    assert metrics["f1_micro"] == pytest.approx(f1_score(y, predicted, average="micro"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro"))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(y, predicted))
    assert metrics["accuracy"] == pytest.approx(2 / 5), "subset accuracy: rows 1 and 3 are exactly right"
    assert metrics["auc_micro"] == pytest.approx(roc_auc_score(y, proba, average="micro"))
    assert metrics["auc_weighted"] == pytest.approx(roc_auc_score(y, proba, average="weighted"))
    assert metrics["recall.joy"] == pytest.approx(0.5) and metrics["precision.joy"] == pytest.approx(0.5)
    assert per_class_key("f1", "it's, odd") == "f1.it_s_ odd" in metrics, "per-label names are made MLflow-safe"
    assert task_metrics("multi_label", y, proba) == multi_label_metrics(y, proba)


def test_a_label_without_positives_is_left_out_of_auc():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    proba = np.array([[0.8, 0.1], [0.3, 0.2], [0.6, 0.4]])
    metrics = multi_label_metrics(y, proba)
    assert metrics["auc_weighted"] == pytest.approx(1.0) and np.isfinite(metrics["auc_micro"])


def rare_label_scores(seed: int, n: int = 600):
    """Three labels; the rare one is ranked well but its probabilities stay under 0.5 (as BCE gives them)."""
    rng = np.random.default_rng(seed)
    y = np.column_stack([rng.random(n) < 0.4, rng.random(n) < 0.3, rng.random(n) < 0.04]).astype(int)
    proba = np.column_stack(
        [
            np.where(y[:, 0] == 1, rng.uniform(0.4, 0.95, n), rng.uniform(0.05, 0.6, n)),
            np.where(y[:, 1] == 1, rng.uniform(0.45, 0.9, n), rng.uniform(0.05, 0.55, n)),
            np.where(y[:, 2] == 1, rng.uniform(0.2, 0.45, n), rng.uniform(0.0, 0.3, n)),
        ]
    )
    return y, proba


def test_per_label_thresholds_chosen_on_val_carry_to_test():
    y_val, proba_val = rare_label_scores(0)
    decision = choose_label_thresholds(y_val, proba_val, LABELS)
    assert decision.rule == "per_label_thresholds" and set(decision.thresholds) == set(LABELS)
    assert decision.thresholds["it's, odd"] < 0.45, "the rare label's threshold moves to where its scores are"
    assert decision.val > decision.val_argmax
    y_test, proba_test = rare_label_scores(1)
    at_half = multi_label_metrics(y_test, proba_test, labels=LABELS)
    at_rule = multi_label_metrics(y_test, proba_test, decide(proba_test, LABELS, decision.to_dict()), labels=LABELS)
    assert at_half["recall.it_s_ odd"] == 0.0 and at_rule["recall.it_s_ odd"] > 0.5
    assert at_rule["f1_macro"] > at_half["f1_macro"] + 0.15
    assert at_rule["auc_weighted"] == at_half["auc_weighted"], "ranking metrics do not depend on the rule"
    assert describe(decision).startswith("per-label P >= t")


@pytest.mark.slow  # scikit-learn at every cut
def test_threshold_search_f1_matches_scikit_learn_at_every_cut():
    from sklearn.metrics import f1_score

    from finetune.selection.rules import _cuts, _f1_at_cuts

    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 2, 200)
        scores = np.round(rng.random(200), 2)  # ties, as rounded probabilities have
        cuts = _cuts(scores)
        expected = [f1_score(truth, scores >= cut, zero_division=0.0) for cut in cuts]
        assert np.allclose(_f1_at_cuts(truth, scores, cuts), expected)


@pytest.mark.slow  # every cut of every label
def test_a_rare_labels_threshold_is_the_best_of_every_cut():
    """5,000 val texts, 12 positives: quantiles of all the scores would leave a few cuts among the positives."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    n, positives = 5000, 12
    truth = np.zeros(n, dtype=np.int64)
    truth[:positives] = 1
    scores = np.where(truth == 1, rng.beta(6, 2, n), rng.beta(1, 30, n))
    scores[positives : positives + 10] = rng.uniform(0.4, 0.9, 10)  # negatives that look positive
    y, proba = truth[:, None], scores[:, None]
    chosen = choose_label_thresholds(y, proba, ["rare"]).thresholds["rare"]
    best = max(f1_score(truth, scores >= cut) for cut in np.unique(scores))
    assert f1_score(truth, scores >= chosen) == pytest.approx(best)


@pytest.mark.slow  # every single-label change
def test_micro_f1_thresholds_no_single_label_change_improves_pooled_f1():
    """select.decision_metric=f1_micro: checked by brute force, every cut of every label, at the chosen thresholds."""
    from sklearn.metrics import f1_score

    y_val, proba_val = rare_label_scores(4, n=300)
    # A calibrated, weak rare label: its own F1 is best at a low threshold (answering often), pooled F1 at a
    # higher one, since a false positive there costs as much as on a frequent, well-predicted label.
    rng = np.random.default_rng(5)
    proba_val[:, 2] = rng.beta(1, 8, len(y_val))
    y_val[:, 2] = rng.random(len(y_val)) < proba_val[:, 2]
    for_micro = choose_label_thresholds(y_val, proba_val, LABELS, "f1_micro")
    for_macro = choose_label_thresholds(y_val, proba_val, LABELS, "f1_macro")
    assert for_micro.metric == "f1_micro" and for_macro.metric == "f1_macro"
    thresholds = np.array([for_micro.thresholds[label] for label in LABELS])
    chosen = f1_score(y_val, proba_val >= thresholds, average="micro")
    assert for_micro.val == pytest.approx(chosen)
    at_macro_rule = multi_label_metrics(y_val, proba_val, decide(proba_val, LABELS, for_macro.to_dict()))["f1_micro"]
    assert chosen > at_macro_rule, "the per-label F1 thresholds are where the pooled search starts"
    assert for_micro.thresholds["it's, odd"] > for_macro.thresholds["it's, odd"]
    for column in range(len(LABELS)):
        for cut in np.unique(proba_val[:, column]):
            moved = thresholds.copy()
            moved[column] = cut
            assert f1_score(y_val, proba_val >= moved, average="micro") <= chosen + 1e-12


def test_decision_metrics_are_checked_for_the_task():
    from finetune.errors import UserError
    from finetune.selection.rules import check_config, choose_decision

    assert check_config("f1_micro", "auto", "multi_label") == [] and check_config("f1_micro", "auto", "auto") == []
    problems = check_config("accuracy", "auto", "multi_label")
    assert len(problems) == 1 and "select.decision_metric=accuracy" in problems[0] and "f1_micro" in problems[0]
    assert check_config("f1_micro", "auto", "single_label"), "micro F1 of one label per text is accuracy"
    with pytest.raises(UserError, match="select.decision_metric=recall_macro"):
        choose_label_thresholds(*rare_label_scores(0), LABELS, "recall_macro")
    with pytest.raises(UserError, match="select.decision_metric=f1_micro"):
        choose_decision([0, 1, 1], [[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]], ["no", "yes"], "f1_micro")


def test_a_label_absent_from_val_keeps_one_half():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    proba = np.array([[0.9, 0.7], [0.2, 0.1], [0.6, 0.2], [0.4, 0.3]])
    assert choose_label_thresholds(y, proba, ["a", "b"]).thresholds["b"] == 0.5


def test_decide_gives_label_sets():
    proba = np.array([[0.7, 0.2, 0.1], [0.5, 0.6, 0.4], [0.1, 0.1, 0.1]])
    rule = {"rule": "per_label_thresholds", "thresholds": {"anger": 0.6, "joy": 0.5, "it's, odd": 0.35}}
    assert decide(proba, LABELS, rule).tolist() == [[True, False, False], [False, True, True], [False, False, False]]
    assert decided_labels(proba, LABELS, rule) == [["anger"], ["joy", "it's, odd"], []]


def make_multi_label_candidate(folder, texts, targets, labels):
    """A one-vs-rest TF-IDF + logistic regression pipeline as a multi-label ``automl`` candidate."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("model", OneVsRestClassifier(LogisticRegression(C=10)))])
    pipeline.fit(texts, np.asarray(targets))
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    (folder / "candidate.json").write_text(json.dumps({"family": "automl", "task": "multi_label", "labels": labels}))
    return folder


TARGETS = [[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_score_answers_label_lists_at_the_shipped_thresholds(monkeypatch, tmp_path):
    folder = make_multi_label_candidate(tmp_path / "automl", TEXTS, TARGETS, LABELS)
    body = {"data": [{"text": text} for text in TEXTS]}
    plain = load_score(monkeypatch, folder).run(body)["predictions"]
    assert all(set(p["labels"]) == {label for label, v in p["probabilities"].items() if v >= 0.5} for p in plain), (
        "without a shipped rule every label is decided at 0.5"
    )
    assert not prediction_problems(body, {"predictions": plain})
    joy = [p["probabilities"]["joy"] for p in plain]
    lowest, second = sorted(set(joy))[:2]
    threshold = (lowest + second) / 2
    thresholds = {"anger": 0.5, "joy": threshold, "it's, odd": 0.99}
    info = json.loads((folder / "candidate.json").read_text())
    (folder / "candidate.json").write_text(
        json.dumps({**info, "decision": {"rule": "per_label_thresholds", "thresholds": thresholds}})
    )
    decided = load_score(monkeypatch, folder).run(json.dumps(body))["predictions"]
    for before, after in zip(plain, decided):
        assert after["probabilities"] == before["probabilities"], "the rule changes labels, never probabilities"
        assert ("joy" in after["labels"]) == (before["probabilities"]["joy"] >= threshold)
        assert "it's, odd" not in after["labels"]
    assert sum("joy" in p["labels"] for p in decided) == len(TEXTS) - joy.count(lowest)


def test_score_refuses_a_single_label_rule_for_a_multi_label_model(monkeypatch, tmp_path):
    folder = make_multi_label_candidate(tmp_path / "automl", TEXTS, TARGETS, LABELS)
    info = json.loads((folder / "candidate.json").read_text())
    (folder / "candidate.json").write_text(json.dumps({**info, "decision": {"rule": "argmax"}}))
    with pytest.raises(ValueError, match="does not fit task 'multi_label'"):
        load_score(monkeypatch, folder)


def test_hf_multi_label_scores_are_sigmoids(monkeypatch, tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir,
        num_labels=3,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / "candidate.json").write_text(json.dumps({"family": "hf", "task": "multi_label", "labels": LABELS}))
    predictions = load_score(monkeypatch, folder).run({"data": [{"text": t} for t in TEXTS[:2]]})["predictions"]
    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(**tokens).logits)[0].tolist()
    assert [predictions[0]["probabilities"][label] for label in LABELS] == pytest.approx(expected, abs=1e-5)


def test_smoke_test_checks_label_lists():
    request = {"data": [{"text": "a"}]}
    good = {"predictions": [{"labels": ["joy"], "probabilities": {"joy": 0.9, "anger": 0.8}}]}
    assert not prediction_problems(request, good)
    unknown = {"predictions": [{"labels": ["fear"], "probabilities": {"joy": 0.9, "anger": 0.8}}]}
    assert "is not one of its probabilities" in prediction_problems(request, unknown)[0]
    outside = {"predictions": [{"labels": [], "probabilities": {"joy": 1.2, "anger": 0.1}}]}
    assert "outside [0, 1]" in prediction_problems(request, outside)[0]
