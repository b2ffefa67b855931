"""The server processes behind a local endpoint: started tied to (or outliving) the command, recorded by pid
and start time so a reused pid is never taken for ours, recovered when they died, stopped as a group, asked over
loopback HTTP, and their logs read for the reason a start failed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from finetune.serve.inference_server import BIND_SOCKET_ENV
from finetune.system.processes import die_with_parent, free_port

EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")
ROUTER_MODULE = "finetune.serve.router"
SERVER_MODULE = "finetune.serve.inference_server"


def router_command(state_file: Path, state: dict, port_file: Path) -> list[str]:
    """The router of the endpoint recorded in ``state_file``; it writes the port it took to ``port_file``."""
    return [
        sys.executable,
        "-m",
        ROUTER_MODULE,
        "--state-file",
        str(state_file),
        "--host",
        state["host"],
        "--port",
        str(state["port"]),
        "--port-file",
        str(port_file),
        "--read-timeout-s",
        str(state.get("read_timeout_s", 30.0)),
    ]


def deployment_command(script: Path, model, model_dir: Path, limits: dict) -> tuple[list[str], dict, str]:
    """(command, environment, socket path) of an azmlinfsrv process serving ``model_dir`` with ``script``, the
    endpoint's request ``limits`` passed to score.py through its environment variables."""
    # Only this user can enter the socket's folder, so only the router (same user) reaches the server;
    # /tmp keeps the path under the 108 bytes a Unix socket path may have.
    socket_path = os.path.join(tempfile.mkdtemp(prefix="finetune-"), "server.sock")
    env = {
        **os.environ,
        BIND_SOCKET_ENV: socket_path,
        "AML_APP_ROOT": str(script.parent),
        "GUNICORN_CMD_ARGS": "--no-control-socket",
        "PYTHONUNBUFFERED": "1",
        "FINETUNE_MAX_ITEMS": str(limits["max_items"]),
        "FINETUNE_MAX_BODY_BYTES": str(limits["max_body_bytes"]),
        "FINETUNE_MAX_BATCH": str(limits["max_forward_batch"]),
        "FINETUNE_LOG_REQUESTS": "1" if limits["log_request_texts"] else "0",
        "FINETUNE_MODEL_NAME": model.name,
        "FINETUNE_MODEL_VERSION": "" if model.version is None else str(model.version),
    }
    # --port is azmlinfsrv's own (it prints it); the server binds only the socket.
    command = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--entry_script",
        str(script),
        "--model_dir",
        str(model_dir.resolve()),
        "--port",
        str(free_port()),
    ]
    return command, env, socket_path


def spawn(command: list[str], log: Path, cwd: Path, env: dict, tied: bool) -> subprocess.Popen:
    """A server process leading its own process group (so it can be signalled whole); ``tied``: killed by
    the kernel when this process dies, else in its own session, outliving this command."""
    with open(log, "ab") as handle:
        if tied:
            return subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                preexec_fn=die_with_parent(os.getpid()),
            )
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def record(process: subprocess.Popen) -> dict:
    return record_of(process.pid)


def record_of(pid: int) -> dict:
    import psutil

    return {"pid": pid, "started": psutil.Process(pid).create_time()}


def served(record: dict) -> dict:
    """A deployment's record once healthy: who started it no longer matters."""
    return {key: value for key, value in record.items() if key != "owner"}


def recover(state: dict) -> list[str]:
    """Clean what dead processes left in ``state`` (which the caller writes back); one line per fix.

    A start whose starter died (a killed ``python -m finetune`` mid-rollout) is stopped and forgotten: it
    never took traffic. A deployment or router whose process died keeps its record with no pid, so
    ``start`` brings it back as it was.
    """
    notes = []
    for name, record in list(state.setdefault("starting", {}).items()):
        if owner_alive(record.get("owner")):
            continue
        terminate(record, SERVER_MODULE)
        shutil.rmtree(record["model_dir"], ignore_errors=True)
        del state["starting"][name]
        notes.append(f"stopped deployment {name} (pid {record.get('pid')}), left starting by a process that died")
    for name, record in state["deployments"].items():
        if record.get("pid") and not alive(record, SERVER_MODULE):
            remove_socket(record)
            notes.append(f"deployment {name}: process {record['pid']} is gone; it is stopped")
            record["pid"] = None
    router = state.get("router")
    if router and not alive(router, ROUTER_MODULE):
        notes.append(f"router: process {router.get('pid')} is gone; it is stopped")
        state["router"] = None
    return notes


def owner_alive(owner: Optional[dict]) -> bool:
    import psutil

    if not owner:
        return False
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) <= 0.01
    except psutil.Error:
        return False


def remove_socket(record: Optional[dict]) -> None:
    if record and record.get("socket"):
        shutil.rmtree(os.path.dirname(record["socket"]), ignore_errors=True)


def running_process(record: Optional[dict], module: str):
    """The recorded process if it still runs ``module``; a reused pid is some other process, not ours."""
    import psutil

    if not record or not record.get("pid"):
        return None
    try:
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["started"]) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process if module in " ".join(process.cmdline()) else None
    except psutil.Error:
        return None


def alive(record: Optional[dict], module: str) -> bool:
    return running_process(record, module) is not None


def terminate(record: Optional[dict], module: str) -> None:
    terminate_all([(record, module)])


def terminate_all(records: list, grace_s: float = 15.0) -> None:
    """SIGTERM each process group (gunicorn finishes requests in flight), SIGKILL what is left after grace_s.

    All at once, so stopping an endpoint takes one server's shutdown time, not one per deployment.
    """
    import psutil

    group = []
    for record, module in records:
        process = running_process(record, module)
        if process is None:
            continue
        group += [process] + process.children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    _, left = psutil.wait_procs(group, timeout=grace_s)
    for straggler in left:
        with contextlib.suppress(psutil.Error):
            straggler.kill()
    psutil.wait_procs(left, timeout=5)
    for record, _ in records:
        remove_socket(record)


def http_call(
    method: str, host: str, port: int, path: str, body: Optional[bytes], headers: dict, timeout: float
) -> tuple[int, bytes]:
    """One loopback HTTP exchange; http.client rather than urllib, which would honour proxy variables."""
    return exchange(http.client.HTTPConnection(host, port, timeout=timeout), method, path, body, headers)


def exchange(
    connection: http.client.HTTPConnection, method: str, path: str, body: Optional[bytes], headers: dict
) -> tuple[int, bytes]:
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def problems(log: Path) -> str:
    """The exceptions a server log reports, root cause first, else its last lines.

    The server's own wrapper exception and the model folder listing it prints after a failed init()
    would otherwise fill the tail and hide what the scoring script said.
    """
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    found = [line.strip()[:500] for line in lines if EXCEPTION_LINE.match(line) and "UserScriptException" not in line]
    return " | ".join(dict.fromkeys(found)) if found else tail(log)


def tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(line.strip()[:300] for line in text[-lines:]) or "(empty log)"
