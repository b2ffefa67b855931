"""Local endpoint state after faults: a start whose starter died, servers that died, and the
`python -m finetune.serve stop|status` verbs that find and clean them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from finetune.serve.endpoint import SERVER_MODULE, LocalEndpoint


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune.serve", *args], capture_output=True, text=True, timeout=120)


def record_of(process: subprocess.Popen) -> dict:
    return {"pid": process.pid, "started": psutil.Process(process.pid).create_time()}


@pytest.mark.slow  # starts and kills real servers
def test_a_start_left_by_a_dead_starter_is_stopped_and_status_stop_work(tmp_path):
    root = tmp_path / "endpoints"
    endpoint = LocalEndpoint("faulty", root)
    # A server process the way a killed `python -m finetune` leaves it: recorded as starting, its starter gone.
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", SERVER_MODULE], start_new_session=True
    )
    starter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    starter_record = record_of(starter)
    starter.wait()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_record = record_of(gone)
    gone.wait()
    (root / "faulty" / "deployments" / "blue" / "model").mkdir(parents=True)
    state = json.loads(endpoint.state_file.read_text())
    state["starting"] = {
        "blue": {
            **record_of(server),
            "socket": None,
            "owner": starter_record,
            "model_dir": str(root / "faulty" / "deployments" / "blue" / "model"),
            "log": "x",
        }
    }
    state["deployments"] = {
        "green": {
            **gone_record,
            "socket": None,
            "model": {"name": "m", "version": "1", "path": "p"},
            "model_dir": "d",
            "log": "y",
        }
    }
    state["traffic"] = {"green": 100}
    endpoint.state_file.write_text(json.dumps(state))

    status = serve("status", "--endpoint", "faulty", "--endpoints-dir", str(root))
    assert status.returncode == 0, status.stderr
    assert "recovered: stopped deployment blue" in status.stdout
    assert "deployment green: stopped, 100% traffic, m version 1" in status.stdout
    assert server.wait(timeout=30) is not None, "the orphaned server is stopped"
    state = json.loads(endpoint.state_file.read_text())
    assert state["starting"] == {} and state["deployments"]["green"]["pid"] is None
    assert not (root / "faulty" / "deployments" / "blue" / "model").exists()

    stopped = serve("stop", "--endpoint", "faulty", "--endpoints-dir", str(root))
    assert stopped.returncode == 0 and "router: stopped" in stopped.stdout


def test_a_start_in_progress_elsewhere_is_left_alone(tmp_path):
    root = tmp_path / "endpoints"
    endpoint = LocalEndpoint("busy-one", root)
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", SERVER_MODULE], start_new_session=True
    )
    try:
        state = json.loads(endpoint.state_file.read_text())
        owner = {"pid": psutil.Process().pid, "started": psutil.Process().create_time()}
        state["starting"] = {
            "blue": {**record_of(server), "socket": None, "owner": owner, "model_dir": "m", "log": "x"}
        }
        endpoint.state_file.write_text(json.dumps(state))
        assert LocalEndpoint("busy-one", root).status()["starting"] == {"blue": {"pid": server.pid, "by": owner["pid"]}}
        time.sleep(0.2)
        assert server.poll() is None
        LocalEndpoint("busy-one", root).stop()  # stop means everything, a start in progress included
        assert server.wait(timeout=30) is not None
    finally:
        server.kill()


def test_stop_and_status_of_an_unknown_or_unsafe_endpoint_are_one_line(tmp_path):
    for name in ("nothing-here", "../escape"):
        done = serve("status", "--endpoint", name, "--endpoints-dir", str(tmp_path))
        assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_a_folder_that_is_not_an_endpoint_is_never_taken_over(tmp_path):
    import pytest

    from finetune.errors import UserError

    (tmp_path / "finetune-serve").mkdir()
    (tmp_path / "finetune-serve" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a local endpoint's folder"):
        LocalEndpoint("finetune-serve", tmp_path)
    assert (tmp_path / "finetune-serve" / "notes.txt").read_text() == "mine"


def test_a_mangled_state_file_is_one_line(tmp_path):
    LocalEndpoint("mangled", tmp_path)
    for content in ("{not json", "[]", '{"key": 1}'):
        (tmp_path / "mangled" / "state.json").write_text(content)
        done = serve("status", "--endpoint", "mangled", "--endpoints-dir", str(tmp_path))
        assert done.returncode == 2 and "is not a state file" in done.stderr and done.stderr.count("\n") == 1
