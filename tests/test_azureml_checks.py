"""AML-specific plan checks: what azure-ai-ml accepts silently, reported as one-line problems before any work."""

from __future__ import annotations

import json

import pytest

from amlemu.recorder import build, guard_network
from finetune.cli.main import compose
from finetune.errors import ConfigProblems
from finetune.plan.build import build_plan

AML = ["model=bert-base-cased", "search=bandit", "compute=a100", "dry_run=true"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)
    for name in (
        "AZUREML_SUBSCRIPTION_ID",
        "AZURE_SUBSCRIPTION_ID",
        "AZUREML_RESOURCE_GROUP",
        "AZUREML_WORKSPACE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


def problems(tmp_path, overrides, space=None) -> list:
    with pytest.raises(ConfigProblems) as caught:
        build(overrides, tmp_path, space=space)
    return caught.value.problems


def one_problem(tmp_path, overrides, expected: str, space=None) -> str:
    found = problems(tmp_path, overrides, space)
    assert len(found) == 1, found
    assert expected in found[0], found[0]
    assert "\n" not in found[0]
    return found[0]


def test_shipped_aml_configs_are_valid(tmp_path):
    for compute in ("t4", "a100", "a100x4", "h100"):
        build(["model=bert-base-cased", "search=bandit", f"compute={compute}", "dry_run=true"], tmp_path)
    build(["model=minilm-l6", "search=bandit", "compute=cpu", "automl=none", "dry_run=true"], tmp_path)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ab", "3-32 characters"),
        ("a" * 33, "3-32 characters"),
        ("1sentiment", "start with a letter"),
        ("my_endpoint", "start with a letter and hold only letters, digits and '-'"),
        ("sentiment-", "(not last)"),
        ("Sentiment", "lower-cases endpoint names; write it as sentiment"),
    ],
)
def test_endpoint_names(tmp_path, name, expected):
    one_problem(tmp_path, AML + [f"endpoint.name={name}"], f"endpoint.name={name}: ")
    one_problem(tmp_path, AML + [f"endpoint.name={name}"], expected)


@pytest.mark.parametrize("ramp", ["[50]", "[50,30,100]", "[0,100]", "[]"])
def test_traffic_ramp_must_reach_100_in_rising_steps(tmp_path, ramp):
    one_problem(tmp_path, AML + [f"endpoint.ramp={ramp}"], "must be increasing percentages in 1..100 ending at 100")


def test_ramp_steps_are_accepted(tmp_path):
    build(AML + ["endpoint.ramp=[10,50,100]"], tmp_path)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("endpoint.instance_count=0", "endpoint.instance_count=0: a deployment needs at least one instance"),
        ("compute.instance_count=0", "compute.instance_count=0: a job needs at least one node"),
        ("compute.instance_count=5", "compute.instance_count=5: a job on more nodes than the cluster's max_nodes=4"),
        ("endpoint.request_timeout_ms=200000", "endpoint.request_timeout_ms=200000: must be 1..180000"),
        ("endpoint.auth_mode=aad_token", "endpoint.auth_mode=aad_token: a managed endpoint takes key or aml_token"),
        ("endpoint.probe_period_s=0", "endpoint.probe_period_s=0: must be >= 1"),
        ("endpoint.max_concurrent_requests_per_instance=0", "must be >= 1"),
        ("endpoint.target=local", "endpoint.target=local: on AML compute use endpoint=managed or endpoint=none"),
    ],
)
def test_endpoint_and_instance_counts(tmp_path, override, expected):
    one_problem(tmp_path, AML + [override], expected)


@pytest.mark.parametrize(
    "metric",
    [
        "AUC_weighted",
        "auc_weighted",
        "accuracy",
        "norm_macro_recall",
        "average_precision_score_weighted",
        "precision_score_weighted",
    ],
)
def test_automl_metrics_accepted_in_any_case(tmp_path, metric):
    build(AML + [f"automl.primary_metric={metric}"], tmp_path)


