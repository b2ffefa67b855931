"""The local launcher: every stage of a run plan on this machine, offline.

data -> train (or sweep) -> AutoML -> test and select -> register -> deploy (blue/green rollout on a local
endpoint) -> report. Training runs as ``python -m finetune.train`` in a subprocess, exactly the command
AML runs, so the two launchers share one entry point. ``summary.json`` is rewritten after every stage:
an interrupted run still shows what it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

from finetune.config.spec import to_argv
from finetune.data import prepare
from finetune.errors import UserError
from finetune.plan import budget, calibration, fitting
from finetune.plan.results import Candidate, SelectionResult, TrainingResult
from finetune.plan.run_plan import RunPlan
from finetune.plan.summary import RunSummary
from finetune.registry import model_registry as registry
from finetune.registry import tracking
from finetune.registry.registration import sample_request, select_and_register
from finetune.registry.tracking import child_args, model_id
from finetune.report import write_report
from finetune.selection.choose import FINETUNED, check_production_labels, choose
from finetune.selection.metrics import unprefixed
from finetune.serve import deploy_local
from finetune.serve.endpoint import LOOPBACK_HOSTS
from finetune.serve.endpoint_names import LOCAL_ENDPOINT_NAME
from finetune.serve.export import export_candidate
from finetune.serve.rollout import RolloutError, check_ramp
from finetune.system import cpu, locks, processes
from finetune.tasks import task_of, with_task_metrics
from finetune.train.learning_check import shipped_below_baseline_line
from finetune.train.process import launch_command, train_args


def auto_choices(cfg) -> dict:
    return {"automl": "local", "endpoint": "local", "budget": "local"}


def check(plan: RunPlan) -> list[str]:
    """What this launcher cannot run: the AML-only AutoML engine and endpoint target, a bad local endpoint."""
    problems = []
    if plan.automl.engine == "text_classification":
        problems.append(
            "automl.engine=text_classification: AML AutoML runs on AML compute only; on local compute "
            "use automl=local or automl=none"
        )
    cores = cpu.cores()
    concurrent = plan.search.limits.max_concurrent_trials
    if plan.search.sampling != "none" and plan.compute.device != "cuda" and concurrent > cores:
        # Each trial is a training process with at least one thread: more than the cores only thrash.
        problems.append(
            f"search.limits.max_concurrent_trials={concurrent}: more trials at once than this machine's "
            f"{cores} CPU cores; use {cores} or fewer"
        )
    if plan.endpoint.target == "managed":
        problems.append(
            "endpoint.target=managed: a managed online endpoint needs AML compute; on local compute "
            "use endpoint=local or endpoint=none"
        )
    elif plan.endpoint.target in ("local", "auto"):
        problems += check_endpoint(plan.endpoint)
    return problems


def check_endpoint(endpoint_cfg) -> list[str]:
    """Problems of a local endpoint's settings (numbers are ranged by :mod:`finetune.config.ranges`)."""
    problems = []
    if not isinstance(endpoint_cfg.name, str) or not LOCAL_ENDPOINT_NAME.match(endpoint_cfg.name):
        problems.append(
            f"endpoint.name={endpoint_cfg.name!r}: 3-32 letters, digits, '_' or '-', starting with a "
            "letter (it becomes a folder under <output_root>/endpoints)"
        )
    if endpoint_cfg.auth_mode != "key":
        problems.append(
            f"endpoint.auth_mode={endpoint_cfg.auth_mode}: a local endpoint authenticates with its key; "
            "use endpoint.auth_mode=key"
        )
    if not endpoint_cfg.host:
        problems.append("endpoint.host='': set the router's address, e.g. endpoint.host=127.0.0.1")
    elif endpoint_cfg.host not in LOOPBACK_HOSTS and not endpoint_cfg.allow_remote:
        problems.append(
            f"endpoint.host={endpoint_cfg.host}: serves the endpoint beyond this machine over plain HTTP; "
            "set endpoint.allow_remote=true to mean it, or use endpoint.host=127.0.0.1"
        )
    try:
        check_ramp(endpoint_cfg.ramp)
    except (RolloutError, TypeError, ValueError) as error:
        problems.append(f"endpoint.ramp={list(endpoint_cfg.ramp)}: {error}")
    return problems


def resolve(plan: RunPlan) -> RunPlan:
    return fitting.fit_to_this_machine(plan)


def separate(plans: list) -> list:
    """Local runs of one multirun already differ in run folder; they share the model registry on purpose."""
    return plans


def stage(number: int, total: int, name: str, detail: str = "") -> None:
    print(f"\n[{number}/{total}] {name}{': ' + detail if detail else ''}", flush=True)


