"""``<run dir>/aml/``: every AML entity of a plan as AML CLI v2 YAML, plus what the YAML points at.

Written on every AML run (dry or not), so a run directory always shows what was (or would be) submitted::

    aml/
      pipeline.yml            the whole pipeline      az ml job create -f pipeline.yml
      sweep.yml | train.yml   the training stage alone
      automl.yml              AutoML alone (when automl is on)
      compute.yml, steps-compute.yml   az ml compute create -f compute.yml (the steps' CPU cluster too)
      environment.yml, conda.yml       the training environment (conda-<role>.yml: every role's spec)
      data/<asset>.yml        the data assets (tagged with their sha256)
      endpoint.yml, deployment.yml   (when endpoint is on; the deploy step creates both)
      settings.json           what the register and deploy steps read (no workspace, no machine path)
      code/finetune/          the package, uploaded as the jobs' code
      base_model/             a local base model (e.g. the packaged MiniLM), uploaded as the trials' input
      mltable/{train,val}/    MLTable folders for AutoML
      score/score.py          the deployment's scoring code
      prepared/               the prepared splits the data assets upload (train/val/test.csv, labels.json)
      predict.yml             batch prediction with the registered model (python -m finetune.predict)

Paths inside the YAML are relative to ``aml/``. azure-ai-ml 1.35.2 writes a local path of an input or
of ``code`` as ``azureml:<path>`` (which reads back as an asset name); the prefix is removed from the
paths this module put there, so ``load_job`` and ``az ml`` read them as local files again.
What loads back with ``load_job`` (tests check it): every file. Two need help in 1.35.2: a pipeline
holding an AutoML node dumps the node's output as ``job_output_type`` and does not load back, so the
output is rewritten in CLI syntax; an AutoML job with a sweep cannot be dumped at all, so ``automl.yml``
is the job dumped without its sweep, with ``sweep`` and ``search_space`` added in CLI v2 syntax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import finetune
from finetune.config.schema import PolicyConfig
from finetune.data import PreparedData
from finetune.errors import ConfigProblems
from finetune.launch.azureml import command, compute, data, deploy, environment, pipeline, predict, sweep
from finetune.launch.azureml.automl import data_problems, text_classification
from finetune.launch.azureml.checks import with_task
from finetune.launch.azureml.sweep import as_yaml, distribution, policy
from finetune.registry.environments import ENVIRONMENT_NAME
from finetune.registry.model_registry import git_commit
from finetune.registry.registration import job_config, sample_request
from finetune.serve.entry_scripts import task_entry_script

if TYPE_CHECKING:
    from finetune.launch.azureml.data import AssetSpec
    from finetune.plan.run_plan import RunPlan

AML_DIR = "aml"
CODE_DIR = "code"
SCORE_DIR = "score"
SETTINGS = "settings.json"
LATEST_MODEL = "@latest"
BASE_MODEL_DIR = "base_model"
PREPARED_DIR = "prepared"


@dataclass
class Exported:
    folder: Path
    code_dir: Path
    settings_path: Path
    specs: List["AssetSpec"]
    files: List[Path] = field(default_factory=list)
    base_model: Optional[Path] = None  # the copied local base model, when the plan has one

    def listing(self) -> str:
        shown = "\n".join(f"  {path.relative_to(self.folder)}" for path in self.files)
        return f"AML YAML in {self.folder}:\n{shown}"


def settings(plan: "RunPlan", prepared: "PreparedData", serving_environment: dict) -> dict:
    """What the register and deploy steps need besides their data inputs.

    It is uploaded to the workspace's blob store, so it holds no workspace coordinates (AML tells a job
    its workspace), no secrets and no path of this machine: the data section without split paths, the
    config as :func:`finetune.registry.registration.job_config` (identity, workspace, local paths removed).
    """
    data = prepared.to_dict()
    data["splits"] = {
        split: {key: value for key, value in info.items() if key != "path"}
        for split, info in data.get("splits", {}).items()
    }
    data.pop("source", None)
    return {
        "run": plan.name,
        # Every select setting: the register step runs the same select_and_register as the local launcher.
        "select": dataclasses.asdict(plan.select),
        "data": data,
        "config": job_config(plan.to_dict()),
        "git_commit": git_commit(),
        "sample_request": sample_request(prepared.test_path, prepared.task),
        "endpoint": {
            key: value for key, value in dataclasses.asdict(plan.endpoint).items() if key not in ("host", "port")
        },
        "environment": serving_environment,
        "deploy": plan.endpoint.target == "managed",
    }


def with_base_model(plan: "RunPlan", folder: Path, relative_to: Optional[Path]) -> "RunPlan":
    """``plan`` whose local base model is the copy under ``folder`` (relative to ``relative_to`` when given)."""
    if not plan.model.path or "model" in plan.search.space:
        return plan
    path = folder / BASE_MODEL_DIR
    shown = os.path.relpath(path, relative_to) if relative_to is not None else str(path)
    return dataclasses.replace(plan, model=dataclasses.replace(plan.model, path=shown))


def stage_code(target: Path) -> Path:
    """A clean copy of the installed ``finetune`` package under ``target`` (the jobs' code snapshot)."""
    source = Path(finetune.__file__).resolve().parent
    if target.exists():
        shutil.rmtree(target)
    # data_files holds the bundled dataset, which only the local data stage reads: jobs get the prepared splits.
    shutil.copytree(source, target / "finetune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data_files"))
    return target


