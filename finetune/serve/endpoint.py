"""A local stand-in for an AML managed online endpoint: real azmlinfsrv deployments behind a keyed router.

Each deployment is an ``azmlinfsrv`` process (through :mod:`finetune.serve.inference_server`, so it
binds 127.0.0.1) running this package's ``score.py`` over a hard-linked copy of the model folder, exactly the
entry-script contract AML runs; like AML's copy of a registered model, it stays servable when the run
folder it came from is deleted. In front, :mod:`finetune.serve.router` does key auth and the traffic
split. Everything is recorded in ``<root>/<name>/state.json`` (deployments with port, pid and model,
traffic, key, router port), so another command, or another :class:`LocalEndpoint` object, sees and
drives the same endpoint; processes run in their own sessions and outlive the command that started them
until :meth:`LocalEndpoint.stop`. Mutations hold a file lock and replace the state file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

from finetune.errors import UserError
from finetune.serve import servers
from finetune.serve.endpoint_names import LOCAL_DEPLOYMENT_NAME, LOCAL_ENDPOINT_NAME
from finetune.serve.entry_scripts import entry_script
from finetune.serve.rollout import InvokeError, ModelRef
from finetune.serve.router import deployment_connection
from finetune.serve.servers import ROUTER_MODULE, SERVER_MODULE
from finetune.system.files import link_or_copy, write_json_atomic

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class LocalEndpoint:
    """The Endpoint protocol of :mod:`finetune.serve.rollout`, served on this machine.

    ``root`` holds one folder per endpoint. Settings left as None keep what the state file recorded
    (a later command reuses the key), else take the defaults below.
    """

    def __init__(
        self,
        name: str,
        root: Path | str,
        *,
        host: Optional[str] = None,
        port: Optional[int] = None,
        key: Optional[str] = None,
        max_items: Optional[int] = None,
        max_body_bytes: Optional[int] = None,
        max_forward_batch: Optional[int] = None,
        log_request_texts: Optional[bool] = None,
        start_timeout_s: Optional[float] = None,
        request_timeout_s: Optional[float] = None,
        read_timeout_s: Optional[float] = None,
    ):
        if not isinstance(name, str) or not LOCAL_ENDPOINT_NAME.match(name):
            raise UserError(f"endpoint name {name!r} must be 3-32 letters, digits, '_' or '-', starting with a letter")
        self.name = name
        self.dir = Path(root) / name
        self.state_file = self.dir / "state.json"
        if self.dir.is_dir() and not self.state_file.exists() and any(self.dir.iterdir()):
            # delete() removes the endpoint's folder: never one that some other program owns.
            raise UserError(
                f"{self.dir} exists and is not a local endpoint's folder (no state.json); choose "
                "another endpoint name or endpoints dir"
            )
        self._procs: Dict[str, subprocess.Popen] = {}
        self._state = {
            "name": name,
            "key": secrets.token_urlsafe(32),
            "host": "127.0.0.1",
            "port": 0,
            "limits": {
                "max_items": 64,
                "max_body_bytes": 1_000_000,
                "max_forward_batch": 32,
                "log_request_texts": False,
            },
            "start_timeout_s": 180.0,
            "request_timeout_s": 120.0,
            "read_timeout_s": 30.0,
            "router": None,
            "deployments": {},
            "traffic": {},
            # Deployments whose server is up but not yet healthy, with the process that is starting them: a
            # process is recorded before it serves, so a start killed halfway leaves nothing unrecorded.
            "starting": {},
        }
        # Processes started by this object die with the calling process (python -m finetune stopping what it
        # started, python -m finetune.serve in the foreground); deploy_local clears it when the endpoint is
        # meant to outlive the command (keep_running, or an endpoint that was already running).
        self.tied = True
        with self._locked() as state:
            if state["name"] != name:
                raise UserError(f"{self.state_file} records endpoint {state['name']!r}, not {name!r}")
            overrides = {
                "host": host,
                "port": port,
                "key": key,
                "start_timeout_s": start_timeout_s,
                "request_timeout_s": request_timeout_s,
                "read_timeout_s": read_timeout_s,
            }
            state.update({k: v for k, v in overrides.items() if v is not None})
            limits = {
                "max_items": max_items,
                "max_body_bytes": max_body_bytes,
                "max_forward_batch": max_forward_batch,
                "log_request_texts": log_request_texts,
            }
            state["limits"].update({k: v for k, v in limits.items() if v is not None})
            self.recovered = servers.recover(state)
            self._write(state)

    @classmethod
    def from_config(cls, config, root: Path | str) -> "LocalEndpoint":
        """From an :class:`finetune.config.schema.EndpointConfig`."""
        return cls(
            config.name,
            root,
            host=config.host,
            port=config.port,
            max_items=config.max_batch_items,
            max_body_bytes=config.max_body_bytes,
            max_forward_batch=config.max_forward_batch,
            log_request_texts=config.log_request_texts,
            start_timeout_s=config.start_timeout_s,
        )

    # -- state ---------------------------------------------------------------------------------------

    def _read(self) -> Optional[dict]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as error:  # UnicodeDecodeError included
            raise UserError(
                f"{self.state_file} is not a state file this package wrote ({error}); stop the "
                f"processes its logs name, then delete {self.dir}"
            ) from None
        if not isinstance(state, dict) or not {"key", "deployments", "traffic"} <= set(state):
            raise UserError(
                f"{self.state_file} is not a state file this package wrote (keys missing); stop the "
                f"processes its logs name, then delete {self.dir}"
            )
        return state

    def _write(self, state: dict) -> None:
        # The state holds the key: readable by its owner only.
        write_json_atomic(self.state_file, state, mode=0o600, indent=2)
        self._state = state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The current state under an exclusive lock; write it back with :meth:`_write` to change it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read() or self._state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh(self) -> dict:
        self._state = self._read() or self._state
        return self._state

    # -- what it is ----------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return self._refresh()["key"]

    @property
    def scoring_uri(self) -> Optional[str]:
        router = self._refresh()["router"]
        return f"http://{self._state['host']}:{router['port']}/score" if router else None

    def traffic(self) -> Dict[str, int]:
        state = self._refresh()
        return {name: int(state["traffic"].get(name, 0)) for name in state["deployments"]}

    def deployments(self) -> Dict[str, dict]:
        return dict(self._refresh()["deployments"])

    def status(self) -> dict:
        """What runs: the router and each deployment with pid, liveness, traffic and model; stale records
        (processes that died, starts whose starter died) are cleaned up first and listed under ``recovered``."""
        with self._locked() as state:
            # What opening this endpoint already cleaned up counts too.
            recovered, self.recovered = self.recovered + servers.recover(state), []
            self._write(state)
        router = state["router"]
        return {
            "name": self.name,
            "state_file": str(self.state_file),
            "recovered": recovered,
            "router": {
                "pid": router and router.get("pid"),
                "running": servers.alive(router, ROUTER_MODULE),
                "scoring_uri": self.scoring_uri,
            },
            "deployments": {
                name: {
                    "pid": record.get("pid"),
                    "running": servers.alive(record, SERVER_MODULE),
                    "traffic": int(state["traffic"].get(name, 0)),
                    "model": record.get("model"),
                }
                for name, record in state["deployments"].items()
            },
            "starting": {
                name: {"pid": record.get("pid"), "by": record.get("owner", {}).get("pid")}
                for name, record in state["starting"].items()
            },
        }

    def running(self) -> bool:
        """Whether the router and every deployment are up."""
        state = self._refresh()
        return servers.alive(state["router"], ROUTER_MODULE) and all(
            servers.alive(record, SERVER_MODULE) for record in state["deployments"].values()
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "LocalEndpoint":
        """Bring up the router and every recorded deployment that is not running (deployments in parallel)."""
        with self._locked() as state:
            if not servers.alive(state["router"], ROUTER_MODULE):
                self._start_router(state)
            pending = {}
            for name, record in state["deployments"].items():
                if not servers.alive(record, SERVER_MODULE):
                    pending[name] = self._launch(name, ModelRef(**record["model"]), Path(record["model_dir"]), state)
            try:
                for name, record in pending.items():
                    self._wait_healthy(name, record, state)
            except BaseException:  # Ctrl-C included
                servers.terminate_all([(record, SERVER_MODULE) for record in pending.values()])
                for name in pending:
                    state["starting"].pop(name, None)
                self._write(state)
                raise
            for name, record in pending.items():
                state["starting"].pop(name, None)
                state["deployments"][name] = servers.served(record)
            self._write(state)
        return self

    def stop(self) -> None:
        """Stop every process of this endpoint; the state keeps the deployments, traffic and key."""
        with self._locked() as state:
            servers.terminate_all(
                [(record, SERVER_MODULE) for record in state["deployments"].values()]
                + [(record, SERVER_MODULE) for record in state["starting"].values()]
                + [(state["router"], ROUTER_MODULE)]
            )
            for record in state["deployments"].values():
                record["pid"] = None
            for record in state["starting"].values():
                shutil.rmtree(record["model_dir"], ignore_errors=True)
            state["starting"] = {}
            state["router"] = None
            self._write(state)
        self._procs.clear()

    def delete(self) -> None:
        """Stop everything and forget the endpoint."""
        if self.state_file.exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the Endpoint protocol -----------------------------------------------------------------------

    def create_deployment(self, deployment: str, model: ModelRef) -> None:
        """Start azmlinfsrv for ``model`` and wait until it is healthy; it takes no traffic yet."""
        if not LOCAL_DEPLOYMENT_NAME.match(deployment):
            raise UserError(
                f"deployment name {deployment!r} must be 3-32 letters, digits or '-', starting with a letter"
            )
        folder = Path(model.path)
        if not (folder / "candidate.json").is_file() and not any(folder.glob("*/candidate.json")):
            raise UserError(f"model {model}: no candidate.json in {folder}")
        with self._locked() as state:
            if deployment in state["deployments"]:
                raise UserError(f"endpoint {self.name} already has a deployment {deployment!r}")
            if not servers.alive(state["router"], ROUTER_MODULE):
                self._start_router(state)
            model_dir = self.dir / "deployments" / deployment / "model"
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.copytree(folder, model_dir, copy_function=link_or_copy)
            record = self._launch(deployment, model, model_dir, state)
            try:
                self._wait_healthy(deployment, record, state)
            except BaseException:  # Ctrl-C included
                servers.terminate(record, SERVER_MODULE)
                state["starting"].pop(deployment, None)
                self._write(state)
                # The log stays for the error message to point at; the model copy is only weight.
                shutil.rmtree(model_dir, ignore_errors=True)
                raise
            state["starting"].pop(deployment, None)
            state["deployments"][deployment] = servers.served(record)
            self._write(state)

    def invoke(self, body: dict, deployment: Optional[str] = None) -> dict:
        """POST ``body`` to the scoring URI with the key; :class:`InvokeError` for any HTTP error."""
        if self.scoring_uri is None:
            raise InvokeError(f"endpoint {self.name} is not running")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._state['key']}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        target = f"{self.name}/{deployment}" if deployment else self.name
        router = self._state["router"]
        try:
            status, payload = servers.http_call(
                "POST",
                self._state["host"],
                router["port"],
                "/score",
                json.dumps(body).encode(),
                headers,
                self._state["request_timeout_s"] + 5,
            )
        except (OSError, http.client.HTTPException) as error:
            raise InvokeError(f"{target} did not answer: {error}") from None
        try:
            detail = json.loads(payload)
        except ValueError:
            detail = payload.decode("utf-8", "replace")
        if status == 200 and isinstance(detail, dict):
            return detail
        message = (detail.get("error") or detail.get("message")) if isinstance(detail, dict) else detail
        raise InvokeError(f"{target} answered HTTP {status}: {message}", status, detail)

    def set_traffic(self, weights: Dict[str, int]) -> None:
        """Replace the traffic split; deployments not named get 0. Weights sum to 100, or 0 to serve nothing."""
        with self._locked() as state:
            unknown = sorted(set(weights) - set(state["deployments"]))
            if unknown:
                raise UserError(f"endpoint {self.name} has no deployment {', '.join(unknown)}")
            if any(not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 100 for p in weights.values()):
                raise UserError(f"traffic weights must be whole percentages 0-100: {weights}")
            if sum(weights.values()) not in (0, 100):
                raise UserError(f"traffic weights must sum to 100 (or 0), not {sum(weights.values())}: {weights}")
            state["traffic"] = {name: int(weights.get(name, 0)) for name in state["deployments"]}
            self._write(state)

    def delete_deployment(self, deployment: str) -> None:
        """Stop and forget a deployment that takes no traffic; an unknown name is a no-op (rollbacks rely on it)."""
        with self._locked() as state:
            record = state["deployments"].get(deployment)
            if record is None:
                return
            if state["traffic"].get(deployment, 0) > 0:
                raise UserError(
                    f"deployment {deployment} takes {state['traffic'][deployment]}% of {self.name}'s "
                    f"traffic; move it elsewhere first"
                )
            # Out of the state first, so the router stops choosing it before its server goes away.
            del state["deployments"][deployment]
            state["traffic"].pop(deployment, None)
            self._write(state)
        servers.terminate(record, SERVER_MODULE)
        self._procs.pop(deployment, None)
        shutil.rmtree(self.dir / "deployments" / deployment, ignore_errors=True)

    # -- processes -----------------------------------------------------------------------------------

    def _start_router(self, state: dict) -> dict:
        port_file = self.dir / "router.port"
        port_file.unlink(missing_ok=True)
        log = self.dir / "router.log"
        command = servers.router_command(self.state_file, state, port_file)
        process = servers.spawn(command, log, self.dir, os.environ.copy(), self.tied)
        # Recorded before it listens: `stop` finds it however this command ends.
        state["router"] = {**servers.record(process), "port": None, "log": str(log)}
        self._write(state)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if process.poll() is not None:
                state["router"] = None
                self._write(state)
                raise UserError(f"the router of endpoint {self.name} could not start: {servers.tail(log, 1)}")
            if time.monotonic() > deadline:
                servers.terminate(state["router"], ROUTER_MODULE)
                state["router"] = None
                self._write(state)
                raise UserError(f"the router of endpoint {self.name} did not start within 30 s: {servers.tail(log)}")
            time.sleep(0.05)
        state["router"]["port"] = int(port_file.read_text())
        self._write(state)
        return state["router"]

    def _launch(self, deployment: str, model: ModelRef, model_dir: Path, state: dict) -> dict:
        folder = self.dir / "deployments" / deployment
        folder.mkdir(parents=True, exist_ok=True)
        # A copy, so that a running deployment keeps the scoring code it was created with.
        script = folder / "score.py"
        shutil.copyfile(entry_script(model_dir), script)
        log = folder / "server.log"
        command, env, socket_path = servers.deployment_command(script, model, model_dir, state["limits"])
        process = servers.spawn(command, log, folder, env, self.tied)
        self._procs[deployment] = process
        record = {
            **servers.record(process),
            "socket": socket_path,
            "model": model.to_dict(),
            "model_dir": str(model_dir),
            "log": str(log),
            "owner": servers.record_of(os.getpid()),
        }
        state["starting"][deployment] = record
        self._write(state)
        return record

    def _wait_healthy(self, deployment: str, record: dict, state: dict) -> None:
        process = self._procs[deployment]
        timeout = float(state["start_timeout_s"])
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                raise UserError(
                    f"deployment {deployment} of {self.name} exited with code {code} while starting: "
                    f"{servers.problems(Path(record['log']))} (log: {record['log']})"
                )
            try:
                if servers.exchange(deployment_connection(record, 2), "GET", "/", None, {})[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise UserError(
                    f"deployment {deployment} of {self.name} was not healthy within {timeout:.0f} s: "
                    f"{servers.problems(Path(record['log']))} (log: {record['log']})"
                )
            time.sleep(0.25)
