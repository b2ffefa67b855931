"""rollout() on a real LocalEndpoint: first deployment, failed rollouts that leave production alone, a
blue -> green switch under concurrent load with no failed request, and deploy_local's lifecycle."""

from __future__ import annotations

import json
import shutil
import threading
import time

import psutil
import pytest

from finetune.config.schema import EndpointConfig
from finetune.serve.endpoint import LocalEndpoint
from finetune.serve.local_deploy import deploy_local
from finetune.serve.rollout import DeploymentResult, ModelRef, RolloutError, prediction_problems, rollout, split_traffic
from test_serve_support import make_automl_candidate, make_hf_candidate, post, request


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-models")
    broken = make_automl_candidate(root / "unloadable")
    (broken / "model.joblib").write_bytes(b"not a pickle")
    return {
        "hf": ModelRef("sentiment", "1", str(make_hf_candidate(tiny_model_dir, root / "hf"))),
        "automl": ModelRef("sentiment", "2", str(make_automl_candidate(root / "automl"))),
        "failing": ModelRef("sentiment", "4", str(make_automl_candidate(root / "failing", unfitted_vectorizer=True))),
        "unloadable": ModelRef("sentiment", "5", str(broken)),
    }


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    endpoint = LocalEndpoint("rollout-test", tmp_path_factory.mktemp("endpoints"), start_timeout_s=120)
    yield endpoint
    endpoint.stop()


@pytest.fixture
def blue_serving(endpoint, models):
    """The endpoint serving the hf model as blue, whatever earlier tests left."""
    if endpoint.traffic() != {"blue": 100}:
        for name in [n for n in endpoint.traffic() if n != "blue"]:
            endpoint.set_traffic({"blue": 100} if "blue" in endpoint.traffic() else {})
            endpoint.delete_deployment(name)
        if "blue" not in endpoint.traffic():
            rollout(endpoint, "blue", models["hf"], request(2))
    return endpoint


@pytest.mark.slow  # real inference servers behind the router
def test_first_deployment_takes_all_traffic(endpoint, models):
    result = rollout(endpoint, "blue", models["hf"], request(2), ramp=(10, 50, 100))
    assert endpoint.traffic() == {"blue": 100}
    summary = result.to_dict()
    json.dumps(summary)
    assert summary["status"] == "succeeded" and summary["deployment"] == "blue"
    assert summary["steps"] == [] and summary["ramp"] == [100] and summary["deleted"] == []
    assert summary["smoke_test"]["latency_ms"] > 0
    assert prediction_problems(request(2), summary["smoke_test"]["response"]) == []
    assert summary["model"] == {"name": "sentiment", "version": "1", "path": models["hf"].path}
    assert summary["scoring_uri"] == endpoint.scoring_uri
    assert set(summary["timings"]) == {"create_s", "smoke_s", "shift_s", "delete_s", "total_s"}


@pytest.mark.parametrize(
    "model, reason",
    [
        ("failing", r"smoke test failed: .*HTTP 500"),
        ("unloadable", r"creating the deployment failed: .*cannot load"),
    ],
)
@pytest.mark.slow  # real inference servers behind the router
def test_a_failed_rollout_leaves_production_alone(blue_serving, models, model, reason):
    endpoint = blue_serving
    with pytest.raises(
        RolloutError,
        match=rf"rollout of sentiment v\d to rollout-test/green failed: {reason}.*"
        r"traffic kept at blue 100%",
    ):
        rollout(endpoint, "green", models[model], request(2), ramp=(50, 100))
    assert endpoint.traffic() == {"blue": 100}
    assert "green" not in endpoint.deployments()
    assert endpoint.invoke(request(1))["model"]["version"] == "1"


