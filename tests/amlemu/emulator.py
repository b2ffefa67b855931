"""Run an exported AML tree (``<run_dir>/aml``) the way Azure ML runs it, on this machine.

    python scripts/aml_emulate.py <run_dir>/aml [<other_run_dir>/aml ...] [--work DIR]

It reads only the tree: ``pipeline.yml`` (nodes, commands, inputs, the sweep's space/policy/limits), the
``code`` snapshot, ``settings.json`` and the data the YAML points at. What AML does, and how it is
emulated here:

- Nodes run in dependency order (``${{parent.jobs.<node>.outputs.<name>}}``). Each job runs its YAML
  command line with ``${{inputs.*}}``, ``${{outputs.*}}`` and ``${{search_space.*}}`` substituted, in
  ``bash -c``, with cwd = a fresh copy of the uploaded code snapshot. Inputs are copied in (AML mounts
  them), outputs are empty folders.
- The job Python is a venv built from the node's own environment (image + conda file), cached by the spec's
  hash (:mod:`.environments`): its Python version checked against the code's requires-python, its pip list
  installed by pip's resolver (a missing or conflicting pin fails the node), CUDA torch builds mapped to the CPU
  build of the same version. It has no ``finetune`` installed, as AML's image has none; the job's
  ``sitecustomize`` still hides one should an environment list it. A probe asserts that ``finetune`` resolves
  only to the snapshot and has no installed metadata.
- ``distribution: pytorch`` with ``process_count_per_instance`` / ``instance_count`` runs one process per rank
  with AML's MASTER_ADDR/MASTER_PORT/WORLD_SIZE/NODE_RANK/RANK/LOCAL_RANK (:mod:`.distribution`).
- AML's job variables are set: ``AZUREML_RUN_ID``/``MLFLOW_RUN_ID`` (the run AML creates before the job),
  ``MLFLOW_TRACKING_URI=azureml://eastus.api.azureml.ms/mlflow/v1.0/<workspace>``, ``MLFLOW_TRACKING_TOKEN``,
  ``MLFLOW_EXPERIMENT_*``, ``AZUREML_ARM_*``, and for jobs with a managed identity ``DEFAULT_IDENTITY_CLIENT_ID``
  with ``MSI_ENDPOINT``/``MSI_SECRET`` (what azure-identity's AzureMLCredential reads).
- Network: a ``sitecustomize`` on the job's path resolves the Azure hosts a job talks to
  (``management.azure.com``, ``eastus.api.azureml.ms``, the workspace blob account) to the local AML
  stand-in (:mod:`.recorder`, HTTPS with its own certificate, trusted via REQUESTS_CA_BUNDLE) and
  refuses every other address. The azureml-mlflow plugin therefore talks HTTPS to
  ``/mlflow/v2.0/<workspace>/api/2.0/mlflow/...`` (its URL scheme, azureml/mlflow/_store/azureml_reststore.py),
  answered by a real MLflow tracking server; MLClient calls of the register/deploy steps reach the
  stand-in as the AML control plane.
- Sweep: trials are sampled from the YAML's ``search_space`` with the YAML's ``sampling_algorithm``; while a
  trial runs, its ``objective.primary_metric`` is read back from the tracking store (as AML reads run
  metrics) and the YAML's ``early_termination`` policy is applied by the emulator's own reading of AML's
  documented rules (:mod:`.policies`, not the project's implementation); a stopped trial is cancelled. ``limits``
  (trials, trial_timeout) hold. The sweep's outputs are the best trial's.
- AutoML: only the service can run AutoML NLP. Its node is replaced by a clearly labelled STAND-IN
  (:mod:`.automl_standin`) that reads the MLTables, applies AutoML NLP's data validation and writes
  ``best_model`` as AutoML's MLflow model (sklearn + python_function flavours, AutoML's wrapper interface).
- Deployments: when the deploy step's deployment is scored, its registered model and uploaded scoring code
  are read back from the stand-in's blob store and served by the real inference server (azmlinfsrv) in the
  deployment environment's venv, with the deployment's environment variables.
- Several trees (``aml_emulate.py TREE_A TREE_B``) run one after the other in one workspace: one service, one
  registry, the same endpoints; the deployments of the first keep serving while the second runs.

At the end it prints the node table and writes ``<work>/emulation.json`` (every node, with its tree),
``<work>/endpoints.json`` (each endpoint's traffic and deployments) and ``<work>/environments.json`` (each
environment: built or cached, seconds). Exit code 0 when every node succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from . import automl_standin
from . import recorder as aml_recorder
from .distribution import Ranks, launch, layout
from .environments import EnvironmentFailure, Environments
from .policies import TerminationService

REPO = Path(__file__).resolve().parents[2]

REGION_HOST = f"{aml_recorder.LOCATION}.api.azureml.ms"
ARM_HOST = "management.azure.com"
EMULATED_HOSTS = (ARM_HOST, REGION_HOST, aml_recorder.BLOB_HOST)
TRACKING_URI = f"azureml://{REGION_HOST}/mlflow/v1.0{aml_recorder.WORKSPACE_PATH}"
AUTOML_RUNTIME = "/azureml-envs/azureml-automl-dnn-text-gpu"
IDENTITY_CLIENT_ID = "44444444-4444-4444-4444-444444444444"
PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs|search_space)\.([A-Za-z0-9_]+)\s*\}\}")
PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
POLL_S = 1.0

SITECUSTOMIZE = '''\
"""Emulated network of an AML job (scripts/aml_emulate.py): Azure hosts resolve to the local AML stand-in."""
import ipaddress
import os
import socket

_port = int(os.environ["AML_EMULATION_PORT"])
_hosts = set(os.environ["AML_EMULATION_HOSTS"].split(","))
_getaddrinfo = socket.getaddrinfo


def _emulated(host, port, *args, **kwargs):
    if host in _hosts:
        return _getaddrinfo("127.0.0.1", _port, *args, **kwargs)
    if isinstance(host, str) and host not in ("localhost",):
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise OSError(f"network access outside the AML emulation: {host}")
        except ValueError:
            raise OSError(f"network access outside the AML emulation: {host}") from None
    return _getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = _emulated

# AML's image has no finetune installed: hide one that this interpreter may have (dist-info, editable
# finder, the repository on sys.path), so a job that reads installed metadata fails here as it would there.
import importlib.metadata as _metadata
import sys as _sys

_repo = os.environ.get("AML_EMULATION_REPO", "")
_sys.path[:] = [p for p in _sys.path if not (_repo and p and os.path.realpath(p) == _repo)]
_sys.meta_path[:] = [f for f in _sys.meta_path if "finetune" not in repr(f).lower()]
_find = _metadata.MetadataPathFinder.find_distributions


def _without_finetune(*args, **kwargs):
    return (d for d in _find(*args, **kwargs) if (d.metadata["Name"] or "").lower() != "finetune")


_metadata.MetadataPathFinder.find_distributions = _without_finetune
'''

PROBE = """\
import importlib.util, importlib.metadata, json, os, sys
spec = importlib.util.find_spec("finetune")
try:
    importlib.metadata.distribution("finetune")
    dist = True