def run(plan: RunPlan) -> dict | None:
    # Locks taken by stages (the production alias from selection to promotion) are released on any exit.
    with contextlib.ExitStack() as held:
        return _run(plan, held)


def _run(plan: RunPlan, held: contextlib.ExitStack) -> dict | None:
    run_dir = Path(plan.run_dir)
    if plan.dry_run:
        print("\ndry run: plan checked; nothing was written or trained (run without dry_run=true to start it)")
        return None
    plan.write()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow announces creating and migrating its sqlite tables at INFO; the console is for the run.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Created here, before training does, so the experiment's artifacts sit beside the sqlite store
    # instead of in ./mlruns of whatever directory the command ran from.
    registry.experiment_id(plan.tracking.uri, plan.tracking.experiment)
    summary = RunSummary.start(plan)
    # Start-up (interpreter, imports, planning, calibration) is time the budget pays for too.
    summary.run["stage_seconds"] = {"start": round(max(0.0, summary.started - processes.started_at()), 1)}
    total, step = len(plan.stages) + 1, 0

    def next_stage(name: str, detail: str = "") -> None:
        nonlocal step
        step += 1
        summary.enter(name)
        stage(step, total, name, detail)

    next_stage("data", f"{plan.dataset.name} ({plan.dataset.source})")
    data = prepare(plan.dataset, run_dir / "data")
    if plan.dataset.task != data.task:
        # task=auto is decided by the data stage; training and selection take the decided task from the plan.
        plan = with_task_metrics(dataclasses.replace(plan, dataset=dataclasses.replace(plan.dataset, task=data.task)))
    summary.data = data
    summary.save()
    print(
        f"{data.task.replace('_', '-')} data, {len(data.labels)} labels; {data.rows_labelled} labelled rows -> "
        + ", ".join(f"{split} {info['rows']}" for split, info in data.splits.items())
    )
    model_registry = registry.MlflowRegistry(
        plan.select.registered_model_name, plan.tracking.uri, plan.tracking.experiment
    )
    # Before any training: a production model for other labels is refused now, not after an hour of it
    # (select_and_register applies the same rule to the production model it re-scores).
    check_production_labels(
        model_registry.production(run_dir / "select" / "production"),
        list(data.labels),
        plan.select.replace_incompatible,
    )

    tags = tracking.run_tags(plan, data)
    parent = tracking.start_pipeline_run(plan, tags)
    summary.run["mlflow_run_id"] = parent
    try:
        result = _stages(plan, summary, data, next_stage, (parent, tags), held)
    except BaseException as error:
        tracking.end_pipeline_run(
            plan.tracking.uri, parent, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        )
        raise
    tracking.end_pipeline_run(plan.tracking.uri, parent, "FINISHED")
    print(f"browse runs:   {tracking.ui_command(plan.tracking.uri)}   (pip install 'finetune[ui]')")
    # The run's last word: nobody should deploy a model a one-liner beats without having read it.
    below = shipped_below_baseline_line(summary)
    if below:
        print(below)
    return result