@pytest.mark.parametrize("metric", ["f1_weighted", "''", "auc"])
def test_automl_metric_outside_the_nlp_list(tmp_path, metric):
    one_problem(tmp_path, AML + [f"automl.primary_metric={metric}"], "AutoML text classification accepts AUC_weighted")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("automl=local", "automl.engine=local: on AML compute use automl=text_classification"),
        ("automl.model_name=gpt2", "automl.model_name=gpt2: AutoML NLP trains one of"),
        ("automl.language=english", "automl.language=english: a three-letter ISO 639-3 code"),
        ("automl.max_nodes=9", "automl.max_nodes=9: more than the cluster's compute.max_nodes=4"),
        ("automl.max_concurrent_trials=3", "automl.max_concurrent_trials=3: more than max_trials=1"),
        ("automl.timeout_minutes=0", "automl.timeout_minutes=0: must be >= 1"),
    ],
)
def test_automl_settings(tmp_path, override, expected):
    one_problem(tmp_path, AML + [override], expected)


def test_automl_needs_a_gpu_cluster(tmp_path):
    one_problem(
        tmp_path,
        ["model=minilm-l6", "search=bandit", "compute=cpu", "automl=text_classification", "dry_run=true"],
        "AutoML NLP trains on GPU nodes only and compute=cpu has none",
    )


def test_automl_auto_on_a_cpu_cluster_drops_the_automl_stage(tmp_path):
    overrides = ["model=minilm-l6", "search=bandit", "compute=cpu", "dry_run=true", f"output_root={tmp_path}"]
    plan = build_plan(compose(overrides, {}), overrides, "cpu")
    assert plan.automl.engine == "none" and "automl" not in plan.stages


def test_automl_sweep_is_checked(tmp_path):
    sweep = (
        "++automl.sweep={sampling_algorithm: sobol, policy: {type: bandit, slack_factor: -1}, "
        "space: [{model_name: {type: choice, values: [gpt2]}, dropout: 0.1, learning_rate: {type: uniform, min: 2, max: 1}}]}"
    )
    found = problems(tmp_path, AML + [sweep])
    text = "; ".join(found)
    assert "automl.sweep.sampling_algorithm=sobol" in text
    assert "automl.sweep: a sweep needs automl.max_trials >= 2" in text
    assert "automl.sweep.policy.slack_factor=-1" in text
    assert "automl.sweep.space[0].model_name.values: gpt2 not trainable by AutoML NLP" in text
    assert "automl.sweep.space[0].dropout: not an AutoML NLP parameter" in text
    assert "automl.sweep.space[0].learning_rate.min=2" in text


@pytest.mark.parametrize(
    "override, expected",
    [
        ("compute.cluster_name=1gpu", "compute.cluster_name=1gpu: AML cluster names are 2-16 letters"),
        ("compute.cluster_name=gpu-a100-cluster-x", "AML cluster names are 2-16"),
        ("compute.vm_size=null", "compute.vm_size=None: set the VM size"),
        ("compute.min_nodes=5", "compute.min_nodes=5: more than max_nodes=4"),
        ("compute.processes_per_node=2", "compute.processes_per_node=2: more training processes than GPUs"),
        ("compute.hourly_price_usd=-1", "compute.hourly_price_usd=-1.0: must be >= 0"),
    ],
)
def test_compute_fields(tmp_path, override, expected):
    one_problem(tmp_path, AML + [override], expected)


def test_cuda_device_needs_gpus(tmp_path):
    one_problem(
        tmp_path,
        ["model=minilm-l6", "search=bandit", "compute=cpu", "automl=none", "compute.device=cuda", "dry_run=true"],
        "compute.device=cuda: Standard_DS3_v2 has gpus_per_node=0",
    )


def test_bayesian_sampling_takes_only_what_aml_samples(tmp_path):
    # The shipped bayesian search runs on AML as it is.
    build(["model=bert-base-cased", "search=bayesian", "compute=a100", "dry_run=true"], tmp_path)
    space = {"learning_rate": {"type": "loguniform", "min": 1e-5, "max": 1e-4}}
    one_problem(
        tmp_path,
        ["model=bert-base-cased", "search=bayesian", "compute=a100", "dry_run=true"],
        "search.space.learning_rate.type=loguniform: AML's bayesian sampling takes only choice, uniform, quniform",
        space=space,
    )
    # The local sampler has no such limit.
    build(["model=minilm-l6", "search=bayesian", "dry_run=true"], tmp_path, space=space)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["compute=t4", "compute.gpu_arch=7.0", "compute.cuda=12.8"],
            "torch's CUDA 12.8 wheels run on compute capability 7.5-12.0",
        ),
        (["compute=a100", "compute.cuda=13.0"], "compute.cuda=13.0: the CUDA build of torch for AML GPU jobs"),
        (["compute=h100", "compute.gpu_arch=null"], "compute.gpu_arch=None"),
    ],
)
def test_gpu_stack_is_checked_against_the_gpu(tmp_path, overrides, expected):
    one_problem(tmp_path, ["model=bert-base-cased", "search=bandit", "dry_run=true", *overrides], expected)


