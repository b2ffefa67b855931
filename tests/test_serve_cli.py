"""python -m finetune.serve: foreground serving, clean Ctrl-C, one-line user errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from test_serve_support import make_automl_candidate, post, request


def serve_until_ctrl_c(*args: str, cwd) -> tuple[str, list[int]]:
    """Run the command until it is serving, score once through it, Ctrl-C it; its output and the pids it ran."""
    # stderr goes to a file: an unread pipe fills up with the servers' logs and blocks the process at exit.
    errors = open(cwd / f"serve-{time.monotonic_ns()}.stderr", "w+")
    # Started with SIGINT ignored, as a background job of a script is: Ctrl-C must still stop it.
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune.serve", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any(line.startswith("Ctrl-C") for line in lines) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        output = "".join(lines)
        # Keep draining stdout: the servers inherit it, and a full, unread pipe would block them at shutdown.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        uri = re.search(r"scoring URI: (http://127\.0\.0\.1:(\d+)/score)\nexport KEY=(\S+)", output)
        assert uri and "curl -X POST" in output and output.count(uri.group(3)) == 1, (
            output,
            errors.seek(0) or errors.read(),
        )
        status, _, body = post(int(uri.group(2)), request(2), {"Authorization": f"Bearer {uri.group(3)}"})
        assert status == 200 and body["model"]["name"] == "model", body
        state = json.loads((cwd / "endpoints" / "finetune-serve" / "state.json").read_text())
        pids = [state["router"]["pid"], state["deployments"]["blue"]["pid"]]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, errors.seek(0) or errors.read()[-3000:]
        return output, pids
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        errors.close()


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow  # a real endpoint
def test_serves_a_model_dir_until_ctrl_c_and_brings_the_endpoint_back(tmp_path):
    model = make_automl_candidate(tmp_path / "model")
    output, pids = serve_until_ctrl_c(
        "--model-dir",
        str(model),
        "--port",
        "0",
        "--key",
        "k3y",
        "--endpoints-dir",
        str(tmp_path / "endpoints"),
        cwd=tmp_path,
    )
    assert (
        "export KEY=k3y" in output
        and "Authorization: Bearer $KEY" in output
        and "deployment blue (100%): model from" in output
    )
    assert all(gone(pid) for pid in pids)
    # The state outlives the processes: --endpoint serves the same deployments with the same key.
    output, pids = serve_until_ctrl_c(
        "--endpoint", "finetune-serve", "--port", "0", "--endpoints-dir", str(tmp_path / "endpoints"), cwd=tmp_path
    )
    assert "export KEY=k3y" in output
    assert all(gone(pid) for pid in pids)


def test_a_busy_port_is_one_line_and_exit_2(tmp_path):
    model = make_automl_candidate(tmp_path / "model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "finetune.serve",
                "--model-dir",
                str(model),
                "--port",
                str(port),
                "--endpoints-dir",
                str(tmp_path / "endpoints"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert re.fullmatch(rf"error: .*cannot listen on 127\.0\.0\.1:{port}: Address already in use\n", done.stderr)


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    for args, message in [
        (["--model-dir", str(tmp_path / "missing")], "is not a folder"),
        (["--endpoint", "never-deployed"], "no local endpoint 'never-deployed'"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "finetune.serve", *args, "--endpoints-dir", str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


@pytest.mark.slow  # a subprocess that loads the serving stack
def test_an_unknown_registered_model_is_a_user_error(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.serve",
            "--model-name",
            "no-such-model",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--endpoints-dir",
            str(tmp_path / "endpoints"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("error: model 'no-such-model'"), done.stderr
