"""Submission and the pipeline's own steps through the REAL MLClient, against the local HTTPS recorder.

Nothing leaves the machine (:func:`aml_recorder.guard_network`); the recorder answers like Azure ML
and keeps every request, so the tests assert what a real workspace would have been asked to do.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from amlemu import recorder as aml_recorder
from amlemu.recorder import RecorderServer, build, guard_network
from finetune.cli.main import main
from finetune.selection.decisions import Verdict

WORKSPACE = [
    f"workspace.subscription_id={aml_recorder.SUBSCRIPTION}",
    f"workspace.resource_group={aml_recorder.RESOURCE_GROUP}",
    f"workspace.workspace_name={aml_recorder.WORKSPACE}",
]
REFERENCE = ["model=bert-base-cased", "search=bandit", "compute=a100"]
ENDPOINT = "onlineEndpoints/amazon-automotive-sentiment"
ASSETS = ["train", "val", "test", "labels", "train-mltable", "val-mltable"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RecorderServer(tmp_path_factory.mktemp("recorder"))
    yield server
    server.close()


@pytest.fixture
def recorder(server, monkeypatch):
    guard_network(monkeypatch, server.recorder.port)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert))
    server.recorder.clear()
    server.recorder.resources.clear()
    server.recorder.scoring_status.clear()
    server.recorder.blobs.clear()
    server.recorder.role_assignments.clear()
    server.recorder.role_status = 200
    # The steps' cluster identity (the recorder derives principal ids from the resource path) may act.
    server.recorder.grant(steps_principal())
    return server.recorder


def steps_principal(cluster: str = "cpu-steps") -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{aml_recorder.WORKSPACE_PATH}/computes/{cluster}"))


def submit(server, monkeypatch, tmp_path, capsys, extra=()):
    from finetune.launch import azureml

    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "run_name=ref", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.slow  # an emulated submission
def test_reference_submission(server, recorder, monkeypatch, tmp_path, capsys):
    out = submit(server, monkeypatch, tmp_path, capsys)
    sequence = recorder.sequence()
    # The clusters are created when missing, the pre-flight checks the steps' identity and claims the
    # endpoint name, each data asset is looked up by hash before it is created, then the environments,
    # the steps' components (with their code) and the pipeline job itself.
    assert sequence[:3] == ["GET computes/gpu-a100", "GET " + aml_recorder.WORKSPACE_PATH, "PUT computes/gpu-a100"]
    assert "PUT computes/cpu-steps" in sequence
    first_data = sequence.index("GET data/finetune-amazon_automotive-train/versions")
    assert sequence.index("GET providers/Microsoft.Authorization/roleAssignments") < first_data
    assert sequence.index(f"PUT {ENDPOINT}") < first_data
    assert recorder.find("PUT", "computes/cpu-steps")[0].body["properties"]["properties"]["vmSize"] == "Standard_DS3_v2"
    data = [s for s in sequence if s.startswith(("GET data/", "PUT data/"))]
    assert data == [
        line
        for name in ASSETS
        for line in (
            f"GET data/finetune-amazon_automotive-{name}/versions",
            f"GET data/finetune-amazon_automotive-{name}",
            f"PUT data/finetune-amazon_automotive-{name}/versions/1",
        )
    ]
    assert sequence[-1].startswith("PUT jobs/")
    components = recorder.find("PUT", r"components/azureml_anonymous/versions/.+")
    assert len(components) == 4  # train trial, test AutoML, register, deploy
    assert recorder.find("PUT", r"environments/CliV2AnonymousEnvironment/versions/[0-9a-f]{64}")
    assert len(recorder.find("POST", r"codes/.+/startPendingUpload")) == 4

    cluster = recorder.find("PUT", "computes/gpu-a100")[0].body
    assert cluster["identity"]["type"] == "SystemAssigned"
    assert cluster["properties"]["properties"]["vmSize"] == "Standard_NC24ads_A100_v4"
    assert cluster["properties"]["properties"]["scaleSettings"] == {
        "maxNodeCount": 4,
        "minNodeCount": 0,
        "nodeIdleTimeBeforeScaleDown": "PT2M",
    }
    train = recorder.find("PUT", "data/finetune-amazon_automotive-train/versions/1")[0].body
    assert (
        train["properties"]["tags"]["sha256"]
        == json.loads((tmp_path / "ref" / "aml" / "prepared" / "data.json").read_text())["splits"]["train"]["sha256"]
    )

    job = recorder.find("PUT", r"jobs/.+")[0].body["properties"]
    assert job["jobType"] == "Pipeline" and job["experimentName"] == "finetune" and job["displayName"] == "ref"
    assert job["inputs"]["train"]["uri"].endswith("/data/finetune-amazon_automotive-train/versions/1")
    assert job["inputs"]["train_table"]["jobInputType"] == "mltable"
    nodes = job["jobs"]
    assert list(nodes) == ["sweep", "automl", "test_automl", "register", "deploy"]
    sweep = nodes["sweep"]
    assert sweep["search_space"]["learning_rate"] == {
        "type": "loguniform",
        "min_value": pytest.approx(-11.512925464970229),
        "max_value": pytest.approx(-9.210340371976182),
    }
    assert sweep["search_space"]["batch_size"] == {"values": [16, 32], "type": "choice"}
    assert sweep["sampling_algorithm"] == {"type": "random", "seed": 0}
    assert sweep["early_termination"] == {
        "delay_evaluation": 0,
        "evaluation_interval": 1,
        "slack_factor": 0.1,
        "policy_type": "Bandit",
    }
    assert sweep["objective"] == {"goal": "maximize", "primary_metric": "val_auc_weighted"}
    assert sweep["limits"] == {
        "max_concurrent_trials": 1,
        "max_total_trials": 6,
        "timeout": 43200,
        "trial_timeout": 7200,
    }
    automl = nodes["automl"]
    assert (automl["task"], automl["primary_metric"], automl["target_column_name"]) == (
        "text_classification",
        "auc_weighted",
        "label",
    )
    assert automl["limits"] == {
        "max_concurrent_trials": 1,
        "max_trials": 1,
        "max_nodes": 1,
        "timeout_minutes": 120,
        "trial_timeout_minutes": 60,
    }
    assert automl["featurization"] == {"dataset_language": "eng"}
    assert automl["training_data"] == "${{parent.inputs.train_table}}"
    assert automl["outputs"] == {"best_model": {"job_output_type": "mlflow_model"}}
    for step in ("register", "deploy"):
        assert nodes[step]["identity"] == {"identity_type": "Managed"}
    for step in ("test_automl", "register", "deploy"):
        assert nodes[step]["computeId"].endswith("/computes/cpu-steps"), step
    assert nodes["sweep"]["computeId"].endswith("/computes/gpu-a100")
    # No workspace coordinates travel as step inputs: the steps read them from the job's environment.
    step_inputs = json.dumps({n: v.get("inputs") for n, v in nodes.items()})
    assert aml_recorder.RESOURCE_GROUP not in step_inputs and aml_recorder.SUBSCRIPTION not in step_inputs
    for component in components:
        command = component.body["properties"]["componentSpec"]["command"]
        assert "subscription" not in command and "resource" not in command
    trial = next(
        c.body["properties"]["componentSpec"]
        for c in components
        if "finetune.train" in c.body["properties"]["componentSpec"]["command"]
    )
    assert trial["command"].startswith("python -m finetune.train --train-file ${{inputs.train}}")
    assert "--tracking-uri" not in trial["command"]

    assert "submitted pipeline job" in out and "studio: https://ml.azure.com/runs/" in out
    record = json.loads((tmp_path / "ref" / "submitted.json").read_text())
    assert record["data"]["files"]["train"] == "azureml:finetune-amazon_automotive-train:1"


@pytest.mark.slow  # an emulated submission
def test_exported_tree_holds_no_machine_path_workspace_or_key(server, recorder, monkeypatch, tmp_path, capsys):
    """aml/ is portable: no YAML or JSON in it names this machine, the workspace or a key; and what was
    uploaded for the steps (settings.json) is that file, byte for byte."""
    import os

    import finetune

    recorder.grant(steps_principal("cpu-ds3"))  # compute=cpu: the steps share the training cluster
    submit(server, monkeypatch, tmp_path, capsys, extra=["model=minilm-l6", "compute=cpu"])
    folder = tmp_path / "ref" / "aml"
    forbidden = {
        str(tmp_path),
        str(Path.home()),
        sys.prefix,
        str(Path(finetune.__file__).resolve().parent.parent),
        aml_recorder.SUBSCRIPTION,
        aml_recorder.RESOURCE_GROUP,
        aml_recorder.WORKSPACE,
        "recorder-primary-key",
        "recorder-key",
    }
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix in (".yml", ".yaml", ".json") and "code" not in p.parts and "base_model" not in p.parts
    ]
    assert any(p.name == "pipeline.yml" for p in files) and any(p.name == "settings.json" for p in files)
    for path in files:
        text = path.read_text()
        found = [item for item in forbidden if item and item in text]
        assert not found, f"{path.relative_to(folder)} holds {found}"
    # The packaged base model travels inside the tree.
    assert (folder / "base_model" / "config.json").is_file()
    assert recorder.blob("/settings.json") == (folder / "settings.json").read_bytes()
    assert os.path.isfile(tmp_path / "ref" / "submitted.json")


def test_preflight_refuses_a_steps_identity_without_a_role(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    recorder.role_assignments.clear()
    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "run_name=ref"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert (
        err[0].startswith("error: pre-flight: the managed identity of cluster cpu-steps")
        and "AzureML Data Scientist" in err[0]
    )
    # Nothing was spent: no data uploaded, no job submitted.
    assert not recorder.find("PUT", r"data/.+") and not recorder.find("PUT", r"jobs/.+")


def test_preflight_refuses_a_steps_cluster_without_identity(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    recorder.put(
        "computes/cpu-steps",
        {
            "location": "eastus",
            "properties": {
                "computeType": "AmlCompute",
                "provisioningState": "Succeeded",
                "properties": {"vmSize": "Standard_DS3_v2", "scaleSettings": {"maxNodeCount": 2, "minNodeCount": 0}},
            },
        },
    )
    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "run_name=ref"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cluster cpu-steps has no managed identity" in err[0]
    assert not recorder.find("PUT", r"jobs/.+")


def test_preflight_refuses_unreadable_role_assignments(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    recorder.role_status = 403
    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "run_name=ref"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot read role assignments" in err[0]
    assert not recorder.find("PUT", r"jobs/.+")


def test_preflight_refuses_an_endpoint_that_is_not_ours(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    recorder.put(
        ENDPOINT,
        {
            "location": "eastus",
            "tags": {"team": "someone-else"},
            "properties": {"authMode": "Key", "traffic": {}, "provisioningState": "Succeeded"},
        },
    )
    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "run_name=ref"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "endpoint amazon-automotive-sentiment exists" in err[0]
    assert not recorder.find("PUT", r"jobs/.+")


def test_recorder_refuses_what_the_service_refuses(server, recorder):
    """The recorder is only a fair stand-in if it says no where Azure ML does (see aml_recorder's docstring)."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint
    from azure.core.exceptions import HttpResponseError

    client = server.ml_client()
    seed_endpoint(recorder)
    endpoint = client.online_endpoints.get("amazon-automotive-sentiment")
    endpoint.traffic = {"blue": 50, "green": 50}
    with pytest.raises(HttpResponseError, match="do not exist: green"):
        client.online_endpoints.begin_create_or_update(endpoint).result()
    endpoint.traffic = {"blue": 60}
    with pytest.raises(HttpResponseError, match="must be 100"):
        client.online_endpoints.begin_create_or_update(endpoint).result()
    with pytest.raises(HttpResponseError, match="takes traffic"):
        client.online_deployments.begin_delete(name="blue", endpoint_name="amazon-automotive-sentiment").result()
    endpoint = ManagedOnlineEndpoint(name="ab", auth_mode="key")
    with pytest.raises(Exception, match="(?i)name"):
        client.online_endpoints.begin_create_or_update(endpoint).result()


@pytest.mark.slow  # two emulated submissions
def test_resubmission_reuses_data_assets_with_the_same_hash(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    submit(server, monkeypatch, tmp_path, capsys, ["automl=none", "endpoint=none"])
    recorder.clear()
    streamed = []

    def connect(plan):
        client = server.ml_client()
        monkeypatch.setattr(client.jobs, "stream", streamed.append)
        return client

    monkeypatch.setattr(azureml, "connect", connect)
    code = main(
        REFERENCE
        + WORKSPACE
        + [f"output_root={tmp_path / 'again'}", "run_name=ref", "automl=none", "endpoint=none", "submit.wait=true"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert streamed == [recorder.find("PUT", r"jobs/.+")[0].relative.split("/")[1]]  # submit.wait follows the job
    assert not recorder.find("PUT", r"data/.+")
    assert not recorder.find("PUT", r"computes/.+")  # the cluster exists now
    assert "data finetune-amazon_automotive-train:1 reused" in out
    job = recorder.find("PUT", r"jobs/.+")[0].body["properties"]
    assert list(job["jobs"]) == ["sweep", "register"]
    assert job["inputs"]["train"]["uri"].endswith("/versions/1")


def test_service_errors_are_one_line(server, recorder, monkeypatch, tmp_path, capsys):
    from finetune.launch import azureml

    monkeypatch.setattr(azureml, "connect", lambda plan: server.ml_client())
    monkeypatch.setattr(
        aml_recorder.Recorder,
        "_put",
        lambda self, request, path: (
            409,
            {},
            {"error": {"code": "Conflict", "message": "quota exceeded for Standard_NC24ads_A100_v4"}},
        ),
    )
    code = main(REFERENCE + WORKSPACE + [f"output_root={tmp_path}", "automl=none", "endpoint=none"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: compute cluster gpu-a100: Azure ML answered HTTP 409: ") and err.count("\n") == 1
    assert "quota exceeded for Standard_NC24ads_A100_v4" in err


# ------------------------------------------------------------------------------------------- deploy step


@pytest.fixture
def settings(tmp_path):
    from finetune.data import prepare
    from finetune.launch.azureml import export

    plan = build(REFERENCE + ["dry_run=true"], tmp_path, "deploy")
    return export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data")).settings_path


def model_ref(folder: Path, version: str = "3", candidate: str = "finetuned") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_ref.json").write_text(
        json.dumps(
            {
                "name": "automotive-sentiment",
                "version": version,
                "model_type": "mlflow_model",
                "candidate": candidate,
                "decision": "register",
                "reason": "test",
            }
        )
    )
    return str(folder)


def seed_model(recorder, version: str = "3") -> None:
    recorder.put(
        f"models/automotive-sentiment/versions/{version}",
        {"properties": {"modelType": "custom_model", "modelUri": "azureml://x", "tags": {}, "flavors": {}}},
    )


def seed_endpoint(recorder, traffic=None) -> None:
    recorder.put(
        ENDPOINT,
        {
            "location": "eastus",
            "identity": {"type": "SystemAssigned"},
            "properties": {
                "authMode": "Key",
                "traffic": traffic or {"blue": 100},
                "scoringUri": f"{recorder.base_url}/score",
                "provisioningState": "Succeeded",
            },
        },
    )
    recorder.put(
        f"{ENDPOINT}/deployments/blue",
        {
            "location": "eastus",
            "sku": {"name": "Default", "capacity": 1},
            "properties": {
                "endpointComputeType": "Managed",
                "model": "azureml:automotive-sentiment:2",
                "instanceType": "Standard_DS3_v2",
                "scaleSettings": {"scaleType": "Default"},
                "provisioningState": "Succeeded",
            },
        },
    )


def deploy(server, tmp_path, settings, monkeypatch):
    from finetune.launch.azureml import deploy as deploy_module
    from finetune.launch.azureml.runtime import steps

    monkeypatch.setattr(deploy_module, "deployment_name", lambda version, now=None: f"v{version}-test")
    seed_model(server.recorder)
    return steps.deploy(
        model_ref(tmp_path / "ref"), str(settings), str(tmp_path / "rollout"), ml_client=server.ml_client()
    )


def rollout_calls(recorder):
    """The rollout's writes and scoring calls, in order (reads are the SDK's bookkeeping)."""
    calls = []
    for r in recorder.requests:
        if r.host.startswith(aml_recorder.BLOB_ACCOUNT) or r.method == "GET":
            continue
        if r.path == "/score":
            calls.append(f"POST /score deployment={r.headers.get('azureml-model-deployment')}")
        elif r.relative.startswith(ENDPOINT) and not r.relative.endswith("listKeys"):
            calls.append(str(r))
    return calls


def test_deploy_step_safe_rollout(server, recorder, monkeypatch, tmp_path, settings):
    seed_endpoint(recorder)
    result = deploy(server, tmp_path, settings, monkeypatch)
    assert rollout_calls(recorder) == [
        f"PUT {ENDPOINT}/deployments/v3-test",
        "POST /score deployment=v3-test",  # the smoke test goes to the new deployment directly
        f"PUT {ENDPOINT}",  # traffic 100% to it
        *["POST /score deployment=None"] * 5,  # then through the endpoint's traffic split
        f"DELETE {ENDPOINT}/deployments/blue",
    ]
    body = recorder.find("PUT", f"{ENDPOINT}/deployments/v3-test")[0].body
    properties = body["properties"]
    assert properties["model"].endswith("/models/automotive-sentiment/versions/3")
    assert properties["codeConfiguration"]["scoringScript"] == "score.py"
    # Sized for bert-base and 64-item requests (endpoint.instance_type=auto, request_timeout_ms=0).
    assert properties["instanceType"] == "Standard_F8s_v2" and body["sku"]["capacity"] == 1
    assert properties["requestSettings"] == {"maxConcurrentRequestsPerInstance": 1, "requestTimeout": "PT30.72S"}
    assert properties["livenessProbe"]["initialDelay"] == "PT2M"
    assert properties["readinessProbe"]["initialDelay"] == "PT1M"
    assert properties["readinessProbe"]["failureThreshold"] == 30
    assert properties["environmentVariables"]["FINETUNE_MODEL_VERSION"] == "3"
    traffic = recorder.find("PUT", ENDPOINT)[0].body["properties"]["traffic"]
    assert traffic == {"v3-test": 100}  # the old deployment's 0% entry is dropped by the SDK
    smoke = next(r for r in recorder.requests if r.path == "/score")
    assert smoke.headers["authorization"] == "Bearer recorder-primary-key"
    assert smoke.body == json.loads(settings.read_text())["sample_request"]
    assert result.rollout.deployment == "v3-test" and result.rollout.deleted == ["blue"]
    # Only a version that serves is Production (AML's counterpart of the local registry's alias).
    model = recorder.resources[f"{aml_recorder.WORKSPACE_PATH}/models/automotive-sentiment/versions/3"]
    assert model["properties"]["stage"] == "Production" and result.promoted.version == "3"
    assert json.loads((tmp_path / "rollout" / "rollout.json").read_text())["traffic"] == {"v3-test": 100}


@pytest.mark.slow  # real inference servers behind the router
def test_deploy_step_failed_smoke_test_keeps_traffic(server, recorder, monkeypatch, tmp_path, settings):
    from finetune.serve.rollout import RolloutError

    seed_endpoint(recorder)
    recorder.scoring_status["v3-test"] = 500
    with pytest.raises(RolloutError, match="smoke test failed.*traffic kept at blue 100%"):
        deploy(server, tmp_path, settings, monkeypatch)
    calls = rollout_calls(recorder)
    assert calls[:2] == [f"PUT {ENDPOINT}/deployments/v3-test", "POST /score deployment=v3-test"]
    assert calls[-1] == f"DELETE {ENDPOINT}/deployments/v3-test"
    assert f"DELETE {ENDPOINT}/deployments/blue" not in calls
    assert recorder.resources[f"{aml_recorder.WORKSPACE_PATH}/{ENDPOINT}"]["properties"]["traffic"] == {"blue": 100}
    assert json.loads((tmp_path / "rollout" / "rollout.json").read_text())["status"] == "failed"


def test_deploy_step_creates_a_missing_endpoint(server, recorder, monkeypatch, tmp_path, settings):
    deploy(server, tmp_path, settings, monkeypatch)
    calls = rollout_calls(recorder)
    assert calls[:3] == [f"PUT {ENDPOINT}", f"PUT {ENDPOINT}/deployments/v3-test", "POST /score deployment=v3-test"]
    endpoint = recorder.find("PUT", ENDPOINT)[0].body
    assert endpoint["properties"]["authMode"] == "Key" and endpoint["location"] == "eastus"


# ------------------------------------------------------------------------------------------- register / test steps


def transformer_output(folder: Path, tiny_model_dir: Path, labels) -> Path:
    """What the training job writes: <output>/model/ with candidate.json."""
    shutil.copytree(tiny_model_dir, folder / "model")
    (folder / "model" / "candidate.json").write_text(json.dumps({"family": "hf", "labels": labels}))
    return folder


def split_files(settings: Path) -> tuple:
    """test.csv and labels.json of the prepared data next to the exported tree (settings.json names no path)."""
    data_dir = settings.parent.parent / "data"
    return str(data_dir / "test.csv"), str(data_dir / "labels.json")


def automl_output(tmp_path: Path, auc: float, settings: Path) -> str:
    """What the AutoML test step writes for AutoML's best model (the emulator's stand-in of it), with its test
    metrics set to ``auc`` so that it loses or wins."""
    from amlemu import automl_standin
    from finetune.launch.azureml.runtime import steps

    tables = settings.parent / "mltable"
    best_model = tmp_path / "best_model"
    automl_standin.train(tables / "train", tables / "val", "label", "text_classification", {"best_model": best_model})
    test_file, labels_file = split_files(settings)
    automl_result = tmp_path / "automl_result"
    steps.test_automl(
        str(best_model),
        test_file,
        str(Path(test_file).parent / "val.csv"),
        labels_file,
        str(settings),
        str(automl_result),
    )
    result = json.loads((automl_result / "result.json").read_text())
    result["test"] = {name: auc for name in result["test"]}
    (automl_result / "result.json").write_text(json.dumps(result))
    return str(automl_result)


@pytest.mark.parametrize(
    "automl_auc, winner, model_type", [(0.0, "finetuned", "mlflow_model"), (1.0, "automl", "mlflow_model")]
)
@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_register_step(
    server, recorder, tmp_path, tiny_model_dir, settings, automl_auc, winner, model_type, monkeypatch
):
    from finetune.launch.azureml.runtime import steps
    from finetune.registry import environments as environment
    from finetune.serve import SCORE_SCRIPT

    def no_dependency_list():  # inside an AML job: no finetune dist-info, no pyproject.toml
        raise AssertionError("a job step read the package's dependency list")

    monkeypatch.setattr(environment, "declared_requirements", no_dependency_list)

    saved = json.loads(settings.read_text())
    data, labels = saved["data"], saved["data"]["labels"]
    test_file, labels_file = split_files(settings)
    transformer = transformer_output(tmp_path / "sweep", tiny_model_dir, labels)
    automl_result = automl_output(tmp_path, automl_auc, settings)

    ref = steps.register(
        str(transformer),
        test_file,
        labels_file,
        str(settings),
        str(tmp_path / "out"),
        automl_result,
        ml_client=server.ml_client(),
    )
    assert (ref.candidate, ref.model_type, ref.version, ref.existing) == (winner, model_type, "1", False)
    created = recorder.find("PUT", "models/amazon_automotive-sentiment/versions/1")[0].body["properties"]
    assert created["modelType"] == model_type
    tags = created["tags"]
    assert tags["selection.metric"] == "auc_weighted" and tags["candidate"] == winner
    assert tags["data.test_sha256"] == data["splits"]["test"]["sha256"] and "config_sha256" in tags
    assert tags["content_sha256"] == ref.content_sha256
    assert tags["test_auc_weighted.automl"] == f"{automl_auc:.6f}"
    if winner == "finetuned":
        # What was uploaded is what serves: the scoring script, the version it reports, the slim conda file
        # the submitting machine built (the job read no package metadata to write it).
        assert recorder.blob("/model/score.py") == SCORE_SCRIPT.read_bytes()
        assert json.loads(recorder.blob("/model/registered.json")) == {
            "name": "amazon_automotive-sentiment",
            "version": "1",
        }
        import yaml

        conda = yaml.safe_load(recorder.blob("/model/conda.yaml"))
        assert conda == saved["environment"]["conda_file"]
        assert any(line.startswith("torch==") and line.endswith("+cpu") for line in conda["dependencies"][-1]["pip"])
        assert ref.environment is None  # it serves in the plan's serving environment
    else:
        # AutoML's MLflow model ships inside a package score.py serves, in the model's own environment.
        import yaml

        candidate = json.loads(recorder.blob("/model/candidate.json"))
        assert candidate["family"] == "automl" and candidate["mlflow_model"] == "mlflow_model"
        assert candidate["decision"]["rule"] == "threshold"  # chosen on val by the test step
        assert recorder.blob("/model/score.py") == SCORE_SCRIPT.read_bytes()
        own = yaml.safe_load(recorder.blob("/model/mlflow_model/conda.yaml"))
        assert yaml.safe_load(recorder.blob("/model/conda.yaml")) == own == ref.environment["conda_file"]
    assert json.loads((tmp_path / "out" / "model_ref.json").read_text())["version"] == "1"
    # A rollout follows in this pipeline: the version is not Production until it serves.
    assert (
        "stage"
        not in recorder.resources[f"{aml_recorder.WORKSPACE_PATH}/models/amazon_automotive-sentiment/versions/1"][
            "properties"
        ]
    )

    recorder.clear()  # the same content again: the existing version is reused
    again = steps.register(
        str(transformer),
        test_file,
        labels_file,
        str(settings),
        str(tmp_path / "out2"),
        automl_result,
        ml_client=server.ml_client(),
    )
    assert again.existing is True and again.version == "1"
    assert not recorder.find("PUT", r"models/.+")


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_register_step_rescores_production_and_honours_the_margin(
    server, recorder, tmp_path, tiny_model_dir, settings, monkeypatch
):
    """The AML register step runs the local rule: production is downloaded from the workspace and re-scored,
    and a new model must beat it by more than select.margin."""
    from finetune.launch.azureml.runtime import steps
    from finetune.launch.azureml.runtime.registry import AmlRegistry

    saved = json.loads(settings.read_text())
    test_file, labels_file = split_files(settings)
    first = transformer_output(tmp_path / "first", tiny_model_dir, saved["data"]["labels"])
    ref = steps.register(
        str(first), test_file, labels_file, str(settings), str(tmp_path / "out1"), ml_client=server.ml_client()
    )
    AmlRegistry(server.ml_client(), "amazon_automotive-sentiment").promote(ref.version)

    # Another training (other bytes, same quality) with a margin no model can pass.
    second = transformer_output(tmp_path / "second", tiny_model_dir, saved["data"]["labels"])
    (second / "model" / "note.txt").write_text("a second training")
    saved["select"]["margin"] = 1.0
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps(saved))
    recorder.clear()
    kept = steps.register(
        str(second), test_file, labels_file, str(strict), str(tmp_path / "out2"), ml_client=server.ml_client()
    )
    assert kept.verdict is Verdict.KEEP_PRODUCTION and "margin 1" in kept.reason
    assert kept.selection["production_version"] == {"name": "amazon_automotive-sentiment", "version": "1"}
    assert set(kept.selection["test"]) == {"finetuned", "production"}
    # The production version's files were downloaded from the blob store to be re-scored.
    assert any(r.host.startswith(aml_recorder.BLOB_ACCOUNT) and r.method == "GET" for r in recorder.requests)
    assert not recorder.find("PUT", r"models/.+")
    skipped = steps.deploy(str(tmp_path / "out2"), str(strict), str(tmp_path / "rollout"), ml_client=server.ml_client())
    assert skipped.status == "skipped"


@pytest.mark.slow  # trains and scores an MLflow model
def test_test_automl_step_packages_an_mlflow_model_with_its_val_rule(tmp_path, settings):
    """AutoML's MLflow model gets its decision rule chosen on val, is scored on test at it with the project's
    metric function, and becomes a candidate folder score.py loads."""
    from amlemu import automl_standin
    from finetune.launch.azureml.runtime import steps
    from finetune.serve.score import load_scorer

    data = json.loads(settings.read_text())["data"]
    test_file, labels_file = split_files(settings)
    tables = settings.parent / "mltable"
    automl_standin.train(
        tables / "train", tables / "val", "label", "text_classification", {"best_model": tmp_path / "mlflow_model"}
    )
    # No --python: the step loads the model with the interpreter it runs in (AutoML's runtime image on AML).
    result = steps.test_automl(
        str(tmp_path / "mlflow_model"),
        test_file,
        str(Path(test_file).parent / "val.csv"),
        labels_file,
        str(settings),
        str(tmp_path / "out"),
    )
    assert result["rows"] == data["splits"]["test"]["rows"]
    assert 0.5 < result["test"]["auc_weighted"] <= 1.0 and result["decision"]["rule"] == "threshold"
    assert json.loads((tmp_path / "out" / "result.json").read_text())["family"] == "automl"
    scorer = load_scorer(tmp_path / "out" / "model")
    assert scorer.decision == result["decision"] and scorer.labels == data["labels"]


def test_steps_cli_reports_user_errors_in_one_line(capsys, tmp_path, monkeypatch):
    from finetune.launch.azureml.runtime import steps

    for name in ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    ref = model_ref(tmp_path / "ref")
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {"endpoint": {"name": "amazon-automotive-sentiment"}, "environment": {}, "sample_request": {"data": []}}
        )
    )
    assert steps.main(["deploy", "--model-ref", ref, "--settings", str(settings), "--output-dir", str(tmp_path)]) == 2
    assert re.match(r"error: not inside an Azure ML job: AZUREML_ARM_SUBSCRIPTION", capsys.readouterr().err)
