"""report.md: every section from a full summary; a minimal run still gets a valid report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finetune.plan.results import SweepTrial
from finetune.plan.summary import RunSummary
from finetune.report import write_report
from finetune.selection import choose
from finetune.selection.metrics import classification_metrics
from finetune.serve.score import decide
from test_select import LABELS, make_automl_candidate, write_splits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data_section(splits) -> dict:
    section = {
        "source": "bundled",
        "raw_sha256": "r" * 64,
        "labels": LABELS,
        "rows_raw": 500,
        "rows_labelled": 400,
        "splits": {},
    }
    for name in ("train", "val", "test"):
        frame = pd.read_csv(getattr(splits, f"{name}_path"), keep_default_na=False)
        section["splits"][name] = {
            "path": str(getattr(splits, f"{name}_path")),
            "rows": len(frame),
            "sha256": name[0] * 64,
            "class_counts": frame.label.value_counts().to_dict(),
        }
    return section


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("splits"))


def full_summary(run_dir: Path, splits) -> dict:
    automl = make_automl_candidate(run_dir / "automl" / "model", splits)
    production = make_automl_candidate(run_dir / "production", splits, C=0.05)
    results = choose.evaluate(
        {"automl": automl, "production": production}, splits.test_path, LABELS, proba_dir=run_dir / "select"
    )
    # A fine-tuned model's probabilities: the truth blurred by noise, saved as choose.evaluate would.
    y = np.load(results["automl"]["test_labels"])
    noisy = np.clip(np.eye(2)[y] * 0.4 + np.random.default_rng(0).random((len(y), 2)) * 0.8, 1e-3, None)
    proba = noisy / noisy.sum(axis=1, keepdims=True)
    np.save(run_dir / "select" / "finetuned_test_proba.npy", proba)
    rule = {"rule": "threshold", "positive_label": "positive", "threshold": 0.7}
    results["finetuned"] = {
        "family": "hf",
        "decision": rule,
        "test_argmax": classification_metrics(y, proba, labels=LABELS),
        "test": classification_metrics(y, proba, decide(proba, LABELS, rule), labels=LABELS),
        "test_proba": str(run_dir / "select" / "finetuned_test_proba.npy"),
        "test_labels": results["automl"]["test_labels"],
    }
    results["broken"] = {"family": "hf", "error": "OSError: no model weights"}
    selection = choose.choose(results, "auc_weighted", 0.0, production_name="production").to_dict()

    result_file = run_dir / "train" / "result.json"
    result_file.parent.mkdir(parents=True)
    result_file.write_text(
        json.dumps(
            {
                "evaluations": [
                    {
                        "step": 15 * i,
                        "epoch": i / 2,
                        "val_loss": 0.7 - 0.1 * i,
                        "val_auc_weighted": 0.6 + 0.07 * i,
                        "val_accuracy": 0.55 + 0.06 * i,
                        "val_f1_macro": 0.5 + 0.06 * i,
                    }
                    for i in range(1, 6)
                ],
                "train_loss": [{"step": 5 * i, "epoch": i / 6, "loss": 0.7 - 0.03 * i} for i in range(1, 16)],
            }
        )
    )
    trials = [
        {
            "number": 0,
            "status": "completed",
            "best_value": 0.91,
            "values": [0.7, 0.85, 0.91],
            "duration_s": 40.0,
            "params": {"learning_rate": 3e-5, "batch_size": 16},
        },
        {
            "number": 1,
            "status": "early_terminated",
            "best_value": 0.62,
            "values": [0.6, 0.62],
            "duration_s": 21.0,
            "params": {"learning_rate": 1e-6, "batch_size": 32},
            "reason": "early-terminated by bandit at interval 2",
        },
        {
            "number": 2,
            "status": "completed",
            "best_value": 0.88,
            "values": [0.75, None, 0.88],
            "duration_s": 39.0,
            "params": {"learning_rate": 8e-5, "batch_size": 16},
        },
        {
            "number": 3,
            "status": "failed",
            "best_value": None,
            "values": [],
            "duration_s": 2.0,
            "params": {"learning_rate": 1e-4, "batch_size": 64},
            "reason": "out of memory",
        },
    ]
    return {
        "schema_version": 1,
        "run": {
            "name": "full",
            "run_dir": str(run_dir),
            "launcher": "local",
            "started": "2026-01-01T10:00:00+00:00",
            "finished": "2026-01-01T10:20:00+00:00",
            "duration_s": 1200.0,
            "stages": ["data", "search", "automl", "select", "register", "deploy"],
        },
        "data": data_section(splits),
        "candidates": {
            "finetuned": {
                "family": "hf",
                "path": str(run_dir / "sweep" / "trial-0" / "model"),
                "val": {"auc_weighted": 0.91},
            },
            "automl": {
                "family": "automl",
                "path": str(automl),
                "val": {"auc_weighted": 0.88},
                "description": "local AutoML baseline (FLAML on TF-IDF)",
            },
        },
        "training": {
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "hyperparameters": {"learning_rate": 3e-5, "batch_size": 16, "epochs": 2.0, "max_length": 128},
        },
        "sweep": {
            "sampling": "random",
            "policy": {"type": "bandit"},
            "primary_metric": "val_auc_weighted",
            "goal": "maximize",
            "trials": trials,
            "best": {
                "trial": 0,
                "params": trials[0]["params"],
                "value": 0.91,
                "model_dir": str(run_dir / "sweep" / "trial-0" / "model"),
                "val": {"auc_weighted": 0.91},
                "result_file": str(result_file),
            },
            "compute": {"trial_epochs": 6.5, "trial_seconds": 102.0, "wall_seconds": 110.0},
        },
        "selection": selection,
        "registry": {
            "name": "automotive-sentiment",
            "version": "3",
            "existing": False,
            "content_sha256": "c" * 64,
            "git_commit": "abc123",
            "source": "file:///store/artifacts/model",
        },
        "rollout": {
            "status": "succeeded",
            "target": "local",
            "endpoint": "finetune-sentiment",
            "deployment": "green",
            "model": {"name": "automotive-sentiment", "version": "3", "path": "/x"},
            "scoring_uri": "http://127.0.0.1:5001/score",
            "previous_traffic": {"blue": 100},
            "traffic": {"green": 100},
            "ramp": [10, 100],
            "steps": [
                {"percent": 10, "requests": 5, "errors": 0, "error_rate": 0.0, "seconds": 0.21},
                {"percent": 100, "requests": 5, "errors": 0, "error_rate": 0.0, "seconds": 0.18},
            ],
            "deleted": ["blue"],
            "smoke_test": {
                "latency_ms": 48.2,
                "response": {
                    "predictions": [{"label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}}],
                    "model": {"name": "automotive-sentiment", "version": "3"},
                },
            },
            "timings": {"create_s": 3.2, "smoke_s": 0.05, "shift_s": 0.4, "delete_s": 0.6, "total_s": 4.25},
            "warnings": [],
            "state_file": "/endpoints/finetune-sentiment/state.json",
            "running": False,
            "serve_command": "python -m finetune.serve --endpoint finetune-sentiment",
        },
    }


def saved(run_dir: Path, summary: dict) -> RunSummary:
    """``summary`` written as a run's summary.json and read back typed, as a report rewritten later reads it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return RunSummary.load(run_dir)