def _stages(
    plan: RunPlan, summary: RunSummary, data, next_stage, pipeline_run: tuple[str, dict], held: contextlib.ExitStack
) -> dict:
    """Every stage after the data: the pipeline run is open while these run."""
    run_dir = Path(plan.run_dir)
    training = _train_or_sweep(plan, summary, data, next_stage, pipeline_run)
    summary.training = training.section(pipeline_run[1]["base_model"])
    summary.save()

    if "export" in plan.stages:
        next_stage("export", f"the fine-tuned model for the {plan.endpoint.runtime} runtime")
        trained = summary.candidates[FINETUNED]
        # Selection tests (and the registry keeps) the exported model: the metrics are those of what serves.
        summary.candidates[FINETUNED] = dataclasses.replace(
            trained,
            trained_path=trained.path,
            runtime=plan.endpoint.runtime,
            path=str(export_candidate(trained.path, plan.endpoint.runtime, run_dir / "export")),
        )
        summary.save()
        print(f"exported to {summary.candidates[FINETUNED].path}")

    if "automl" in plan.stages:
        plan = _automl_gets_what_is_left(plan, summary)
        task = task_of(data.task)
        next_stage("automl", task.baseline_description(plan))
        summary.candidates[task.baseline_name] = Candidate.from_dict(
            task.run_baseline(data, plan, run_dir / task.baseline_name)
        )
        summary.save()

    model_registry, outcome = _select(plan, summary, data, next_stage, pipeline_run, held)
    # The training run's MLflow test figures are the selection's: one test evaluation, recorded everywhere.
    log_test_metrics(plan, training, outcome.selection.test(FINETUNED))

    next_stage("register", f"model registry '{plan.select.registered_model_name}' at {plan.tracking.uri}")
    registration = outcome.registration
    if registration.version is not None:
        print(
            f"registered {registration.name} version {registration.version}"
            + (" (already registered: same artifacts)" if registration.existing else "")
        )
        summary.selection = _recheck(
            plan, data, outcome.selection, registration.version, run_dir / "select" / "recheck"
        )
        if not summary.selection.promotable:
            registration = dataclasses.replace(registration, promoted=False, reason=summary.selection.reason)
    else:
        print(f"kept the current production model: {outcome.selection.reason}")
    summary.registration = registration
    summary.save()
    if "deploy" in plan.stages:
        next_stage("deploy", f"local endpoint '{plan.endpoint.name}' (blue/green rollout)")
        if not registration.registered:
            print("nothing new to deploy")
        else:
            rollout = deploy_local(
                plan.endpoint,
                Path(plan.run_dir).parent / "endpoints",
                registration.model_ref,
                registration.sample_request,
                keep_running=False,
            )
            summary.rollout = rollout
            summary.save()
            print(
                f"deployed {registration.name} version {registration.version} as '{rollout.rollout.deployment}' "
                f"({rollout.rollout.traffic}); smoke test {rollout.rollout.smoke_latency_ms:.0f} ms"
                + ("" if rollout.running else f"\nendpoint stopped; serve it again with: {rollout.serve_command}")
            )
            model_registry.promote(registration.version)
    elif registration.registered:
        model_registry.promote(registration.version)
    held.close()

    next_stage("report")
    if plan.estimate is not None:  # the report shows the stages so far; summary.json gets the report's too
        summary.budget = budget.spent(plan.estimate, summary.run["stage_seconds"])
    summary.finish()  # before the report, so the report shows the finish time and duration
    report = write_report(run_dir, summary, task_of(summary.data.task) if summary.data is not None else None)
    summary.figures = [str(path) for path in report.figures]
    summary.enter(None)
    if plan.estimate is not None:
        summary.budget = budget.spent(plan.estimate, summary.run["stage_seconds"])
        print(budget.spent_line(summary.budget))
        # The next plan on this machine starts from how fast this run's trials and stages really ran.
        spent = summary.run["stage_seconds"]
        if summary.sweep:
            factor = summary.sweep.compute.get("speed_factor", 1.0)
        else:
            factor = budget.training_speed_factor(plan.estimate, spent["train"]) if "train" in spent else 1.0
        calibration.learn(plan, factor, spent, plan.estimate.calibration_s)
    summary.save()
    print(
        f"\nrun directory: {run_dir}\nsummary:       {summary.path}\n"
        f"report:        {report.path} (one page: {report.path.with_suffix('.html').name})"
    )
    return summary.to_dict()


def _automl_gets_what_is_left(plan: RunPlan, summary: RunSummary) -> RunPlan:
    """A budgeted run's AutoML searches what training left of the budget (not the planned share): a sweep
    whose next trial did not fit would otherwise end the run minutes early. A search time set on the command
    line stays as set."""
    if plan.estimate is None or "automl.time_budget_s" in fitting.pinned(plan):
        return plan
    seconds = budget.automl_search_left(plan.estimate, time.time() - processes.started_at())
    if seconds is None or seconds == plan.automl.time_budget_s:
        return plan
    print(f"AutoML searches {seconds} s, what training left of the budget (planned {plan.automl.time_budget_s} s)")
    summary.run["automl_search_s"] = seconds
    return dataclasses.replace(plan, automl=dataclasses.replace(plan.automl, time_budget_s=seconds))


def _train_or_sweep(plan: RunPlan, summary: RunSummary, data, next_stage, pipeline_run) -> TrainingResult:
    """The fine-tuned candidate: one training, or a sweep's best trial; returns the kept training's result."""
    run_dir = Path(plan.run_dir)
    if "search" not in plan.stages:
        next_stage("train", f"{plan.model.name}, {plan.model.epochs:g} epochs, lr {plan.model.learning_rate:g}")
        result = train_once(plan, data.directory, run_dir / "train", pipeline_run)
        summary.candidates[FINETUNED] = Candidate(
            family="hf", path=result.model_dir, val=result.val, source="single run", result_file=result.result_file
        )
        return result
    next_stage(
        "search",
        f"{plan.search.name}: {plan.search.sampling} sampling, policy {plan.search.policy.type}, "
        f"up to {plan.search.limits.max_total_trials} trials",
    )
    from finetune.search.runner import run_sweep  # optuna: loaded only when a plan sweeps

    sweep = run_sweep(plan, data, run_dir / "sweep", pipeline_run)
    summary.sweep = sweep
    summary.save()
    best = sweep.best
    if best is None:
        raise UserError(
            "the sweep finished without a successful trial; see the trial table above and the "
            f"logs under {run_dir / 'sweep'}"
        )
    summary.candidates[FINETUNED] = Candidate(
        family="hf",
        path=best.model_dir,
        val=best.val,
        source=f"sweep trial {best.trial}",
        params=best.params,
        result_file=best.result_file,
    )
    return sweep.best_training