except importlib.metadata.PackageNotFoundError:
    dist = False
plugin = importlib.util.find_spec("azureml.mlflow") is not None
print(json.dumps({"origin": spec.origin if spec else None, "dist_info": dist, "plugin": plugin, "python": sys.prefix,
                  "cwd": os.getcwd(), "path": sys.path}))
"""

SERVER = '''\
"""azmlinfsrv bound to 127.0.0.1 (it binds 0.0.0.0 otherwise); the emulated managed deployment's server."""
from azureml_inference_server_http import amlserver

amlserver.DEFAULT_HOST = "127.0.0.1"
amlserver.run()
'''


@dataclass
class NodeResult:
    node: str
    kind: str
    compute: str
    environment: str
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""
    trials: List[dict] = field(default_factory=list)
    service_calls: Dict[str, int] = field(default_factory=dict)  # what the node's jobs asked the service
    tree: str = ""  # which exported tree (several run in one workspace)


class EmulationError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def from_aml_distribution(spec: dict) -> dict:
    """A sweep YAML dimension (AML's fields, natural-log bounds for the log family) as a project dict."""
    kind = spec["type"]
    if kind == "choice":
        return {"type": "choice", "values": list(spec["values"])}
    if kind == "randint":
        return {"type": "randint", "upper": spec["upper"]}
    if kind in ("uniform", "quniform"):
        result = {"type": kind, "min": spec["min_value"], "max": spec["max_value"]}
    elif kind in ("loguniform", "qloguniform"):
        result = {"type": kind, "min": math.exp(spec["min_value"]), "max": math.exp(spec["max_value"])}
    else:  # normal family: mu/sigma mean the same on both sides
        result = {"type": kind, "mu": spec["mu"], "sigma": spec["sigma"]}
    if "q" in spec:
        result["q"] = spec["q"]
    return result


class Emulation:
    def __init__(self, tree: Path, work: Path, log=print, workspace: Optional["Emulation"] = None):
        """``workspace``: an emulation that ran before in the same workspace (its service, registry, endpoints)."""
        import yaml

        self.tree = Path(tree).resolve()
        self.work = Path(work).resolve()
        self.log = log
        self.pipeline = yaml.safe_load((self.tree / "pipeline.yml").read_text(encoding="utf-8"))
        self.experiment = self.pipeline.get("experiment_name") or "Default"
        self.outputs: Dict[str, Dict[str, Path]] = {}
        self.results: List[NodeResult] = []
        self.servers: Dict[str, tuple] = {}
        self.netmap = self.work / "netmap"
        self.sequence = 0
        self.automl_runtime = None  # the environment AutoML's stand-in model loads in, once an AutoML node ran
        self.workspace = workspace

    # ------------------------------------------------------------------ the service side

    def start_service(self) -> None:
        if self.workspace is not None:
            self.join_workspace(self.workspace)
            return
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ["_MLFLOW_SERVER_FILE_STORE"] = f"sqlite:///{self.work / 'workspace-mlflow.db'}"
        os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = str(self.work / "workspace-artifacts")
        from mlflow.server import app

        (self.work / "service").mkdir(parents=True, exist_ok=True)
        self.service = aml_recorder.RecorderServer(self.work / "service", hosts=EMULATED_HOSTS)
        self.recorder = self.service.recorder
        self.mlflow = app.test_client()
        self.recorder.mlflow = self.mlflow
        self.recorder.scorer = self.score
        self.recorder.on_put = self.created
        self.netmap.mkdir(parents=True, exist_ok=True)
        (self.netmap / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        self.open_experiment()

    def join_workspace(self, previous: "Emulation") -> None:
        """The same service as ``previous`` (its registry, endpoints and serving deployments), this tree's jobs."""
        self.service, self.recorder, self.mlflow = previous.service, previous.recorder, previous.mlflow
        self.servers, self.netmap, self.sequence = previous.servers, previous.netmap, previous.sequence
        self.recorder.scorer, self.recorder.on_put = self.score, self.created
        self.open_experiment()

    def open_experiment(self) -> None:
        found = self.api("GET", "experiments/get-by-name", query={"experiment_name": self.experiment})
        self.experiment_id = (
            found.get("experiment", {}).get("experiment_id")
            or self.api("POST", "experiments/create", {"name": self.experiment})["experiment_id"]
        )

    def grant_steps_identity(self, cluster: str) -> None:
        """The workspace admin's part: the steps' cluster identity holds AzureML Data Scientist."""
        import uuid

        principal = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{aml_recorder.WORKSPACE_PATH}/computes/{cluster}"))
        self.recorder.grant(principal)

    def api(self, method: str, path: str, body: Optional[dict] = None, query: Optional[dict] = None) -> dict:
        """The service's own view of its MLflow store (AML creating runs and reading their metrics)."""
        response = self.mlflow.open(f"/api/2.0/mlflow/{path}", method=method, json=body, query_string=query)
        data = response.get_json(silent=True) or {}
        if response.status_code >= 400 and response.status_code != 404:
            raise EmulationError(f"MLflow {method} {path}: {response.status_code} {data}")
        return data

    def create_run(self, name: str, parent: Optional[str] = None) -> str:
        tags = [{"key": "mlflow.runName", "value": name}, {"key": "azureml.emulated", "value": "true"}]
        if parent:
            tags.append({"key": "mlflow.parentRunId", "value": parent})
        run = self.api(
            "POST",
            "runs/create",
            {
                "experiment_id": self.experiment_id,
                "run_name": name,
                "start_time": int(time.time() * 1000),
                "tags": tags,
            },
        )
        return run["run"]["info"]["run_id"]

    def finish_run(self, run_id: str, status: str) -> None:
        self.api("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)})

    def metric_history(self, run_id: str, metric: str) -> List[float]:
        data = self.api("GET", "metrics/get-history", query={"run_id": run_id, "metric_key": metric})
        points = sorted(data.get("metrics", []), key=lambda m: (int(m.get("step", 0)), int(m.get("timestamp", 0))))
        return [float(m["value"]) for m in points]

    # ------------------------------------------------------------------ jobs

    def job_environment(self, run_id: str, identity: bool, python: Path) -> dict:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")
            and not key.startswith(("_MLFLOW_", "AZUREML_"))
        }
        token = aml_recorder.FakeCredential().get_token("https://ml.azure.com").token
        env.update(
            {
                # `python` in a command line is the job environment's, as in AML's image.
                "PATH": f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(self.netmap),
                "AML_EMULATION_PORT": str(self.recorder.port),
                "AML_EMULATION_HOSTS": ",".join(EMULATED_HOSTS),
                "AML_EMULATION_REPO": str(REPO),
                "REQUESTS_CA_BUNDLE": str(self.service.cert),
                "SSL_CERT_FILE": str(self.service.cert),
                "AZUREML_RUN_ID": run_id,
                "MLFLOW_RUN_ID": run_id,
                "MLFLOW_TRACKING_URI": TRACKING_URI,
                "MLFLOW_TRACKING_TOKEN": token,
                "MLFLOW_EXPERIMENT_ID": self.experiment_id,
                "MLFLOW_EXPERIMENT_NAME": self.experiment,
                "AZUREML_ARM_SUBSCRIPTION": aml_recorder.SUBSCRIPTION,
                "AZUREML_ARM_RESOURCEGROUP": aml_recorder.RESOURCE_GROUP,
                "AZUREML_ARM_WORKSPACE_NAME": aml_recorder.WORKSPACE,
                "AZUREML_ARM_PROJECT_NAME": self.experiment,
                "AZUREML_SERVICE_ENDPOINT": f"https://{REGION_HOST}",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        if identity:
            env.update(
                {
                    "DEFAULT_IDENTITY_CLIENT_ID": IDENTITY_CLIENT_ID,
                    "MSI_ENDPOINT": f"{self.recorder.base_url}{aml_recorder.MSI_PATH}",
                    "MSI_SECRET": aml_recorder.MSI_SECRET,
                }
            )
        return env

    def snapshot(self, job_dir: Path, code: str) -> Path:
        """A fresh copy of the uploaded code folder: the job's working directory."""
        target = job_dir / "code"
        shutil.copytree(self.tree / code, target, ignore=shutil.ignore_patterns("__pycache__"))
        return target

    def probe(self, code: str, python: Path) -> dict:
        """Where ``finetune`` comes from inside a job: the snapshot only, never an installed distribution."""
        job_dir = self.work / f"probe-{self.tree.parent.name}" if self.workspace else self.work / "probe"
        cwd = self.snapshot(job_dir, code)
        completed = subprocess.run(
            [str(python), "-c", PROBE],
            cwd=cwd,
            env=self.job_environment("probe", False, python),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if completed.returncode != 0:
            raise EmulationError(f"probe failed: {completed.stderr[-500:]}")
        found = json.loads(completed.stdout.strip().splitlines()[-1])
        if not found["origin"] or not Path(found["origin"]).resolve().is_relative_to(cwd.resolve()):
            raise EmulationError(f"finetune resolves outside the code snapshot: {found['origin']}")
        if found["dist_info"]:
            raise EmulationError("a finetune distribution is installed in the job Python; jobs must not see one")
        if any(Path(entry).resolve() == REPO for entry in found["path"] if entry):
            raise EmulationError("the repository is on the job's sys.path")
        if not found["plugin"]:
            raise EmulationError("azureml-mlflow is not installed in the job Python (the job environment's plugin)")
        return found

    def resolve_input(self, value, job_dir: Path, name: str, kind: Optional[str]):
        """A bound input as the job sees it: a copied file or folder (AML mounts it), or a literal."""
        if isinstance(value, dict):
            kind = value.get("type", kind)
            value = value.get("path", value.get("default"))
        if not isinstance(value, str) or not (
            value.startswith("${{") or kind in ("uri_file", "uri_folder", "custom_model", "mlflow_model", "mltable")
        ):
            return value
        parent_input, parent_output = PARENT_INPUT.match(value), PARENT_OUTPUT.match(value)
        if parent_input:
            source = self.tree / self.pipeline["inputs"][parent_input.group(1)]["path"]
        elif parent_output:
            source = self.outputs[parent_output.group(1)][parent_output.group(2)]
        else:
            source = self.tree / value
        source = source.resolve()
        if not source.exists():
            raise EmulationError(f"input {name}: {source} does not exist")
        target = job_dir / "inputs" / name
        target.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            return str(target)
        shutil.copy2(source, target / source.name)
        return str(target / source.name)

    def substitute(self, command: str, inputs: dict, outputs: dict, space: dict) -> str:
        def value(match):
            group, key = match.group(1), match.group(2)
            source = {"inputs": inputs, "outputs": outputs, "search_space": space}[group]
            if key not in source:
                if group == "inputs" and key in space:
                    return str(space[key])  # a swept input: the trial's sample
                raise EmulationError(f"{match.group(0)} has no value")
            return str(source[key])

        return PLACEHOLDER.sub(value, command)

    def start_job(
        self,
        name: str,
        spec: dict,
        bindings: dict,
        identity: bool,
        space: Optional[dict] = None,
        parent_run: Optional[str] = None,
        job: Optional[dict] = None,
    ):
        """Start one job process; returns (process, run id, outputs, job dir)."""
        self.sequence += 1
        job_dir = self.work / "jobs" / f"{self.sequence:02d}-{name}"
        job_dir.mkdir(parents=True)
        declared = spec.get("inputs") or {}
        inputs = {}
        for key, definition in declared.items():
            kind = definition.get("type") if isinstance(definition, dict) else None
            bound = bindings.get(key, definition.get("default") if isinstance(definition, dict) else definition)
            if bound is None and key not in (space or {}):
                continue
            if key in (space or {}):
                continue
            inputs[key] = self.resolve_input(bound, job_dir, key, kind)
        outputs = {}
        for key in spec.get("outputs") or {}:
            outputs[key] = job_dir / "outputs" / key
            outputs[key].mkdir(parents=True)
        command = self.substitute(spec["command"], inputs, {k: str(v) for k, v in outputs.items()}, space or {})
        python = self.environments.prepare(spec.get("environment")).python
        cwd = self.snapshot(job_dir, spec["code"])
        run_id = self.create_run(name, parent_run)
        (job_dir / "command.sh").write_text(command + "\n", encoding="utf-8")
        env = self.job_environment(run_id, identity, python)
        # The job's own variables, as AML sets them (the command job's `environment_variables`).
        for key, value in {
            **(spec.get("environment_variables") or {}),
            **((job or {}).get("environment_variables") or {}),
        }.items():
            env[key] = self.in_image(str(value))
        instances, per_instance = layout(job or spec)
        if instances * per_instance > 1:
            return launch(command, cwd, env, job_dir, instances, per_instance), run_id, outputs, job_dir
        log = open(job_dir / "std_log.txt", "w", encoding="utf-8")
        process = subprocess.Popen(
            ["/bin/bash", "-c", command], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log_file = log
        return process, run_id, outputs, job_dir

    def in_image(self, value: str) -> str:
        """A path into AutoML's image environment (``/azureml-envs/azureml-automl-dnn-text-gpu``, the conda env
        azureml-assets' Dockerfile of ai-ml-automl-dnn-text-gpu creates) as the emulation has it: the runtime of the
        AutoML stand-in, the venv its model's conda file makes."""
        if not value.startswith(AUTOML_RUNTIME + "/"):
            return value
        if self.automl_runtime is None:
            raise EmulationError(f"{value}: AutoML's runtime exists only once an AutoML node has run")
        return str(self.automl_runtime.python.parent.parent) + value[len(AUTOML_RUNTIME) :]

    @staticmethod
    def close_log(process) -> None:
        if isinstance(process, Ranks):
            process.close_logs()
        else:
            process.log_file.close()

    def wait(self, process, run_id: str, job_dir: Path, timeout: Optional[float]) -> str:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel(process)
            code = None
        self.close_log(process)
        status = "FINISHED" if code == 0 else ("KILLED" if code is None else "FAILED")
        self.finish_run(run_id, status)
        if code != 0:
            tail = (job_dir / "std_log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise EmulationError(f"exit code {code}: {' | '.join(tail)[-600:]}")
        return status

    @staticmethod
    def cancel(process) -> None:
        if isinstance(process, Ranks):
            process.cancel()
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    # ------------------------------------------------------------------ node kinds

    def command_node(self, name: str, node: dict, result: NodeResult) -> None:
        spec = node.get("component") or node
        identity = bool(node.get("identity") or spec.get("identity"))
        result.environment = self.environments.prepare(spec.get("environment")).label
        process, run_id, outputs, job_dir = self.start_job(name, spec, node.get("inputs") or {}, identity, job=node)
        self.wait(process, run_id, job_dir, _seconds(node.get("limits", {}).get("timeout")))
        self.outputs[name] = outputs
        produced = [path.name for out in outputs.values() for path in sorted(out.glob("*.json"))]
        result.detail = self.describe_outputs(name, outputs) or ", ".join(produced)

    def describe_outputs(self, name: str, outputs: dict) -> str:
        for out in outputs.values():
            # The deploy step writes model_ref.json (the version now in Production) beside rollout.json.
            for file in ("rollout.json", "model_ref.json", "result.json"):
                path = out / file
                if path.is_file():
                    data = json.loads(path.read_text(encoding="utf-8"))
                    if file == "model_ref.json":
                        if data.get("decision") == "register":
                            return (
                                f"registered {data['name']}:{data['version']} ({data['candidate']}); {data['reason']}"
                            )
                        return f"kept production: {data.get('reason')}"
                    if file == "rollout.json":
                        if data.get("status") == "skipped":
                            return f"skipped: {data.get('reason')}"
                        smoke = data.get("smoke_test", {})
                        return (
                            f"{data.get('status')} {data.get('deployment')} traffic {data.get('traffic')}; "
                            f"smoke test {smoke.get('latency_ms', float('nan')):.0f} ms"
                        )
                    test = data.get("test", {})
                    return f"test auc_weighted {test.get('auc_weighted', float('nan')):.4f}"
        return ""

    def sweep_node(self, name: str, node: dict, result: NodeResult) -> None:
        import optuna

        from finetune.search.space import latent_distribution, value_from_latent

        trial_spec = node["trial"]
        result.environment = self.environments.prepare(trial_spec.get("environment")).label
        space = {key: from_aml_distribution(spec) for key, spec in node["search_space"].items()}
        sampling = node.get("sampling_algorithm") or {"type": "random"}
        sampling = {"type": sampling} if isinstance(sampling, str) else sampling
        kind = sampling.get("type", "random")
        if kind == "random":
            sampler = optuna.samplers.RandomSampler(seed=sampling.get("seed"))
        elif kind == "bayesian":
            sampler = optuna.samplers.TPESampler(seed=sampling.get("seed"))
        else:
            sampler = optuna.samplers.GridSampler({k: d["values"] for k, d in space.items()})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=sampler)
        objective = node["objective"]
        metric, goal = objective["primary_metric"], objective["goal"].lower()
        termination = TerminationService(node.get("early_termination"), goal)
        limits = node.get("limits") or {}
        total = int(limits.get("max_total_trials", 1))
        trial_timeout = _seconds(limits.get("trial_timeout"))
        sweep_timeout = _seconds(limits.get("timeout"))
        sweep_started = time.time()
        sweep_run = self.create_run(name)
        curves: Dict[int, List[float]] = {}
        best = None
        # Trials run one at a time here (max_concurrent_trials only changes wall time on AML).
        for number in range(total):
            if sweep_timeout and time.time() - sweep_started > sweep_timeout:
                self.log(f"  sweep timeout {sweep_timeout:g} s reached: no more trials")
                break
            asked = study.ask({key: latent_distribution(dist) for key, dist in space.items()})
            sample = {key: value_from_latent(key, space[key], asked.params[key]) for key in space}
            process, run_id, outputs, job_dir = self.start_job(
                f"{name}_trial{number}", trial_spec, node.get("inputs") or {}, False, sample, sweep_run, job=trial_spec
            )
            curves[number] = []
            started, status, reason = time.time(), "completed", ""
            while process.poll() is None:
                time.sleep(POLL_S)
                values = self.metric_history(run_id, metric)
                for interval in range(len(curves[number]) + 1, len(values) + 1):
                    curves[number] = values[:interval]
                    decision = termination.on_report(str(number), values[interval - 1])
                    if decision:
                        status, reason = "early-terminated", decision
                        self.cancel(process)
                        break
                if trial_timeout and time.time() - started > trial_timeout:
                    status, reason = "timed out", f"trial_timeout {trial_timeout:g} s"
                    self.cancel(process)
                if status != "completed":
                    break
            self.close_log(process)
            reported = self.metric_history(run_id, metric)
            for value in reported[len(curves[number]) :]:  # reports after the last poll: known to later decisions
                termination.reports.report(str(number), value)
            termination.end(str(number))
            curves[number] = reported or curves[number]
            if status == "completed" and process.returncode != 0:
                status = "failed"
                reason = (job_dir / "std_log.txt").read_text(errors="replace").strip().splitlines()[-1:]
            self.finish_run(run_id, {"completed": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
            value = (max if goal == "maximize" else min)(curves[number]) if curves[number] else None
            trial = {
                "trial": number,
                "params": sample,
                "status": status,
                "reason": str(reason),
                metric: value,
                "evaluations": len(curves[number]),
                "run_id": run_id,
                "seconds": round(time.time() - started, 1),
            }
            result.trials.append(trial)
            self.log(f"  trial {number}: {status} {metric}={value} params={sample} {reason}")
            study.tell(asked, value if value is not None else (-1e9 if goal == "maximize" else 1e9))
            if (
                status == "completed"
                and value is not None
                and (best is None or (value > best[0] if goal == "maximize" else value < best[0]))
            ):
                best = (value, number, outputs)
        self.finish_run(sweep_run, "FINISHED" if best else "FAILED")
        if best is None:
            raise EmulationError("no trial completed")
        self.outputs[name] = best[2]
        result.detail = (
            f"{len(result.trials)} trials ({', '.join(t['status'] for t in result.trials)}); best trial "
            f"{best[1]} {metric}={best[0]:.4f} read back from the azureml:// tracking store"
        )

    def automl_node(self, name: str, node: dict, result: NodeResult) -> None:
        """STAND-IN for AML AutoML NLP (only the service runs it): :mod:`.automl_standin`."""
        result.environment = "STAND-IN (this Python): AutoML NLP runs only in the service"
        job_dir = self.work / "jobs" / f"automl-stand-in-{name}"
        tables = {
            key: Path(self.resolve_input(node[key], job_dir, key, "mltable"))
            for key in ("training_data", "validation_data")
        }
        outputs = {key: job_dir / "outputs" / key for key in node.get("outputs") or {"best_model": {}}}
        try:
            result.detail = automl_standin.train(
                tables["training_data"],
                tables["validation_data"],
                node.get("target_column_name", "label"),
                node.get("task"),
                outputs,
            )
        except automl_standin.AutomlDataError as error:
            raise EmulationError(f"AutoML data validation: {error}") from None
        # The runtime that loads the model in later jobs: its conda file, on a plain image (AutoML's own image is
        # GPU-only; its Python and pins are the stand-in's, which cloudpickle's by-value classes need).
        self.automl_runtime = self.environments.prepare(
            {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04", "conda_file": automl_standin.conda_env()}
        )
        self.outputs[name] = outputs

    # ------------------------------------------------------------------ deployments

    def _blob_prefix(self, uri: str) -> str:
        if "/paths/" in uri:
            return "/azureml-blobstore/" + uri.split("/paths/", 1)[1].strip("/")
        return "/" + uri.split("://", 1)[-1].split("/", 1)[1].strip("/")

    def _materialize(self, uri: str, target: Path) -> Path:
        prefix = self._blob_prefix(uri)
        found = [path for path in self.recorder.blobs if path.startswith(prefix + "/") or path == prefix]
        if not found:
            raise EmulationError(f"nothing uploaded under {uri}")
        for path in found:
            destination = target / path[len(prefix) :].lstrip("/") if path != prefix else target / Path(path).name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(self.recorder.blobs[path])
        return target

    def _deployment(self, name: str) -> dict:
        for key, body in self.recorder.resources.items():
            if re.search(rf"/onlineEndpoints/[^/]+/deployments/{re.escape(name)}$", key):
                return body
        raise EmulationError(f"no deployment {name}")

    def start_server(self, deployment: str) -> int:
        """The deployment's container: its model and scoring code from the blob store, the real azmlinfsrv."""
        body = self._deployment(deployment)
        properties = body["properties"]
        model = self.recorder.resources[properties["model"]]["properties"]
        code_id = properties["codeConfiguration"]["codeId"]
        code = self.recorder.resources[code_id]["properties"]
        folder = self.work / "deployments" / deployment
        model_dir = self._materialize(model.get("modelUri") or model.get("path"), folder / "model")
        code_dir = self._materialize(code["codeUri"], folder / "code")
        script = next(code_dir.rglob(properties["codeConfiguration"]["scoringScript"]))
        python = self.environments.prepare(self.deployment_environment(properties)).python
        (folder / "server.py").write_text(SERVER, encoding="utf-8")
        port = free_port()
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
        env.update(properties.get("environmentVariables") or {})
        env.update(
            {
                "AZUREML_MODEL_DIR": str(model_dir),
                "GUNICORN_CMD_ARGS": "--no-control-socket",
                "OMP_NUM_THREADS": "1",
                "FINETUNE_NUM_THREADS": "1",
            }
        )
        log = open(folder / "server.log", "w", encoding="utf-8")
        process = subprocess.Popen(
            [
                str(python),
                str(folder / "server.py"),
                "--entry_script",
                str(script),
                "--model_dir",
                str(model_dir),
                "--port",
                str(port),
            ],
            cwd=script.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if process.poll() is not None:
                raise EmulationError(f"deployment {deployment} server exited: see {folder / 'server.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        self.servers[deployment] = (process, port, log)
        return port

    def deployment_environment(self, properties: dict) -> dict:
        """The deployment's environment as its YAML gave it (image + conda file), from the registered asset."""
        import yaml

        wanted = str(properties.get("environmentId", "")).lower().rstrip("/")
        for key, body in self.recorder.resources.items():
            if wanted and key.lower().rstrip("/").endswith(wanted.split("/workspaces/", 1)[-1]):
                asset = body.get("properties", {})
                conda = asset.get("condaFile")
                return {"image": asset.get("image"), "conda_file": yaml.safe_load(conda) if conda else None}
        raise EmulationError(f"deployment environment {wanted or '(none)'} was never created in the workspace")

    def created(self, relative: str, body: dict) -> None:
        """AML answers a deployment's creation once its container is healthy: the server starts now."""
        match = re.fullmatch(r"onlineEndpoints/[^/]+/deployments/([^/]+)", relative)
        if match and match.group(1) in self.servers:  # an update: AML replaces the deployment's containers
            process, _port, log = self.servers.pop(match.group(1))
            self.cancel(process)
            log.close()
        if match:
            try:
                self.start_server(match.group(1))
            except (EmulationError, EnvironmentFailure) as error:
                self.log(f"  deployment {match.group(1)} failed: {error}")
                body.setdefault("properties", {})["provisioningState"] = "Failed"

    def score(self, deployment: Optional[str], body) -> tuple:
        """The stand-in's /score: the request forwarded to the deployment's inference server."""
        if deployment is None:
            return 404, {"error": "no deployment takes traffic"}
        port = self.servers[deployment][1] if deployment in self.servers else self.start_server(deployment)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop_servers(self) -> None:
        for process, _port, log in self.servers.values():
            self.cancel(process)
            log.close()

    # ------------------------------------------------------------------ pipeline

    @staticmethod
    def calls(requests) -> Dict[str, int]:
        """Requests by what they were: the azureml MLflow plugin, ARM/AML control plane, blobs, identity, scoring."""
        counts: Dict[str, int] = {}
        for request in requests:
            if request.path.startswith(aml_recorder.MLFLOW_PREFIX):
                kind = "mlflow via azureml://"
            elif request.host.startswith(aml_recorder.BLOB_ACCOUNT):
                kind = "blob"
            elif request.path == aml_recorder.MSI_PATH:
                kind = "managed identity token"
            elif request.path == "/score":
                kind = "scoring"
            else:
                kind = "control plane"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def order(self) -> List[str]:
        jobs = self.pipeline["jobs"]
        needs = {
            name: set(re.findall(r"parent\.jobs\.([A-Za-z0-9_]+)\.", json.dumps(job))) for name, job in jobs.items()
        }
        ordered: List[str] = []
        while len(ordered) < len(jobs):
            ready = [name for name in jobs if name not in ordered and needs[name] <= set(ordered)]
            if not ready:
                raise EmulationError(f"dependency cycle among {sorted(set(jobs) - set(ordered))}")
            ordered.append(ready[0])
        return ordered

    def run(self) -> List[NodeResult]:
        jobs = self.pipeline["jobs"]
        self.start_service()
        steps_clusters = {
            str(job.get("compute", "")).split(":")[-1]
            for job in jobs.values()
            if job.get("identity") or (job.get("component") or {}).get("identity")
        }
        for cluster in steps_clusters:
            self.grant_steps_identity(cluster)
        first = next(
            job.get("trial") or job.get("component") or job
            for job in jobs.values()
            if (job.get("trial") or job.get("component") or job).get("code")
        )
        self.environments = Environments(self.tree / first["code"], self.tree, self.log)
        failed = False
        try:
            found = self.probe(first["code"], self.environments.prepare(first.get("environment")).python)
            self.log(
                f"job Python {found['python']}: finetune from {found['origin']} (no dist-info), azureml-mlflow present"
            )
        except EnvironmentFailure as error:
            self.log(f"job environment: {error}")  # the nodes on it fail with this line when they start
        except EmulationError as error:
            self.log(f"job Python: {error}")
            failed = True
        for name in self.order():
            job = jobs[name]
            kind = job.get("type", "command")
            compute = str(job.get("compute") or self.pipeline.get("compute") or "").replace("azureml:", "")
            result = NodeResult(name, kind, compute, "", tree=str(self.tree))
            self.results.append(result)
            if failed:
                result.status = "skipped (upstream failed)"
                continue
            self.log(f"[{name}] {kind} on {compute}")
            started, first_request = time.time(), len(self.recorder.requests)
            try:
                {"sweep": self.sweep_node, "automl": self.automl_node}.get(kind, self.command_node)(name, job, result)
                result.status = "stand-in" if kind == "automl" else "completed"
            except (EmulationError, EnvironmentFailure) as error:
                result.status, result.detail, failed = "failed", str(error), True
            result.seconds = round(time.time() - started, 1)
            result.service_calls = self.calls(self.recorder.requests[first_request:])
            self.log(f"[{name}] {result.status} in {result.seconds:.0f} s: {result.detail} {result.service_calls}")
        self.sequence_done()
        return self.results

    def sequence_done(self) -> None:
        """The next tree in this workspace numbers its jobs after these."""
        if self.workspace is not None:
            self.workspace.sequence = self.sequence

    def endpoints(self) -> dict:
        """The workspace's online endpoints now: each one's traffic split and deployments (with their model)."""
        found: Dict[str, dict] = {}
        for key, body in self.recorder.resources.items():
            match = re.search(r"/onlineEndpoints/([^/]+)(?:/deployments/([^/]+))?$", key)
            if not match:
                continue
            endpoint = found.setdefault(match.group(1), {"traffic": {}, "deployments": {}})
            properties = body.get("properties", {})
            if match.group(2):
                endpoint["deployments"][match.group(2)] = str(properties.get("model", "")).split("/models/")[-1]
            else:
                endpoint["traffic"] = properties.get("traffic", {})
        return found

    def close(self) -> None:
        self.stop_servers()
        if hasattr(self, "service"):
            self.service.close()


def _seconds(value) -> Optional[float]:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"P?T?(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", str(value))
    if match and any(match.groups()):
        hours, minutes, seconds = (float(group or 0) for group in match.groups())
        return hours * 3600 + minutes * 60 + seconds
    return float(value)


def table(results: List[NodeResult]) -> str:
    header = ["node", "type", "compute", "environment", "status", "s", "detail"]
    several = len({r.tree for r in results}) > 1
    rows = [
        [
            f"{Path(r.tree).parent.name}/{r.node}" if several else r.node,
            r.kind,
            r.compute,
            r.environment[:48],
            r.status,
            f"{r.seconds:.0f}",
            r.detail,
        ]
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(str(cell).ljust(widths[i]) if i < len(widths) else str(cell) for i, cell in enumerate(row))
        for row in [header, *rows]
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/aml_emulate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trees",
        nargs="+",
        metavar="tree",
        help="an exported AML folder, <run_dir>/aml; several run one after the other in one workspace",
    )
    parser.add_argument("--work", help="where jobs run (default: a new folder beside the first tree)")
    args = parser.parse_args(argv)
    trees = [Path(tree) for tree in args.trees]
    for tree in trees:
        if not (tree / "pipeline.yml").is_file():
            print(f"error: {tree} holds no pipeline.yml (export one with dry_run=true)", file=sys.stderr)
            return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="aml-emulation-", dir=trees[0].parent))
    first = Emulation(trees[0], work)
    emulations = [first] + [Emulation(tree, work, workspace=first) for tree in trees[1:]]
    results = []
    try:
        for emulation in emulations:
            results += emulation.run()
        (work / "endpoints.json").write_text(json.dumps(first.endpoints(), indent=2))
    finally:
        first.close()
    timings = [t for e in emulations if hasattr(e, "environments") for t in e.environments.timings]
    (work / "environments.json").write_text(json.dumps(timings, indent=2))
    print("\n" + table(results))
    (work / "emulation.json").write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    print(f"\njobs, logs and the workspace's tracking store: {work}")
    return 0 if all(r.status in ("completed", "stand-in") for r in results) else 1
