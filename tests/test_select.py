"""Selection: every candidate family scored on test with the one metric function; the decision rules."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from finetune.errors import UserError
from finetune.selection import choose
from finetune.selection.decisions import DecisionSettings, Verdict
from finetune.selection.metrics import classification_metrics

REPO = Path(__file__).resolve().parent.parent
LABELS = ["negative", "positive"]


def write_splits(folder: Path, sizes=(240, 80, 80), seed: int = 0, negatives: int = 150) -> SimpleNamespace:
    """Prepared-data-shaped splits (``text,label`` CSVs) from the bundled reviews: >=4 positive, <=2 negative."""
    import pandas as pd

    reviews = pd.read_csv(REPO / "finetune" / "data_files" / "automotive_reviews.csv", keep_default_na=False)
    negative = reviews[reviews.star_rating <= 2].head(negatives)
    positive = reviews[reviews.star_rating >= 4].head(sum(sizes) - len(negative))
    rows = [(t, "negative") for t in negative.review_body] + [(t, "positive") for t in positive.review_body]
    random.Random(seed).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, size in zip(("train", "val", "test"), sizes):
        paths[split] = folder / f"{split}.csv"
        pd.DataFrame(rows[start : start + size], columns=["text", "label"]).to_csv(paths[split], index=False)
        start += size
    (folder / "labels.json").write_text(json.dumps(LABELS))
    return SimpleNamespace(
        train_path=paths["train"],
        val_path=paths["val"],
        test_path=paths["test"],
        labels_path=folder / "labels.json",
        labels=list(LABELS),
    )


def make_automl_candidate(folder: Path, data, labels=LABELS, C: float = 1.0) -> Path:
    """An automl-family candidate without a FLAML search: TF-IDF + logistic regression, as the contract says."""
    import joblib
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    train = pd.read_csv(data.train_path, keep_default_na=False)
    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("model", LogisticRegression(C=C))])
    # Label ids follow the declared order; labels foreign to the data just stand in for the run's ids.
    order = labels if set(labels) == set(LABELS) else LABELS
    pipeline.fit(train.text.tolist(), [order.index(label) for label in train.label])
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    (folder / "candidate.json").write_text(json.dumps({"family": "automl", "labels": labels}))
    return folder


def make_hf_candidate(folder: Path, tiny_model_dir: Path, labels=LABELS) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / "candidate.json").write_text(json.dumps({"family": "hf", "labels": labels, "max_length": 64}))
    return folder


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("splits"))


def test_evaluate_scores_both_families_and_reports_failures(tmp_path, splits, tiny_model_dir):
    import pandas as pd

    automl = make_automl_candidate(tmp_path / "automl", splits)
    hf = make_hf_candidate(tmp_path / "hf", tiny_model_dir)
    # Labels stored in another order than the run's: columns must be mapped by name.
    flipped = make_automl_candidate(tmp_path / "flipped", splits, labels=["positive", "negative"])
    other = make_automl_candidate(tmp_path / "other", splits, labels=["bad", "good"])
    candidates = {
        "automl": automl,
        "finetuned": hf,
        "flipped": flipped,
        "other": other,
        "missing": tmp_path / "nowhere",
    }

    results = choose.evaluate(candidates, splits.test_path, LABELS, proba_dir=tmp_path / "select")

    test = pd.read_csv(splits.test_path, keep_default_na=False)
    y = [LABELS.index(label) for label in test.label]
    assert results["automl"]["family"] == "automl" and results["finetuned"]["family"] == "hf"
    expected = classification_metrics(y, choose.predict_proba(automl, test.text), labels=LABELS)
    # No val split given: every candidate keeps the rule it has (none: argmax).
    assert results["automl"]["test"] == expected == results["automl"]["test_argmax"]
    assert results["automl"]["decision"] == {"rule": "argmax"}
    proba = np.load(results["finetuned"]["test_proba"])
    assert proba.shape == (len(test), 2) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(np.load(results["finetuned"]["test_labels"]), y)
    # The flipped candidate learned "positive"=0; mapped back by name, it scores like the plain one.
    assert math.isclose(results["flipped"]["test"]["auc_weighted"], expected["auc_weighted"], abs_tol=1e-9)
    assert "labels" in results["other"]["error"]
    assert "candidate.json" in results["missing"]["error"] and results["missing"]["family"] is None


def test_a_candidate_saved_under_the_old_key_kind_still_scores(tmp_path, splits):
    """A production model registered before candidate.json's ``kind`` was renamed ``family``."""
    from finetune.plan.results import Candidate, SelectionRow

    old = make_automl_candidate(tmp_path / "old", splits)
    (old / "candidate.json").write_text(json.dumps({"kind": "automl", "labels": LABELS}))
    results = choose.evaluate({"production": old}, splits.test_path, LABELS)
    assert results["production"]["family"] == "automl" and "test" in results["production"]
    assert Candidate.from_dict({"kind": "hf", "path": "/m"}).family == "hf"
    assert SelectionRow.from_dict({"candidate": "automl", "kind": "automl", "auc_weighted": 0.9}).test == {
        "auc_weighted": 0.9
    }