@pytest.mark.slow  # every figure of a full report
def test_full_summary_renders_every_section(tmp_path, splits):
    summary = full_summary(tmp_path, splits)

    report = write_report(tmp_path, saved(tmp_path, summary))

    text = report.path.read_text()
    for heading in (
        "# Run full",
        "## Data",
        "## Hyperparameter sweep",
        "## Training curves",
        "## Candidates on the test split",
        "### Chosen model on test",
        "## Registry",
        "## Endpoint",
    ):
        assert heading in text
    assert "local AutoML baseline (FLAML on TF-IDF)" in text and "failed: OSError: no model weights" in text
    assert f"**Decision: {summary['selection']['decision']}**" in text
    # Each candidate's shipped rule and its per-class recall at that rule.
    finetuned = next(row for row in summary["selection"]["table"] if row["candidate"] == "finetuned")
    assert "P(positive) >= 0.700" in text and "test recall (negative / positive)" in text
    assert f"{finetuned['recall.negative']:.2f} / {finetuned['recall.positive']:.2f}" in text
    assert "figures" not in summary  # the report returns what it wrote; summary.json's figures are the launcher's
    names = {p.name for p in report.figures}
    assert names == {
        "data_class_balance.png",
        "data_text_length.png",
        "sweep_trials.png",
        "learning_curves.png",
        "candidates.png",
        "confusion_matrix.png",
        "roc.png",
    }
    # The facts a reader looks for first, and the rollout's timings as text (the plot of them said nothing more).
    for fact in (
        "**base model**: `sentence-transformers/all-MiniLM-L6-v2`",
        "learning_rate 3e-05, batch_size 16",
        "**data**: train ",
        "**duration**: 1200 s",
        "**finished**: 2026-01-01T10:20:00+00:00",
        "Rollout took 4.2 s",
    ):
        assert fact in text, fact
    for path in report.figures:
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
        assert f"(figures/{Path(path).name})" in text
    json.dumps(summary)  # still serialisable for summary.json


