"""Browsing runs: `mlflow ui` (the optional [ui] extra) serves the store a run leaves behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

from finetune.config.schema import ModelConfig
from finetune.registry.tracking import model_id, ui_command


def test_the_base_model_is_named_by_its_id_not_a_folder():
    assert (
        model_id(
            ModelConfig(
                name="minilm-l6",
                hub_id="sentence-transformers/all-MiniLM-L6-v2",
                path="/venv/lib/site-packages/x/model",
            )
        )
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert model_id(ModelConfig(name="mine", source="path", path="/models/mine")) == "mine"


def _full_mlflow_installed() -> bool:
    try:
        metadata.version("mlflow")  # mlflow-skinny alone has no UI server
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _full_mlflow_installed(), reason="the [ui] extra (full mlflow) is not installed")
def test_mlflow_ui_serves_the_runs_of_a_store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("finetune")
    client.create_run(experiment, run_name="first", tags={"finetune.role": "pipeline"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = shlex.split(ui_command(uri)) + ["--host", "127.0.0.1", "--port", str(port)]
    command[0] = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        page = _get(f"http://127.0.0.1:{port}/", server, deadline=time.time() + 240)
        assert "<!doctype html>" in page.lower() and "mlflow" in page.lower()
        body = json.dumps({"experiment_ids": [experiment]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        runs = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]
        assert [run["info"]["run_name"] for run in runs] == ["first"]
    finally:  # the server's workers are in its session: stop all of them
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _get(url: str, server: subprocess.Popen, deadline: float) -> str:
    """The page at `url` once the server answers (it takes tens of seconds to start on a busy machine)."""
    while True:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with {server.returncode}: {server.stderr.read().decode()[-2000:]}")
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)