def entry(auc: float, family: str = "hf", accuracy: float = 0.8) -> dict:
    return {"family": family, "test": {"auc_weighted": auc, "accuracy": accuracy, "f1_macro": 0.7}}


def test_choose_best_by_configured_metric(capsys):
    results = {"finetuned": entry(0.90, accuracy=0.70), "automl": entry(0.85, "automl", accuracy=0.80)}
    by_auc = choose.choose(results, "auc_weighted", 0.0)
    assert (by_auc.winner, by_auc.verdict) == ("finetuned", Verdict.REGISTER)
    assert [row.candidate for row in by_auc.table] == ["finetuned", "automl"]
    assert "no production model" in by_auc.reason
    assert choose.choose(results, "accuracy", 0.0).winner == "automl"
    out = capsys.readouterr().out
    assert "finetuned *" in out and "decision: register" in out


def test_choose_ties_prefer_production_then_finetuned_then_name():
    tie = {"b-automl": entry(0.9, "automl"), "a-automl": entry(0.9, "automl"), "finetuned": entry(0.9)}
    assert choose.choose(tie, "auc_weighted", 0.0).winner == "finetuned"
    del tie["finetuned"]
    assert choose.choose(tie, "auc_weighted", 0.0).winner == "a-automl"
    with_production = {**tie, "production": entry(0.9)}
    chosen = choose.choose(with_production, "auc_weighted", 0.0, production_name="production")
    assert (chosen.winner, chosen.verdict) == ("production", Verdict.KEEP_PRODUCTION)
    assert chosen.table[0].family == "production"


def test_choose_keeps_production_within_margin_and_replaces_it_beyond():
    results = {"finetuned": entry(0.93), "production": entry(0.92)}
    kept = choose.choose(results, "auc_weighted", 0.02, production_name="production")
    assert (kept.winner, kept.verdict) == ("production", Verdict.KEEP_PRODUCTION)
    assert "margin" in kept.reason and "nothing is deployed" in kept.reason
    beaten = choose.choose(results, "auc_weighted", 0.005, production_name="production")
    assert (beaten.winner, beaten.verdict) == ("finetuned", Verdict.REGISTER)
    worse = choose.choose({"finetuned": entry(0.80), "production": entry(0.92)}, "auc_weighted", 0.0, "production")
    assert worse.verdict is Verdict.KEEP_PRODUCTION and worse.table[0].candidate == "production"


def test_choose_records_failed_candidates_and_fails_when_none_left():
    results = {
        "finetuned": {"family": "hf", "error": "OSError: no weights"},
        "automl": entry(0.8, "automl"),
        "production": {"family": "hf", "error": "labels differ"},
    }
    chosen = choose.choose(results, "auc_weighted", 0.0, production_name="production")
    assert (chosen.winner, chosen.verdict) == ("automl", Verdict.REGISTER)
    assert chosen.failed == {"finetuned": "OSError: no weights", "production": "labels differ"}
    assert "could not be scored" in chosen.reason
    assert {row.candidate: row.error for row in chosen.table}["finetuned"] == "OSError: no weights"
    only_production = choose.choose(
        {"finetuned": results["finetuned"], "production": entry(0.7)}, "auc_weighted", 0.0, "production"
    )
    assert only_production.verdict is Verdict.KEEP_PRODUCTION
    with pytest.raises(UserError, match="no candidate could be scored.*no weights"):
        choose.choose({"finetuned": results["finetuned"]}, "auc_weighted", 0.0)
    with pytest.raises(UserError, match="select.metric=roc"):
        choose.choose({"automl": entry(0.8, "automl")}, "roc", 0.0)


def test_choose_ranks_undefined_metric_last():
    chosen = choose.choose({"finetuned": entry(float("nan")), "automl": entry(0.6, "automl")}, "auc_weighted", 0.0)
    assert chosen.winner == "automl"


def test_negative_margin_and_unknown_decision_settings_are_config_problems():
    from finetune.config.schema import SelectConfig

    assert choose.check_config(SelectConfig(margin=0.01)) == []
    assert "select.margin=-0.1" in choose.check_config(SelectConfig(margin=-0.1))[0]
    problems = choose.check_config(SelectConfig(decision_metric="auc_weighted", multiclass_rule="vote"))
    assert "select.decision_metric=auc_weighted" in problems[0] and "f1_macro" in problems[0]
    assert "select.multiclass_rule=vote" in problems[1]