def _select(plan: RunPlan, summary: RunSummary, data, next_stage, pipeline_run, held: contextlib.ExitStack):
    """Test every candidate and production on the test split and register the winner (one rule, both launchers)."""
    next_stage("select", f"test every candidate on the test split by {plan.select.metric}")
    # From comparing with production to moving its alias, one run at a time: concurrent runs on one store
    # each see the production the previous one left, so the best model by the selection rule ends there.
    held.enter_context(locks.promotion(plan.tracking.uri, plan.select.registered_model_name, plan.name))
    model_registry = registry.MlflowRegistry(
        plan.select.registered_model_name, plan.tracking.uri, plan.tracking.experiment, run_id=pipeline_run[0]
    )
    candidates = summary.candidates
    outcome = select_and_register(
        model_registry,
        {name: candidate.path for name, candidate in candidates.items()},
        data.test_path,
        list(data.labels),
        plan.select,
        data.to_dict(),
        plan.to_dict(),
        sample_request(data.test_path, data.task),
        Path(plan.run_dir) / "select",
        sources={name: candidate.source for name, candidate in candidates.items()},
        commit=registry.git_commit(),
        val_csv=data.val_path,
    )
    production = outcome.production
    if production is not None:
        candidates["production"] = Candidate(
            family="production",
            path=str(production.path),
            source=f"{production.name} version {production.version} (in production)",
        )
    summary.selection = outcome.selection
    summary.save()
    tracking.log_selection(plan.tracking.uri, pipeline_run[0], outcome.selection.to_dict())
    return model_registry, outcome


def _recheck(plan: RunPlan, data, selection: SelectionResult, version: str, out_dir: Path) -> SelectionResult:
    """Re-apply the selection rule if production moved since selection compared with it.

    The promotion lock keeps finetune runs on this machine from moving it; anything else that can reach the
    store (a run on another machine, a hand-set alias) can, and must not be overwritten by a worse model.
    """
    name, uri = plan.select.registered_model_name, plan.tracking.uri
    current = registry.production_version(registry._client(uri), name)
    compared = (selection.production_version or {}).get("version")
    if current is None or current in (compared, version):
        return selection
    production = registry.resolve(name, current, uri, out_dir)
    print(f"production moved to version {current} since selection; comparing again", flush=True)
    results = task_of(data.task).evaluate({"production": production.path}, data.test_path, list(data.labels))
    winner = selection.winner
    results[winner] = {"family": selection.family(winner), "test": selection.test(winner)}
    rechecked = selection.overruled(
        current, choose(results, plan.select.metric, plan.select.margin, "production", task=data.task)
    )
    if not rechecked.promotable:
        print(f"not promoted: {rechecked.reason}", flush=True)
    return rechecked


def log_test_metrics(plan: RunPlan, training: TrainingResult, test: dict | None) -> None:
    """Log ``test_<metric>`` (selection's figures) to the MLflow run of ``training``."""
    run_id = training.mlflow_run_id
    if not run_id or not test:
        return
    import math

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(f"test_{name}", float(value), timestamp, 0)
        for name, value in test.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    ]
    MlflowClient(tracking_uri=plan.tracking.uri).log_batch(run_id, metrics=metrics)


def train_once(plan: RunPlan, data_dir: Path, output_dir: Path, pipeline_run: tuple[str, dict]) -> TrainingResult:
    """One training run through the training entry point, in a subprocess as on AML."""
    args = dataclasses.replace(train_args(plan, str(data_dir), str(output_dir)), run_name=f"{plan.name}-train")
    command = launch_command([*to_argv(args), *child_args(*pipeline_run, model_id(plan.model))], plan.compute.gpus)
    returncode = processes.run(command)
    result_file = output_dir / "result.json"
    if returncode != 0 or not result_file.exists():
        raise UserError(f"training failed (exit code {returncode}); its output is above, command: {' '.join(command)}")
    result = TrainingResult.read(result_file)
    metric = plan.search.primary_metric
    print(f"trained in {result.duration_s:.0f} s: {metric} {result.val.get(unprefixed(metric), float('nan')):.4f}")
    return result
