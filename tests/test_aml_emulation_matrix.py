"""The AML emulation on the paths users take beyond the CPU fine-tuned path (tests/test_aml_emulation.py): a multi-label
dataset against the AutoML multi-label stand-in, a data-parallel trial in 2 processes, a second dataset in the
same workspace as the first, and NER (the bundled WNUT17 sample) against AutoML's text_ner stand-in. Each runs the exported tree through scripts/aml_emulate.py with the tiny BERT."""

from __future__ import annotations

import json

import pytest

from amlemu.scenarios import by_node, emulate, export_tree, failure, rollouts

# goemotions_sample keeps its published split: below ~2,000 sampled rows some val/test emotion has no train row.
TINY = [
    "model=bert-base-cased",
    "model.epochs=1",
    "model.max_length=32",
    "search=random",
    "search.limits.max_total_trials=1",
]
# AML's AutoML NLP on a GPU cluster, emulated on this CPU: the plan names a T4 SKU, the jobs run on the CPU.
AUTOML_ON_A_CPU = ["compute=t4", "compute.device=cpu", "compute.precision=fp32", "automl=text_classification"]


@pytest.mark.slow
def test_multi_label_with_the_automl_multi_label_stand_in(tmp_path, tiny_model_dir):
    tree = export_tree(
        [
            *TINY,
            f"model.path={tiny_model_dir}",
            "dataset=goemotions_sample",
            "dataset.sample=2000",
            *AUTOML_ON_A_CPU,
        ],
        tmp_path / "run",
    )
    completed, results = emulate([tree], tmp_path / "work")
    assert completed.returncode == 0, failure(completed)
    nodes = by_node(results)
    assert nodes["automl"]["status"] == "stand-in" and nodes["deploy"]["status"] == "completed"
    predictions = rollouts(tmp_path / "work")[-1]["smoke_test"]["response"]["predictions"]
    assert predictions and all(isinstance(p["labels"], list) for p in predictions)


@pytest.mark.slow
def test_a_data_parallel_trial_runs_as_two_ranks(tmp_path, tiny_model_dir):
    """compute=a100x4's PyTorch distribution on CPU: 2 processes per node here instead of 4 GPUs, gloo."""
    tree = export_tree(
        [
            *TINY,
            f"model.path={tiny_model_dir}",
            "compute=a100x4",
            "compute.device=cpu",
            "compute.precision=fp32",
            "compute.processes_per_node=2",
            "automl=none",
            "dataset.sample=200",
        ],
        tmp_path / "run",
    )
    import yaml

    trial = yaml.safe_load((tree / "pipeline.yml").read_text())["jobs"]["sweep"]["trial"]
    assert trial["distribution"] == {"type": "pytorch", "process_count_per_instance": 2}
    completed, results = emulate([tree], tmp_path / "work")
    assert completed.returncode == 0, failure(completed)
    sweep = by_node(results)["sweep"]
    assert sweep["trials"][0]["status"] == "completed" and sweep["trials"][0]["val_auc_weighted"] is not None
    trial_dir = next((tmp_path / "work" / "jobs").glob("*-sweep_trial0"))
    # Both ranks formed one process group (AML's variables, gloo on CPU): the Trainer trained a world of 2, and the
    # second rank ran to the end in its own log.
    result = json.loads((trial_dir / "outputs" / "custom_model" / "result.json").read_text())
    assert result["runtime"]["world_size"] == 2 and result["runtime"]["batch"]["global_batch_size"] == 32
    assert "completed after" in (trial_dir / "std_log_process_01.txt").read_text()
    assert by_node(results)["deploy"]["status"] == "completed"


@pytest.mark.slow
def test_a_second_dataset_deploys_beside_the_first(tmp_path, tiny_model_dir):
    """Two trees, one workspace: the second dataset's rollout leaves the first dataset's endpoint serving.

    Needs per-dataset endpoint names (issue 24, defect 2): with one shared default endpoint the second rollout
    replaces the first's deployment and this test fails."""
    common = [*TINY, f"model.path={tiny_model_dir}", "compute=cpu", "automl=none"]
    first = export_tree([*common, "dataset.sample=200"], tmp_path / "sentiment")
    second = export_tree([*common, "dataset=goemotions_sample", "dataset.sample=2000"], tmp_path / "emotions")
    completed, results = emulate([first, second], tmp_path / "work", timeout=1800)
    assert completed.returncode == 0, failure(completed)
    assert len(results) == len(by_node(results, first)) + len(by_node(results, second))
    endpoints = json.loads((tmp_path / "work" / "endpoints.json").read_text())
    done = rollouts(tmp_path / "work")
    assert len(done) == 2 and done[0]["endpoint"] != done[1]["endpoint"], [d.get("endpoint") for d in done]
    for rollout in done:
        serving = endpoints[rollout["endpoint"]]
        assert serving["traffic"] == {rollout["deployment"]: 100}
        assert rollout["deployment"] in serving["deployments"]


@pytest.mark.slow
def test_ner_with_the_automl_text_ner_stand_in(tmp_path, tiny_model_dir):
    """The bundled WNUT17 sample through the exported NER pipeline: a token-classification trial, AutoML's text_ner
    (stand-in) over the CoNLL MLTables, its model tested by entity F1, the winner registered and rolled out with the
    NER entry script, whose smoke test answers entities at character offsets of the sample request's texts."""
    tree = export_tree(
        [
            *TINY,
            f"model.path={tiny_model_dir}",
            "dataset=wnut17_sample",
            *AUTOML_ON_A_CPU,
        ],
        tmp_path / "run",
    )
    completed, results = emulate([tree], tmp_path / "work")
    assert completed.returncode == 0, failure(completed)
    nodes = by_node(results)
    assert list(nodes) == ["sweep", "automl", "test_automl", "register", "deploy"], list(nodes)
    assert nodes["automl"]["status"] == "stand-in" and nodes["deploy"]["status"] == "completed"
    assert all(t["val_f1_entity"] is not None for t in nodes["sweep"]["trials"])
    tested = next((tmp_path / "work" / "jobs").glob("*-test_automl/outputs/candidate/result.json"))
    assert json.loads(tested.read_text())["task"] == "ner"
    # The memorising stand-in beats one epoch of the tiny BERT: AutoML's NER model is what the endpoint serves.
    chosen = next((tmp_path / "work" / "jobs").glob("*-register/outputs/model_ref/model_ref.json"))
    assert json.loads(chosen.read_text())["candidate"] == "automl"
    sent = json.loads((tree / "settings.json").read_text())["sample_request"]["data"]
    predictions = rollouts(tmp_path / "work")[-1]["smoke_test"]["response"]["predictions"]
    assert len(predictions) == len(sent) and all("entities" in p for p in predictions)
    for item, prediction in zip(sent, predictions):
        for entity in prediction["entities"]:
            assert item["text"][entity["start"] : entity["end"]] == entity["text"]