def test_minimal_summaries_still_give_a_valid_report(tmp_path, splits):
    # search=none, automl=none, endpoint=none: one candidate, no probabilities saved, production kept.
    results = {
        "finetuned": {
            "family": "hf",
            "test": {name: 0.8 for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "auc_weighted")},
        }
    }
    summary = {
        "run": {"name": "minimal", "launcher": "local"},
        "data": data_section(splits),
        "candidates": {
            "finetuned": {
                "family": "hf",
                "path": "/nowhere",
                "val": {"auc_weighted": 0.8},
                "result_file": str(tmp_path / "missing.json"),
            }
        },
        "selection": choose.choose(results, "auc_weighted", 0.0).to_dict(),
        "registry": {"decision": "keep_production", "reason": "not better than production"},
    }
    report = write_report(tmp_path / "minimal", saved(tmp_path / "minimal", summary))
    text = report.path.read_text()
    assert "## Candidates on the test split" in text and "Nothing registered: not better" in text
    for absent in ("## Hyperparameter sweep", "## Training curves", "### Chosen model", "## Endpoint"):
        assert absent not in text
    assert {p.name for p in report.figures} == {"data_class_balance.png", "data_text_length.png", "candidates.png"}

    bare = {"run": {"name": "bare"}}
    bare_report = write_report(tmp_path / "bare", saved(tmp_path / "bare", bare))
    assert bare_report.path.read_text().startswith("# Run bare") and bare_report.figures == []


def test_the_html_report_is_one_self_contained_page(tmp_path, splits):
    summary = full_summary(tmp_path, splits)
    report = write_report(tmp_path, saved(tmp_path, summary))
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h2>Hyperparameter sweep</h2>" in page
    assert page.count('src="data:image/png;base64,') == len(report.figures)
    assert 'src="figures/' not in page


def test_the_sweep_view_zooms_past_a_trial_stopped_far_behind():
    from finetune.report.training import _zoom

    trials = [
        SweepTrial(0, {}, "completed", 0.951, [0.93, 0.951]),
        SweepTrial(1, {}, "early_terminated", 0.62, [0.62]),
        SweepTrial(2, {}, "completed", 0.944, [0.92, 0.944]),
    ]
    low, high = _zoom(trials)
    assert 0.9 < low < 0.93 and 0.951 < high < 0.97  # 0.944 vs 0.951 stays visible; 0.62 is marked at the edge


def test_a_saved_summary_reads_back_typed_and_writes_the_same_summary_json(tmp_path, splits):
    original = full_summary(tmp_path, splits)
    first = saved(tmp_path / "again", original).to_dict()
    # (The sweep's trials here lack keys a real sweep writes; test_search_runner reads a real one back.)
    for section in ("run", "selection", "rollout", "candidates"):
        expected = original[section]
        if section == "candidates":  # summary.json shows each candidate's test figures from the selection
            expected = {
                name: {
                    **c,
                    "test": original["selection"]["test"][name],
                    "decision": next(r["decision"] for r in original["selection"]["table"] if r["candidate"] == name),
                }
                for name, c in expected.items()
            }
        assert json.loads(json.dumps(first[section])) == expected, section
    assert saved(tmp_path / "twice", first).to_dict() == json.loads(json.dumps(first))


def test_a_task_brings_its_own_report_sections(tmp_path, splits):
    """The report takes the run's task object's data and candidate sections: a new task plugs its own in without
    an edit to the report (before, the report chose NER's sections with an ``if`` on the task name)."""
    from finetune.tasks.single_label import SingleLabelTask

    class SentencePairTask(SingleLabelTask):
        name = "sentence_pair"

        def data_report(self, summary, figures, run_dir):
            return ["## Data", "", f"pairs in {sorted(summary.data.splits)}"]

        def selection_report(self, summary, figures, run_dir):
            return ["## Candidates on the test split", "", f"pair candidates beside {Path(run_dir).name}"]

    summary = {"run": {"name": "pairs"}, "data": {**data_section(splits), "task": "sentence_pair"}}
    text = write_report(tmp_path / "pairs", saved(tmp_path / "pairs", summary), SentencePairTask()).path.read_text()
    assert "pairs in ['test', 'train', 'val']" in text and "pair candidates beside pairs" in text
