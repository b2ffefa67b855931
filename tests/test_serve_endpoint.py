"""LocalEndpoint: real azmlinfsrv deployments behind the keyed router, all on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from finetune.errors import UserError
from finetune.serve.endpoint import LocalEndpoint
from finetune.serve.rollout import InvokeError, ModelRef
from test_serve_support import make_automl_candidate, make_hf_candidate, post, request

# Every test here talks to real inference servers behind the router (one module fixture starts them).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tiny_model_dir, tmp_path_factory):
    """blue: the tiny BERT classifier (registered as v1); green: a scikit-learn pipeline."""
    models = tmp_path_factory.mktemp("models")
    hf = make_hf_candidate(tiny_model_dir, models / "hf")
    automl = make_automl_candidate(models / "automl")
    endpoint = LocalEndpoint(
        "test-endpoint",
        tmp_path_factory.mktemp("endpoints"),
        max_items=8,
        max_body_bytes=4000,
        start_timeout_s=120,
        read_timeout_s=2,
    )
    try:
        endpoint.create_deployment("blue", ModelRef("sentiment", "1", str(hf)))
        endpoint.create_deployment("green", ModelRef("sentiment-automl", "2", str(automl)))
        yield endpoint
    finally:
        endpoint.stop()


def router_port(endpoint: LocalEndpoint) -> int:
    return endpoint.deployments() and json.loads(endpoint.state_file.read_text())["router"]["port"]


def auth(endpoint: LocalEndpoint) -> dict:
    return {"Authorization": f"Bearer {endpoint.key}"}


def served_by(endpoint: LocalEndpoint, calls: int, **headers) -> list[str]:
    names = []
    for _ in range(calls):
        status, response_headers, body = post(router_port(endpoint), request(1), {**auth(endpoint), **headers})
        assert status == 200, body
        names.append(response_headers["azureml-model-deployment"])
    return names


def test_only_the_router_listens_on_tcp(endpoint):
    """A deployment's server listens on no TCP port, only on a Unix socket in a folder no other user can
    enter: the router, with its key check, is the one way to /score."""
    import os
    import stat

    state = json.loads(endpoint.state_file.read_text())

    def listening(pid):
        process = psutil.Process(pid)
        return {
            c.laddr.ip
            for p in [process] + process.children(recursive=True)
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }

    assert listening(state["router"]["pid"]) == {"127.0.0.1"}
    for record in state["deployments"].values():
        assert listening(record["pid"]) == set()
        folder = os.stat(os.path.dirname(record["socket"]))
        assert stat.S_ISSOCK(os.stat(record["socket"]).st_mode)
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()


def test_scoring_needs_the_key(endpoint):
    endpoint.set_traffic({"blue": 100})
    port = router_port(endpoint)
    assert post(port, request(1))[0] == 401
    status, _, body = post(port, request(1), {"Authorization": "Bearer wrong"})
    assert status == 401 and "key" in body["error"]
    assert post(port, request(1), auth(endpoint))[0] == 200
    assert endpoint.invoke(request(2))["model"] == {"name": "sentiment", "version": "1"}


def test_traffic_weights_and_deployment_header(endpoint):
    endpoint.set_traffic({"green": 100})
    assert set(served_by(endpoint, 5)) == {"green"}
    assert set(served_by(endpoint, 3, **{"azureml-model-deployment": "blue"})) == {"blue"}
    assert endpoint.invoke(request(1), deployment="blue")["model"]["name"] == "sentiment"
    endpoint.set_traffic({"blue": 50, "green": 50})
    assert endpoint.traffic() == {"blue": 50, "green": 50}
    assert set(served_by(endpoint, 30)) == {"blue", "green"}
    status, _, body = post(router_port(endpoint), request(1), {**auth(endpoint), "azureml-model-deployment": "red"})
    assert status == 404 and "red" in body["error"]


def test_traffic_rules(endpoint):
    endpoint.set_traffic({"blue": 100})
    with pytest.raises(UserError, match="sum to 100"):
        endpoint.set_traffic({"blue": 60, "green": 30})
    with pytest.raises(UserError, match="no deployment red"):
        endpoint.set_traffic({"red": 100})
    with pytest.raises(UserError, match="takes 100%"):
        endpoint.delete_deployment("blue")
    endpoint.delete_deployment("no-such-deployment")
    assert endpoint.traffic() == {"blue": 100, "green": 0}


def test_errors_pass_through_unchanged_and_the_server_stays_up(endpoint):
    endpoint.set_traffic({"blue": 100})
    port = router_port(endpoint)
    status, headers, body = post(port, b"{not json", auth(endpoint))
    assert status == 400 and "not JSON" in body["error"]
    status, _, body = post(port, request(9), auth(endpoint))
    assert status == 400 and body == {"error": '"data" has 9 items; the limit is 8 per request'}
    status, _, body = post(port, {"data": [{"text": "x" * 5000}]}, auth(endpoint))
    assert status == 400 and "the limit is 4000" in body["error"]
    with pytest.raises(InvokeError, match="HTTP 400") as raised:
        endpoint.invoke({"data": []})
    assert raised.value.status == 400
    assert post(port, request(2), auth(endpoint))[0] == 200


def test_state_is_shared_with_a_new_object(endpoint):
    endpoint.set_traffic({"blue": 100})
    again = LocalEndpoint("test-endpoint", endpoint.dir.parent)
    assert again.key == endpoint.key and again.scoring_uri == endpoint.scoring_uri
    assert again.traffic() == {"blue": 100, "green": 0}
    again.set_traffic({"green": 100})
    assert endpoint.traffic() == {"blue": 0, "green": 100}
    assert again.invoke(request(1))["model"]["name"] == "sentiment-automl"
    assert again.running()


def test_request_texts_stay_out_of_the_logs(endpoint):
    secret = "bought for my neighbour Zbigniew Quartermaine"
    endpoint.set_traffic({"blue": 50, "green": 50})
    for _ in range(4):
        endpoint.invoke({"data": [{"text": secret}]})
    logs = [endpoint.dir / "router.log"] + [endpoint.dir / "deployments" / n / "server.log" for n in ("blue", "green")]
    assert "scored 1 texts" in (endpoint.dir / "deployments" / "blue" / "server.log").read_text()
    for log in logs:
        assert "Zbigniew" not in log.read_text()


def test_a_deployment_that_cannot_start_is_reported_and_forgotten(endpoint, tmp_path):
    broken = make_automl_candidate(tmp_path / "broken")
    (broken / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(
        UserError,
        match=r"exited with code 3 while starting: .*ValueError: cannot load "
        r".*model.joblib: KeyError.*\(log: .*server.log\)",
    ) as raised:
        endpoint.create_deployment("broken", ModelRef("bad", "9", str(broken)))
    assert "\n" not in str(raised.value)
    assert "broken" not in endpoint.deployments()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no candidate.json"):
        endpoint.create_deployment("empty", ModelRef("bad", "9", str(tmp_path / "empty")))


def test_hostile_bodies_get_the_documented_400(endpoint):
    endpoint.set_traffic({"blue": 100})
    status, _, body = post(router_port(endpoint), b'{"data": [{"text": "caf\xe9"}]}', auth(endpoint))
    assert status == 400 and "not UTF-8" in body["error"]
    status, _, body = post(router_port(endpoint), b"[" * 1800 + b"]" * 1800, auth(endpoint))
    assert status == 400 and "too deeply" in body["error"]


def test_a_client_that_sends_less_than_it_announced_is_cut_off(endpoint):
    import socket
    import time

    endpoint.set_traffic({"blue": 100})
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", router_port(endpoint)), timeout=30) as client:
        client.sendall(
            f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {endpoint.key}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"data"'.encode()
        )
        # Meanwhile other clients are served.
        assert post(router_port(endpoint), request(1), auth(endpoint))[0] == 200
        answer = client.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and time.monotonic() - started < 20
    with socket.create_connection(("127.0.0.1", router_port(endpoint)), timeout=30) as idle:
        assert idle.recv(10) == b"", "a connection that sends nothing is closed after the read timeout"


def test_status_and_stale_records(endpoint, tmp_path):
    status = endpoint.status()
    assert status["router"]["running"] and all(d["running"] for d in status["deployments"].values())
    assert status["starting"] == {} and status["recovered"] == []


def test_protocol_errors_are_json_too(endpoint):
    import http.client
    import socket

    connection = http.client.HTTPConnection("127.0.0.1", router_port(endpoint), timeout=30)
    connection.request("PUT", "/score", body=b"{}")
    response = connection.getresponse()
    assert response.status == 405 and "POST /score" in json.loads(response.read())["error"]
    connection.close()
    with socket.create_connection(("127.0.0.1", router_port(endpoint)), timeout=30) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = raw.recv(4096).decode("latin-1")
    # Not even a request line: http.server answers as HTTP/0.9 does, a body and no status line.
    assert "Bad request" in json.loads(answer.split("\r\n\r\n", 1)[-1])["error"]


def test_deployments_hard_link_the_model_instead_of_copying_it(endpoint):
    """One copy of the weights on disk: a deployment's files share the registered version's inodes."""
    weights = next(Path(endpoint.deployments()["blue"]["model_dir"]).glob("*.safetensors"))
    assert weights.stat().st_nlink == 2