@pytest.mark.parametrize(
    "model, items, instance, timeout_ms",
    [
        ("minilm-l6", 64, "Standard_F4s_v2", 10_000),
        ("bert-base-cased", 64, "Standard_F8s_v2", 30_720),
        ("bert-base-cased", 128, "Standard_F16s_v2", 30_720),
        ("distilbert-base-cased", 64, "Standard_F4s_v2", 30_720),
    ],
)
def test_deployment_is_sized_for_the_model_and_request_size(tmp_path, model, items, instance, timeout_ms):
    plan = build(
        [f"model={model}", "search=none", "compute=a100", "dry_run=true", f"endpoint.max_batch_items={items}"], tmp_path
    )
    assert (plan.endpoint.instance_type, plan.endpoint.request_timeout_ms) == (instance, timeout_ms)
    # Set explicitly, they are kept.
    kept = build(
        [
            "model=bert-base-cased",
            "compute=a100",
            "dry_run=true",
            "endpoint.instance_type=Standard_DS3_v2",
            "endpoint.request_timeout_ms=90000",
        ],
        tmp_path,
    )
    assert (kept.endpoint.instance_type, kept.endpoint.request_timeout_ms) == ("Standard_DS3_v2", 90000)


def test_automl_metrics_are_exactly_the_sdks_text_classification_list():
    from azure.ai.ml.automl import ClassificationPrimaryMetrics

    from finetune.launch.azureml.automl_checks import AUTOML_METRICS

    assert sorted(m.lower() for m in AUTOML_METRICS) == sorted(m.name.lower() for m in ClassificationPrimaryMetrics)


def test_auto_batch_size_in_the_plan_is_what_the_aml_command_gets(tmp_path):
    from finetune.launch.azureml.command import arguments

    swept = build(AML, tmp_path)  # bandit searches batch_size: each trial's batch size is its hyperparameter
    assert swept.compute.auto_batch_size is False
    assert arguments(swept)[arguments(swept).index("--auto-batch-size") + 1] == "false"
    fixed = build(["model=bert-base-cased", "search=none", "compute=a100", "dry_run=true"], tmp_path)
    assert fixed.compute.auto_batch_size is True
    assert arguments(fixed)[arguments(fixed).index("--auto-batch-size") + 1] == "true"


def test_multirun_aml_plans_get_their_own_model_and_endpoint(tmp_path, capsys, monkeypatch):
    from finetune.cli import main as cli

    planned = []
    monkeypatch.setattr("finetune.launch.run_plan", lambda plan: planned.append(plan))
    code = cli.main(
        ["-m", "model=bert-base-cased,distilbert-base-cased", "compute=a100", "dry_run=true", f"output_root={tmp_path}"]
    )
    assert code == 0, capsys.readouterr().err
    models = [p.select.registered_model_name for p in planned]
    endpoints = [p.endpoint.name for p in planned]
    assert models == [
        "amazon_automotive-sentiment-bert-base-cased",
        "amazon_automotive-sentiment-distilbert-base-cased",
    ]
    assert len(set(endpoints)) == 2 and all(
        3 <= len(e) <= 32 and e.startswith("amazon-automotive-senti") for e in endpoints
    )
    # A single plan keeps the configured names.
    planned.clear()
    assert cli.main(["model=bert-base-cased", "compute=a100", "dry_run=true", f"output_root={tmp_path}"]) == 0
    assert planned[0].select.registered_model_name == "amazon_automotive-sentiment"
    assert planned[0].endpoint.name == "amazon-automotive-sentiment"


