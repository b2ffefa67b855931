"""A sweep over NER data optimises entity F1 on val (issue 27): ``dataset.task=ner`` alone makes ``val_f1_entity`` the
sweep's objective, each trial's values are its val entity F1, and the kept trial is the best by it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from finetune.cli.main import compose, expand
from finetune.data import prepare
from finetune.plan.build import build_plan
from finetune.search.runner import run_sweep


@pytest.mark.slow  # two real (tiny) token-classification trials: about 70 s on a shared 2-core CPU
def test_a_random_sweep_on_the_ner_sample_optimises_val_entity_f1(tmp_path, tiny_model_dir):
    args = [
        "budget=none",
        f"output_root={tmp_path}",
        "dataset=wnut17_sample",
        f"model.path={tiny_model_dir}",
        "model.epochs=1",
        "model.max_length=32",
        "compute.device=cpu",
        "compute.num_threads=1",
        "search=random",
        "search.limits.max_total_trials=2",
        "search.limits.max_concurrent_trials=1",
        # a high learning rate: one epoch of the tiny BERT then finds some entities, so trials differ
        "search.space.learning_rate=choice(3e-3,1e-2)",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    [(overrides, space)] = expand(args, multirun=False)
    plan = build_plan(compose(overrides, space), overrides, "ner-sweep")
    assert plan.search.primary_metric == "val_f1_entity"  # not the classifiers' default, val_auc_weighted

    with contextlib.redirect_stdout(io.StringIO()):
        sweep = run_sweep(plan, prepare(plan.dataset, tmp_path / "data"), tmp_path / "sweep").to_dict()

    assert (sweep["primary_metric"], sweep["goal"]) == ("val_f1_entity", "maximize")
    completed = [trial for trial in sweep["trials"] if trial["status"] == "completed"]
    assert len(completed) == 2
    best = sweep["best"]
    assert best["trial"] == max(completed, key=lambda trial: trial["best_value"])["number"]
    # The objective is the trial's val entity F1, as its own training result recorded it.
    assert best["value"] == best["val"]["f1_entity"]
    for trial in completed:
        recorded = json.loads((Path(tmp_path) / "sweep" / f"trial-{trial['number']:03d}" / "result.json").read_text())
        assert trial["best_value"] == max(v for v in trial["values"] if v is not None)
        assert recorded["val"]["f1_entity"] in trial["values"], (recorded["val"], trial["values"])