def imbalanced_splits(folder: Path) -> SimpleNamespace:
    """Bundled reviews with few negatives (30 of 300): a plain TF-IDF + LR rarely says 'negative' at argmax."""
    return write_splits(folder, sizes=(180, 60, 60), negatives=30)


def test_evaluate_chooses_the_rule_on_val_ships_it_and_tests_at_it(tmp_path):
    import pandas as pd

    from finetune.serve.score import decide

    data = imbalanced_splits(tmp_path / "data")
    new = make_automl_candidate(tmp_path / "new", data)
    shipped_rule = {"rule": "threshold", "positive_label": "positive", "threshold": 0.999}
    production = make_automl_candidate(tmp_path / "production", data)
    info = json.loads((production / "candidate.json").read_text())
    (production / "candidate.json").write_text(json.dumps({**info, "decision": shipped_rule}))
    settings = DecisionSettings(metric="f1_macro", multiclass_rule="auto")

    results = choose.evaluate(
        {"new": new, "production": production},
        data.test_path,
        LABELS,
        val_csv=data.val_path,
        settings=settings,
        keep_rule={"production"},
    )

    rule = json.loads((new / "candidate.json").read_text())["decision"]
    assert rule == results["new"]["decision"] and rule["rule"] == "threshold" and rule["threshold"] > 0.5
    assert rule["val"] > rule["val_argmax"], "the rule is chosen because it beats argmax on val"
    test = pd.read_csv(data.test_path, keep_default_na=False)
    y = [LABELS.index(label) for label in test.label]
    proba = choose.predict_proba(new, test.text)
    assert results["new"]["test"] == classification_metrics(y, proba, decide(proba, LABELS, rule), labels=LABELS)
    assert results["new"]["test_argmax"] == classification_metrics(y, proba, labels=LABELS)
    assert results["new"]["test"]["recall.negative"] > results["new"]["test_argmax"]["recall.negative"]
    # Production answers with the rule it shipped with, never one fitted on this run's val split.
    assert results["production"]["decision"] == shipped_rule
    assert json.loads((production / "candidate.json").read_text())["decision"] == shipped_rule


def test_production_with_other_labels_is_refused_or_replaced_on_request(tmp_path, splits):
    from finetune.serve import ModelRef

    other = make_automl_candidate(tmp_path / "other", splits, labels=["bad", "good"])
    production = ModelRef(name="reviews-sentiment", version="4", path=str(other))
    with pytest.raises(UserError) as refused:
        choose.check_production_labels(production, LABELS, replace_incompatible=False)
    message = str(refused.value)
    assert "\n" not in message and "'reviews-sentiment' (version 4)" in message
    assert "select.registered_model_name=" in message and "select.replace_incompatible=true" in message
    assert choose.check_production_labels(production, LABELS, replace_incompatible=True) is None
    same = ModelRef(name="x", version="1", path=str(make_automl_candidate(tmp_path / "same", splits)))
    assert choose.check_production_labels(same, LABELS, replace_incompatible=False) is same


def test_the_selection_section_round_trips_through_summary_json():
    from finetune.plan.results import SelectionResult

    results = {
        "finetuned": {
            **entry(0.9),
            "decision": {"rule": "argmax"},
            "test_argmax": {"auc_weighted": 0.9},
            "test_proba": "/p.npy",
            "test_labels": "/l.npy",
        },
        "production": entry(0.8, "automl"),
        "automl": {"family": "automl", "error": "OSError: gone"},
    }
    chosen = choose.choose(results, "auc_weighted", 0.0, production_name="production")
    chosen.production_version = {"name": "m", "version": "2"}
    section = chosen.to_dict()
    assert list(section) == [
        "metric",
        "task",
        "margin",
        "production",
        "table",
        "winner",
        "decision",
        "reason",
        "test",
        "failed",
        "production_version",
    ]
    assert section["table"][0] == {
        "candidate": "finetuned",
        "family": "hf",
        "auc_weighted": 0.9,
        "accuracy": 0.8,
        "f1_macro": 0.7,
        "decision": {"rule": "argmax"},
        "test_argmax": {"auc_weighted": 0.9},
        "test_proba": "/p.npy",
        "test_labels": "/l.npy",
    }
    assert section["test"] == {"finetuned": entry(0.9)["test"], "production": entry(0.8)["test"]}
    assert section["failed"] == {"automl": "OSError: gone"}
    assert SelectionResult.from_dict(section) == chosen
    assert SelectionResult.from_dict(json.loads(json.dumps(section))).to_dict() == section
    overruled = chosen.overruled(
        "3", choose.choose({"production": entry(0.95), "finetuned": entry(0.9)}, "auc_weighted", 0.0, "production")
    )
    assert not overruled.promotable and SelectionResult.from_dict(overruled.to_dict()) == overruled