def test_bad_ramps_are_refused_before_anything_changes(blue_serving, models):
    for ramp in [(), (50,), (50, 30, 100), (0, 100), (50, 150)]:
        with pytest.raises(RolloutError, match="ramp"):
            rollout(blue_serving, "green", models["automl"], request(2), ramp=ramp)
    with pytest.raises(RolloutError, match="already has a deployment named 'blue'"):
        rollout(blue_serving, "blue", models["automl"], request(2))
    assert blue_serving.traffic() == {"blue": 100}


@pytest.mark.slow  # real inference servers under a stream of requests
def test_blue_green_switch_under_load_fails_no_request(blue_serving, models):
    endpoint = blue_serving
    blue_pid = endpoint.deployments()["blue"]["pid"]
    port, key = json.loads(endpoint.state_file.read_text())["router"]["port"], endpoint.key
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                status, headers, _ = post(port, request(2), {"Authorization": f"Bearer {key}"}, timeout=30)
                outcomes.append((status, headers.get("azureml-model-deployment")))
            except OSError as error:
                outcomes.append((0, repr(error)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        result = rollout(endpoint, "green", models["automl"], request(2), ramp=(50, 100), step_requests=3)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    failures = [outcome for outcome in outcomes if outcome[0] != 200]
    assert not failures, failures[:5]
    served = {name for _, name in outcomes}
    assert {"blue", "green"} <= served and len(outcomes) > 20
    assert endpoint.traffic() == {"green": 100}
    assert [step["percent"] for step in result.steps] == [50, 100]
    assert all(step["errors"] == 0 for step in result.steps)
    assert result.deleted == ["blue"] and not psutil.pid_exists(blue_pid)


def test_split_traffic_keeps_old_proportions_and_sums_to_100():
    assert split_traffic({"blue": 100}, "green", 10) == {"blue": 90, "green": 10}
    assert split_traffic({"a": 50, "b": 50}, "c", 25) == {"a": 38, "b": 37, "c": 25}
    assert split_traffic({"a": 70, "b": 30}, "c", 100) == {"a": 0, "b": 0, "c": 100}
    assert prediction_problems(
        {"data": [{"text": "x"}]},
        {"predictions": [{"label": "good", "probabilities": {"negative": 0.5, "positive": 0.6}}]},
    ) == [
        "prediction 0: label 'good' is not one of its probabilities",
        "prediction 0: probabilities sum to 1.1000, not 1",
    ]


@pytest.mark.slow  # real deployments
def test_deploy_local_stops_what_it_started_and_the_state_brings_it_back(models, tmp_path):
    config = EndpointConfig(target="local", name="pipeline-endpoint", ramp=[100], start_timeout_s=120)
    deployed = deploy_local(config, tmp_path / "endpoints", models["automl"], request(2), keep_running=False)
    first = deployed.to_dict()
    assert DeploymentResult.from_dict(json.loads(json.dumps(first))).to_dict() == first  # summary.json reads back
    assert first["status"] == "succeeded" and first["deployment"] == "blue" and first["running"] is False
    assert "key" not in json.dumps(first).lower().replace("keep", "")
    endpoint = LocalEndpoint("pipeline-endpoint", tmp_path / "endpoints")
    assert not endpoint.running() and endpoint.scoring_uri is None
    assert endpoint.traffic() == {"blue": 100}

    version_3 = ModelRef("sentiment", "3", str(make_automl_candidate(tmp_path / "run-3" / "model")))
    second = deploy_local(config, tmp_path / "endpoints", version_3, request(2), keep_running=False).to_dict()
    assert second["deployment"] == "green" and second["deleted"] == ["blue"]
    assert endpoint.traffic() == {"green": 100} and not endpoint.running()

    # The endpoint serves its own copy of the model: deleting the run folder it came from changes nothing.
    shutil.rmtree(tmp_path / "run-3")
    try:
        endpoint.start()
        assert endpoint.invoke(request(1))["model"] == {"name": "sentiment", "version": "3"}
        port = json.loads(endpoint.state_file.read_text())["router"]["port"]
        assert post(port, request(1))[0] == 401
    finally:
        endpoint.stop()
    assert not endpoint.running()
