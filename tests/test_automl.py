"""The local AutoML baseline: a real (short) FLAML search that leaves a loadable, honest candidate."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest

from finetune.config.schema import AutomlConfig
from finetune.errors import ConfigProblems
from finetune.selection.automl import ONE_LINER, check_config, clearly_better, one_liner, run_automl
from finetune.selection.metrics import classification_metrics
from test_select import LABELS, write_splits


@pytest.mark.slow  # a real FLAML search
def test_run_automl_leaves_a_loadable_candidate(tmp_path, capsys):
    data = write_splits(tmp_path / "data")
    cfg = AutomlConfig(engine="local", time_budget_s=4, max_features=2000)

    candidate = run_automl(data, cfg, tmp_path / "automl", seed=0)

    model_dir = tmp_path / "automl" / "model"
    assert candidate["family"] == "automl" and candidate["path"] == str(model_dir)
    assert candidate["best_estimator"] in [*cfg.estimators, ONE_LINER] and candidate["time_budget_s"] == 4
    # FLAML's pick is kept only when it beats the one-liner clearly on fresh folds of train.
    cv = candidate["cv_auc"]
    assert len(cv["folds"]["one_liner"]) == cfg.cv_folds
    assert np.mean(cv["folds"]["one_liner"]) == pytest.approx(cv["one_liner"], abs=1e-4)
    assert (candidate["best_estimator"] == ONE_LINER) == (
        cv["flaml"] is None or not clearly_better(cv["folds"]["flaml"], cv["folds"]["one_liner"])
    )
    assert "local AutoML baseline" in candidate["description"]
    info = json.loads((model_dir / "candidate.json").read_text())
    assert info["family"] == "automl" and info["labels"] == LABELS
    assert info["best_estimator"] == candidate["best_estimator"] and info["config"] == candidate["best_config"]
    json.dumps(candidate)  # plain data only: it goes into summary.json

    # The pipeline takes raw texts; its val metrics are the ones reported (fitted on train only).
    pipeline = joblib.load(model_dir / "model.joblib")
    val = pd.read_csv(data.val_path, keep_default_na=False)
    proba = pipeline.predict_proba(val.text.tolist())
    assert proba.shape == (len(val), 2) and np.allclose(proba.sum(axis=1), 1)
    assert list(pipeline.classes_) == [0, 1]
    y = [LABELS.index(label) for label in val.label]
    assert candidate["val"] == pytest.approx(classification_metrics(y, proba))
    assert candidate["val"]["auc_weighted"] > 0.6
    assert (
        json.loads((tmp_path / "automl" / "result.json").read_text())["best_estimator"] == candidate["best_estimator"]
    )

    # FLAML's chatter goes to the log file; the console gets the start and end lines.
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(line.startswith("local AutoML baseline") for line in out)
    assert "iteration 0" in (tmp_path / "automl" / "flaml.log").read_text()
    trials = [json.loads(line) for line in (tmp_path / "automl" / "flaml_trials.jsonl").read_text().splitlines()]
    # The search starts at the TF-IDF + logistic regression one-liner (L2, C=1) and ranks by CV on train.
    assert (trials[0]["learner"], trials[0]["config"]) == ("lrl2", {"C": 1.0})
    assert "Evaluation method: cv" in (tmp_path / "automl" / "flaml.log").read_text()
    words, chars = pipeline.named_steps["tfidf"].transformer_list
    assert words[1].ngram_range == (1, 2) and chars[1].ngram_range == (3, 5)


@pytest.mark.slow  # a FLAML search
def test_the_one_liner_is_kept_when_flaml_has_nothing_better(tmp_path, monkeypatch, capsys):
    # A search that finishes no trial (a busy machine, a tiny budget) still leaves the one-liner, exactly.
    from flaml import AutoML

    monkeypatch.setattr(AutoML, "fit", lambda self, **kwargs: None)
    monkeypatch.setattr(AutoML, "model", None, raising=False)
    data = write_splits(tmp_path / "data")
    candidate = run_automl(data, AutomlConfig(engine="local", time_budget_s=4), tmp_path / "automl", seed=0)
    assert candidate["best_estimator"] == ONE_LINER and candidate["cv_auc"]["flaml"] is None
    kept = joblib.load(tmp_path / "automl" / "model" / "model.joblib")
    train = pd.read_csv(data.train_path, keep_default_na=False)
    val = pd.read_csv(data.val_path, keep_default_na=False)
    by_hand = one_liner().fit(train.text.tolist(), [LABELS.index(label) for label in train.label])
    assert np.allclose(kept.predict_proba(val.text.tolist()), by_hand.predict_proba(val.text.tolist()))
    assert "best tfidf_lr_one_liner" in capsys.readouterr().out


def test_a_gain_within_one_standard_error_is_not_clearly_better():
    one_liner_folds = [0.90, 0.88, 0.93, 0.86, 0.91]
    # Both gain 0.01 on average; the noisy one's per-fold gains (+0.04, -0.03, +0.02, 0, +0.02) have a
    # standard error of 0.0118, the steady one's (+0.01 on every fold) none.
    noisy = [0.94, 0.85, 0.95, 0.86, 0.93]
    steady = [0.91, 0.89, 0.94, 0.87, 0.92]
    assert not clearly_better(noisy, one_liner_folds)
    assert clearly_better(steady, one_liner_folds)
    assert not clearly_better(one_liner_folds, one_liner_folds)


def test_automl_settings_are_checked():
    bad = AutomlConfig(engine="local", estimators=["lgbm", "svc"], time_budget_s=0, max_features=0, cv_folds=1)
    problems = check_config(bad)
    assert len(problems) == 4 and "svc" in problems[0] and "automl.cv_folds=1" in problems[3]
    assert check_config(AutomlConfig(engine="none", estimators=[])) == []
    with pytest.raises(ConfigProblems, match="automl.time_budget_s=0"):
        run_automl(None, bad, None, 0)


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_a_class_without_train_examples_is_named(tmp_path, task):
    from types import SimpleNamespace

    from finetune.errors import UserError

    folder = tmp_path / "data"
    folder.mkdir()
    cells = {"single_label": ("positive", "positive"), "multi_label": ("['positive']", "['negative', 'positive']")}
    for split, label in zip(("train", "val"), cells[task]):
        pd.DataFrame({"text": ["fine", "great"], "label": [label, label]}).to_csv(folder / f"{split}.csv", index=False)
    data = SimpleNamespace(
        train_path=folder / "train.csv", val_path=folder / "val.csv", labels=["negative", "positive"], task=task
    )
    with pytest.raises(UserError, match=r"no training example of \['negative'\]"):
        run_automl(data, AutomlConfig(engine="local", time_budget_s=4), tmp_path / "automl", seed=0)