def write(plan: "RunPlan", prepared: "PreparedData") -> Exported:
    """Write ``<run dir>/aml/`` for ``plan`` (replacing an earlier export of the same run).

    ``prepared`` is copied into the tree, so the export is whole on its own (it can be moved, zipped or
    emulated) and the caller may prepare into a scratch folder. The jobs are built for ``prepared.task``
    (:func:`.checks.with_task`: ``dataset.task=auto`` is decided by the data).
    """
    plan = with_task(plan, prepared.task)
    if plan.automl.engine == "text_classification":
        # Refused here, before anything is written or spent: AutoML would fail the job on the same data.
        problems = data_problems(prepared, plan.dataset)
        if problems:
            raise ConfigProblems(problems)

    folder = Path(plan.run_dir) / AML_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(prepared.directory, folder / PREPARED_DIR)
    _write_portable_record(folder / PREPARED_DIR / "data.json")
    prepared = PreparedData.load(folder / PREPARED_DIR)
    code_dir = stage_code(folder / CODE_DIR)
    tables = data.write_mltables(prepared, folder / "mltable")
    specs = data.asset_specs(plan, prepared, tables)
    definitions = environment.definitions(plan)
    settings_path = folder / SETTINGS
    settings_path.write_text(
        json.dumps(settings(plan, prepared, definitions["serving"]), indent=2, default=str), encoding="utf-8"
    )
    exported = Exported(folder, code_dir, settings_path, specs)
    if plan.model.path and "model" not in plan.search.space:
        # A local base model (the packaged MiniLM lives in this machine's site-packages) travels as a
        # folder of the tree, so no YAML names a path of this machine.
        exported.base_model = folder / BASE_MODEL_DIR
        shutil.copytree(plan.model.path, exported.base_model)
    plan = with_base_model(plan, folder, relative_to=folder)

    refs = data.local_refs(specs, relative_to=folder)
    envs = {role: environment.environment(spec) for role, spec in definitions.items()}
    local = {CODE_DIR, SETTINGS, SCORE_DIR, *refs.files.values(), *refs.tables.values()}
    if plan.model.path:
        local.add(plan.model.path)

    def dump(name: str, entity_dict: dict, comment: str) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_yaml(_local_paths(entity_dict, local), comment), encoding="utf-8")
        exported.files.append(path)

    job = pipeline.build(plan, refs, CODE_DIR, envs, SETTINGS)
    dump(
        "pipeline.yml",
        _automl_outputs(job._to_dict()),
        f"the whole pipeline of run {plan.name}: az ml job create -f pipeline.yml",
    )
    trial = command.train_command(plan, refs, CODE_DIR, envs["training"])
    if plan.search.sampling == "none":
        dump("train.yml", trial._to_job()._to_dict(), "the training job alone: az ml job create -f train.yml")
    else:
        dump(
            "sweep.yml",
            sweep.sweep_node(plan, trial)._to_job()._to_dict(),
            "the sweep alone: az ml job create -f sweep.yml",
        )
    if plan.automl.engine == "text_classification":
        dump("automl.yml", automl_dict(plan, refs), "AutoML NLP alone: az ml job create -f automl.yml")
    dump("compute.yml", compute.cluster(plan)._to_dict(), "the cluster: az ml compute create -f compute.yml")
    model_ref = f"azureml:{plan.select.registered_model_name}{LATEST_MODEL}"
    dump(
        "predict.yml",
        predict.predict_job(plan, refs.files["test"], CODE_DIR, envs["steps"], model_ref)._to_job()._to_dict(),
        "batch prediction with the latest registered model (here over the test split): "
        "az ml job create -f predict.yml --set inputs.data.path=azureml:<data asset>:<version>",
    )
    if plan.compute.steps_cluster_name:
        dump(
            "steps-compute.yml",
            compute.steps_cluster(plan)._to_dict(),
            "the test/register/deploy steps' CPU cluster: az ml compute create -f steps-compute.yml",
        )

    for role, spec in definitions.items():
        if spec.get("conda_file") is None:
            continue
        conda = folder / f"conda-{role}.yml"
        conda.write_text(_yaml(spec["conda_file"], f"the {role} environment's conda file"), encoding="utf-8")
        exported.files.append(conda)
    dump(
        "environment.yml",
        {
            "name": ENVIRONMENT_NAME,
            "image": definitions["training"]["image"],
            "conda_file": "conda-training.yml",
            "description": definitions["training"]["description"],
        },
        "the training environment as a named asset: az ml environment create -f environment.yml",
    )
    for spec in specs:
        entity = data.data_entity(spec)._to_dict()
        entity["path"] = os.path.relpath(spec.path, folder / "data")
        dump(f"data/{spec.name}.yml", entity, "a data asset: az ml data create -f data/<name>.yml")

    if plan.endpoint.target == "managed":
        (folder / SCORE_DIR).mkdir()
        shutil.copy2(task_entry_script(prepared.task), folder / SCORE_DIR / deploy.SCORING_SCRIPT)
        model_name = plan.select.registered_model_name
        dump(
            "endpoint.yml",
            deploy.endpoint_entity(plan.endpoint)._to_dict(),
            "the endpoint (the deploy step creates it when missing): az ml online-endpoint create -f endpoint.yml",
        )
        deployment = deploy.deployment_entity(
            plan.endpoint,
            deploy.deployment_name("latest"),
            f"azureml:{model_name}{LATEST_MODEL}",
            envs["serving"],
            SCORE_DIR,
            model_name,
            "latest",
        )
        dump(
            "deployment.yml",
            _anonymous_environment(deployment._to_dict()),
            "a deployment of the latest registered model, as the deploy step creates it "
            "(it also shifts traffic and deletes the old ones): az ml online-deployment create -f deployment.yml",
        )
    return exported


