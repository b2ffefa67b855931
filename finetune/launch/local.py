"""The local launcher: every stage of a run plan on this machine, offline.

data -> train (or sweep) -> AutoML -> test and select -> register -> deploy (blue/green rollout on a local
endpoint) -> report. Training runs as ``python -m finetune.train`` in a subprocess, exactly the command
AML runs, so the two launchers share one entry point. ``summary.json`` is rewritten after every stage:
an interrupted run still shows what it finished.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from finetune.errors import UserError
from finetune.plan import RunPlan, train_command_args

SCHEMA_VERSION = 1


class Summary:
    """summary.json, written atomically after each stage."""

    def __init__(self, plan: RunPlan):
        self.path = Path(plan.run_dir) / "summary.json"
        self.data: dict = {
            "schema_version": SCHEMA_VERSION,
            "run": {"name": plan.name, "run_dir": plan.run_dir, "launcher": plan.launcher,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stages": plan.stages},
            "candidates": {},
        }
        self.started = time.time()

    def __setitem__(self, key, value) -> None:
        self.data[key] = value
        self.save()

    def __getitem__(self, key):
        return self.data[key]

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def finish(self) -> None:
        self.data["run"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.data["run"]["duration_s"] = round(time.time() - self.started, 1)
        self.save()


def stage(number: int, total: int, name: str, detail: str = "") -> None:
    print(f"\n[{number}/{total}] {name}{': ' + detail if detail else ''}", flush=True)


def run(plan: RunPlan) -> dict | None:
    run_dir = Path(plan.run_dir)
    plan.write()
    print(plan.table())
    if plan.dry_run:
        print(f"\ndry run: plan written to {run_dir / 'plan.yaml'}; nothing was trained")
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from finetune import registry

    # Created here, before training does, so the experiment's artifacts sit beside the sqlite store
    # instead of in ./mlruns of whatever directory the command ran from.
    registry.experiment_id(plan.tracking.uri, plan.tracking.experiment)
    summary = Summary(plan)
    total, step = len(plan.stages) + 1, 0

    def next_stage(name: str, detail: str = "") -> None:
        nonlocal step
        step += 1
        stage(step, total, name, detail)

    from finetune.data import prepare

    next_stage("data", f"{plan.dataset.name} ({plan.dataset.source})")
    data = prepare(plan.dataset, run_dir / "data")
    summary["data"] = data.to_dict()
    print(f"{data.rows_labelled} labelled rows -> "
          + ", ".join(f"{split} {info['rows']}" for split, info in data.splits.items()))
    from finetune.select import check_production_labels

    model_registry = registry.MlflowRegistry(plan.select.registered_model_name, plan.tracking.uri,
                                             plan.tracking.experiment)
    # Before any training: a production model for other labels is refused now, not after an hour of it
    # (select_and_register applies the same rule to the production model it re-scores).
    check_production_labels(model_registry.production(run_dir / "select" / "production"), list(data.labels),
                            plan.select.replace_incompatible)

    candidates = summary["candidates"]
    if "search" in plan.stages:
        from finetune.search import run_sweep

        next_stage("search", f"{plan.search.name}: {plan.search.sampling} sampling, policy {plan.search.policy.type}, "
                             f"up to {plan.search.limits.max_total_trials} trials")
        sweep = run_sweep(plan, data, run_dir / "sweep")
        summary["sweep"] = sweep
        best = sweep.get("best")
        if not best:
            raise UserError("the sweep finished without a successful trial; see the trial table above and the "
                            f"logs under {run_dir / 'sweep'}")
        candidates["finetuned"] = {"kind": "hf", "path": best["model_dir"], "val": best.get("val", {}),
                                   "source": f"sweep trial {best['trial']}", "params": best.get("params", {}),
                                   "result_file": best.get("result_file")}
    else:
        next_stage("train", f"{plan.model.name}, {plan.model.epochs:g} epochs, lr {plan.model.learning_rate:g}")
        result = train_once(plan, data.directory, run_dir / "train")
        candidates["finetuned"] = {"kind": "hf", "path": result["model_dir"], "val": result.get("val", {}),
                                   "source": "single run", "result_file": str(run_dir / "train" / "result.json")}
    kept = json.loads(Path(candidates["finetuned"]["result_file"]).read_text())
    summary["training"] = {"throughput": kept.get("throughput", {}), "runtime": kept.get("runtime", {})}

    if "automl" in plan.stages:
        from finetune.automl import run_automl

        next_stage("automl", f"local AutoML baseline (FLAML, {plan.automl.time_budget_s} s budget)")
        candidates["automl"] = run_automl(data, plan.automl, run_dir / "automl", plan.seed, plan.train.class_weights)
        summary.save()

    next_stage("select", f"test every candidate on the test split by {plan.select.metric}")
    outcome = registry.select_and_register(
        model_registry, {name: candidate["path"] for name, candidate in candidates.items()}, data.test_path,
        list(data.labels), plan.select, summary["data"], plan.to_dict(),
        registry.sample_request(data.test_path), run_dir / "select",
        sources={name: candidate.get("source") for name, candidate in candidates.items()},
        commit=registry.git_commit(), val_csv=data.val_path)
    production = outcome["production"]
    if production is not None:
        candidates["production"] = {"kind": "production", "path": str(production.path),
                                    "source": f"{production.name} version {production.version} (in production)"}
    selection = outcome["selection"]
    summary["selection"] = selection
    decisions = {row["candidate"]: row.get("decision") for row in selection["table"]}
    for name, metrics in selection["test"].items():
        candidates[name].update(test=metrics, decision=decisions[name])
    # The training run's MLflow test figures are the selection's: one test evaluation, recorded everywhere.
    log_test_metrics(plan, candidates["finetuned"], selection["test"].get("finetuned"))
    summary.save()

    next_stage("register", f"model registry '{plan.select.registered_model_name}' at {plan.tracking.uri}")
    registered = outcome["registry"] if selection["decision"] == "register" else None
    if registered is not None:
        summary["registry"] = {**registered, "model_ref": registered["model_ref"].to_dict()}
        print(f"registered {registered['name']} version {registered['version']}"
              + (" (already registered: same artifacts)" if registered.get("existing") else ""))
    else:
        summary["registry"] = outcome["registry"]
        print(f"kept the current production model: {selection['reason']}")

    if "deploy" in plan.stages:
        next_stage("deploy", f"local endpoint '{plan.endpoint.name}' (blue/green rollout)")
        if registered is None:
            print("nothing new to deploy")
        else:
            from finetune.serve import deploy_local

            rollout = deploy_local(plan.endpoint, Path(plan.run_dir).parent / "endpoints", registered["model_ref"],
                                   registered["sample_request"], keep_running=False)
            summary["rollout"] = rollout
            print(f"deployed {registered['name']} version {registered['version']} as '{rollout['deployment']}' "
                  f"({rollout['traffic']}); smoke test {rollout['smoke_test']['latency_ms']:.0f} ms"
                  + ("" if rollout.get("running") else f"\nendpoint stopped; serve it again with: {rollout['serve_command']}"))
            model_registry.promote(registered["version"])
    elif registered is not None:
        model_registry.promote(registered["version"])

    next_stage("report")
    from finetune.report import write_report

    report = write_report(run_dir, summary.data)
    summary.finish()
    print(f"\nrun directory: {run_dir}\nsummary:       {summary.path}\nreport:        {report}")
    return summary.data


def log_test_metrics(plan: RunPlan, candidate: dict, test: dict | None) -> None:
    """Log ``test_<metric>`` (selection's figures) to the MLflow run that trained ``candidate``."""
    result_file = candidate.get("result_file")
    run_id = json.loads(Path(result_file).read_text()).get("mlflow_run_id") if result_file else None
    if not run_id or not test:
        return
    import math

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    metrics = [Metric(f"test_{name}", float(value), timestamp, 0) for name, value in test.items()
               if isinstance(value, (int, float)) and math.isfinite(value)]
    MlflowClient(tracking_uri=plan.tracking.uri).log_batch(run_id, metrics=metrics)


def train_once(plan: RunPlan, data_dir: Path, output_dir: Path) -> dict:
    """One training run through the training entry point, in a subprocess as on AML."""
    from finetune.speed import launch_command

    command = launch_command([*train_command_args(plan, str(data_dir), str(output_dir)),
                              "--run-name", f"{plan.name}-train"], plan.compute.gpus)
    completed = subprocess.run(command)
    result_file = output_dir / "result.json"
    if completed.returncode != 0 or not result_file.exists():
        raise UserError(f"training failed (exit code {completed.returncode}); its output is above, "
                        f"command: {' '.join(command)}")
    result = json.loads(result_file.read_text())
    metric = plan.search.primary_metric
    print(f"trained in {result['duration_s']:.0f} s: {metric} "
          f"{result.get('val', {}).get(metric[len('val_'):], float('nan')):.4f}")
    return result