def test_truncation_exclude_finished_jobs_does_not_exist_on_aml(tmp_path):
    one_problem(
        tmp_path,
        [
            "model=bert-base-cased",
            "search=truncation",
            "compute=a100",
            "dry_run=true",
            "search.policy.exclude_finished_jobs=true",
        ],
        "AML v2's TruncationSelectionPolicy has no such option",
    )


def test_search_rules_are_not_duplicated(tmp_path):
    """Inverted ranges, bayesian + policy and the like are the search module's: reported once, not twice."""
    space = {"learning_rate": {"type": "uniform", "min": 1e-4, "max": 1e-5}}
    one_problem(tmp_path, AML, "min >= max", space=space)


def test_local_plans_ignore_aml_rules(tmp_path):
    build(["model=minilm-l6", "endpoint.name=Bad_Name", "automl.primary_metric=f1_weighted", "dry_run=true"], tmp_path)


def test_all_problems_reported_together(tmp_path):
    found = problems(tmp_path, AML + ["endpoint.name=x", "compute.instance_count=0", "automl.primary_metric=f1"])
    assert len(found) == 3


# ------------------------------------------------------------------------------------------- workspace


def test_submission_needs_a_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = problems(tmp_path, AML + ["dry_run=false"])
    assert [p.split(":")[0] for p in found] == [
        "workspace.subscription_id=None",
        "workspace.resource_group=None",
        "workspace.workspace_name=None",
    ]
    assert "AZUREML_SUBSCRIPTION_ID / AZURE_SUBSCRIPTION_ID" in found[0] and "dry_run=true" in found[0]


def test_workspace_from_config_env_and_config_json(tmp_path):
    from finetune.config.schema import WorkspaceConfig
    from finetune.launch.azureml.workspace import resolve

    environ = {"AZURE_SUBSCRIPTION_ID": "sub-env", "AZUREML_RESOURCE_GROUP": "rg-env"}
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(
        json.dumps({"subscription_id": "sub-file", "resource_group": "rg-file", "workspace_name": "ws-file"})
    )
    found = resolve(WorkspaceConfig(subscription_id="sub-cfg"), environ, tmp_path)
    assert (found.subscription_id, found.resource_group, found.workspace_name) == ("sub-cfg", "rg-env", "ws-file")
    assert found.sources == {
        "subscription_id": "workspace.subscription_id",
        "resource_group": "AZUREML_RESOURCE_GROUP",
        "workspace_name": str(tmp_path / ".azureml" / "config.json"),
    }
    assert found.problems == []


def test_workspace_config_json_scope_form_and_unrelated_files(tmp_path):
    from finetune.config.schema import WorkspaceConfig
    from finetune.launch.azureml.workspace import resolve

    (tmp_path / "config.json").write_text(json.dumps({"theme": "dark"}))  # some other tool's file: skipped
    assert len(resolve(WorkspaceConfig(), {}, tmp_path).problems) == 3
    scope = "/subscriptions/sub-s/resourceGroups/rg-s/providers/Microsoft.MachineLearningServices/workspaces/ws-s"
    named = tmp_path / "aml.json"
    named.write_text(json.dumps({"Scope": scope}))
    found = resolve(WorkspaceConfig(config_path=str(named)), {}, tmp_path)
    assert (found.subscription_id, found.resource_group, found.workspace_name) == ("sub-s", "rg-s", "ws-s")
    missing = resolve(WorkspaceConfig(config_path=str(tmp_path / "nope.json")), {}, tmp_path)
    assert missing.problems[0].startswith(f"workspace.config_path={tmp_path / 'nope.json'}: no such file")


def test_job_workspace_comes_from_aml_variables():
    from finetune.errors import UserError
    from finetune.launch.azureml.workspace import from_job_environment

    environ = {"AZUREML_ARM_SUBSCRIPTION": "s", "AZUREML_ARM_RESOURCEGROUP": "r", "AZUREML_ARM_WORKSPACE_NAME": "w"}
    assert from_job_environment(environ) == {"subscription_id": "s", "resource_group": "r", "workspace_name": "w"}
    with pytest.raises(UserError, match="not inside an Azure ML job"):
        from_job_environment({})