def _write_portable_record(record: Path) -> None:
    """``data.json`` without this machine's paths: each split by its file name (``PreparedData.load`` finds the
    files beside it) and a local source file by its name, so an export can travel and publish no folder names."""
    data = json.loads(record.read_text(encoding="utf-8"))
    for info in data.get("splits", {}).values():
        if "path" in info:
            info["path"] = Path(info["path"]).name
    if os.path.isabs(data.get("source", "")):
        data["source"] = f"file:{Path(data['source']).name}"
    record.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def automl_dict(plan: "RunPlan", refs) -> dict:
    """The standalone AutoML job as a CLI v2 dict.

    With ``automl.sweep`` the SDK cannot dump the job, so the job is dumped without it and the sweep is
    added in the CLI's own syntax (``sweep``, ``search_space``).
    """
    config = plan.automl
    job = text_classification(dataclasses.replace(plan, automl=dataclasses.replace(config, sweep={})), refs)
    result = job._to_dict()
    if config.sweep:
        subspaces = config.sweep.get("space") or []
        subspaces = [subspaces] if isinstance(subspaces, dict) else subspaces
        result["search_space"] = [
            {
                name: as_yaml(distribution(value)) if isinstance(value, dict) else value
                for name, value in subspace.items()
            }
            for subspace in subspaces
        ]
        result["sweep"] = {"sampling_algorithm": config.sweep.get("sampling_algorithm", "random")}
        policy_config = config.sweep.get("policy") or {}
        if policy_config.get("type", "none") != "none":
            result["sweep"]["early_termination"] = _policy_dict(policy_config)
    return result


def _policy_dict(policy_config: dict) -> dict:
    entity = policy(PolicyConfig(**policy_config))
    fields = {
        "type": policy_config["type"],
        "evaluation_interval": entity.evaluation_interval,
        "delay_evaluation": entity.delay_evaluation,
    }
    for name in ("slack_factor", "slack_amount", "truncation_percentage"):
        value = getattr(entity, name, None)
        if value:
            fields[name] = value
    return fields


def _automl_outputs(pipeline_dict: dict) -> dict:
    """AutoML node outputs as ``{type: mlflow_model}``, the CLI v2 syntax.

    azure-ai-ml 1.35.2 writes them as ``{job_output_type: ...}`` (the REST field), which neither ``load_job``
    nor ``az ml job create`` accepts; the REST body the SDK builds from either form is the same.
    """
    for node in pipeline_dict.get("jobs", {}).values():
        if node.get("type") == "automl":
            node["outputs"] = {
                name: {"type": output.get("job_output_type", output.get("type"))}
                for name, output in (node.get("outputs") or {}).items()
            }
    return pipeline_dict


def _anonymous_environment(deployment_dict: dict) -> dict:
    """The deployment's inline environment without the ``name``/``version`` the SDK dumps for it.

    azure-ai-ml 1.35.2 writes an anonymous environment as ``name: CliV2AnonymousEnvironment`` plus a content
    hash; a deployment's schema reads a named environment first (azure/ai/ml/_schema/_deployment/deployment.py:
    EnvironmentSchema before AnonymousEnvironmentSchema), so that dump reloads as a named asset (REST
    ``isAnonymous: false``) which ``az ml online-deployment create`` would register. Jobs' schemas take inline
    environments as anonymous ones, so only the deployment needs this.
    """
    environment = deployment_dict.get("environment")
    if isinstance(environment, dict):
        deployment_dict["environment"] = {
            key: value for key, value in environment.items() if key not in ("name", "version")
        }
    return deployment_dict


def _local_paths(value: Any, local: set) -> Any:
    """``value`` with ``azureml:<p>`` turned back into ``<p>`` for the local paths ``p`` this export wrote."""
    if isinstance(value, dict):
        return {key: _local_paths(item, local) for key, item in value.items()}
    if isinstance(value, list):
        return [_local_paths(item, local) for item in value]
    if isinstance(value, str) and value.startswith("azureml:") and value[len("azureml:") :] in local:
        return value[len("azureml:") :]
    return value


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _yaml(data: Dict[str, Any], comment: str) -> str:
    import yaml

    return f"# {comment}\n# generated by finetune (finetune.launch.azureml.export)\n" + yaml.safe_dump(
        _plain(data), sort_keys=False, width=120
    )
