"""The local sweep: optuna samples, each trial is ``python -m finetune.train`` in its own process.

Optuna provides the samplers (random, grid, TPE for bayesian; seeded by ``search.seed``) and the
storage: a sqlite file in the sweep folder that every trial process reports into, so AML's policies
(as :class:`~finetune.search.pruners.AmlPolicyPruner`) see all trials, and a sweep killed at any moment
resumes where it stopped:

- finished trials are kept and not rerun; limits count them;
- a trial left RUNNING by the dead sweep is marked failed and its parameters are enqueued again (the
  retry carries ``retry_of`` and replaces it: it counts neither in limits, nor in the policies, nor in the
  trial table);
- the sampler is reseeded with ``seed + trials so far``, or it would replay the first samples.

Trials run up to ``max_concurrent_trials`` at once, each with an even share of the CPU threads, or one
GPU each when there are GPUs. A crash, a NaN loss, an out-of-memory kill or ``trial_timeout`` marks the
trial failed and the sweep goes on; ``timeout`` (the whole sweep's seconds, counted across resumes)
stops launching new trials. A trial stopped by the policy is optuna PRUNED with the interval it reached
(user attributes), reported as ``early_terminated``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import optuna
from optuna.trial import TrialState

from finetune.config.model_files import model_config, model_location
from finetune.config.spec import to_argv
from finetune.plan import budget
from finetune.plan.results import SweepResult
from finetune.plan.run_plan import RunPlan
from finetune.registry.model_registry import experiment_id
from finetune.registry.tracking import child_args, model_id
from finetune.search.results import progress_line, summarise, trial_record
from finetune.search.space import grid_size, latent_distribution, value_from_latent
from finetune.search.study import counted, enqueue_configured, open_study, retry_interrupted, trial_dir
from finetune.selection.metrics import unprefixed
from finetune.system import cpu, processes
from finetune.train.process import launch_command, train_args
from finetune.train.progress import SweepProgress, read_progress

STUDY_FILE = "study.db"
PROGRESS_FILE = "progress.json"
POLL_S = 0.5
# A running trial's projected duration counts once it is this far along (earlier, its start-up dominates).
MIN_PROJECTED_FRACTION = 0.2


@dataclass
class _Slot:
    threads: int
    gpu: Optional[str]


@dataclass
class _Job:
    trial: optuna.trial.Trial
    slot: _Slot
    process: subprocess.Popen
    directory: Path
    log: Path
    started: float
    timed_out: bool = False


def run_sweep(plan: RunPlan, data, sweep_dir: Path, pipeline_run: Optional[tuple] = None) -> SweepResult:
    """Run (or resume) the plan's sweep in `sweep_dir`; its ``to_dict()`` is the ``sweep`` section of summary.json.

    `data` is a ``finetune.data.PreparedData``. The best trial's model stays in its trial folder; the
    other trials' models are removed unless ``search.keep_trial_models``. ``pipeline_run`` (run id, tags)
    nests every trial's MLflow run under the invocation's pipeline run.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search, limits = plan.search, plan.search.limits
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage_url = f"sqlite:///{sweep_dir / STUDY_FILE}"
    study = open_study(plan, storage_url, sweep_dir)
    retried = retry_interrupted(study, sweep_dir)
    if plan.estimate is not None and search.sampling != "grid" and enqueue_configured(study, plan):
        print("budget: trial 0 trains the configured hyperparameters (what a smaller budget trains alone)", flush=True)
    wall_before = study.user_attrs.get("wall_seconds", 0.0)
    total = (
        limits.max_total_trials if search.sampling != "grid" else min(limits.max_total_trials, grid_size(search.space))
    )
    to_start = total - len(counted(study))
    if wall_before or retried:
        print(
            f"resuming the sweep in {sweep_dir}: {total - to_start} trial(s) done"
            + (f", retrying interrupted trial(s) {', '.join(map(str, retried))}" if retried else ""),
            flush=True,
        )

    if to_start > 0:
        _create_experiment(plan)
    free = _slots(plan)
    started = time.time()
    deadline = started + limits.timeout - wall_before if limits.timeout else math.inf
    running: Dict[int, _Job] = {}
    launched = 0
    data_dir = str(Path(data.train_path).parent)
    # Under a budget the sweep expects the fit's trials (more start only when a policy frees time).
    shown = min(total, plan.estimate.trials) if plan.estimate is not None else total
    progress = SweepProgress(shown, total - to_start, len(free), search.primary_metric)
    held_back = None  # why the budget lets no more trials start
    try:
        while True:
            while free and launched < to_start and time.time() < deadline and held_back is None:
                epochs, held_back = _budgeted_epochs(plan, study, running, deadline)
                if held_back:
                    print(held_back, flush=True)
                    break
                job = _launch(study, plan, data_dir, sweep_dir, storage_url, free.pop(0), pipeline_run, epochs)
                running[job.trial.number] = job
                launched += 1
            if not running:
                break
            time.sleep(POLL_S)
            for number, job in list(running.items()):
                if _poll(job, limits.trial_timeout):
                    job.trial.set_user_attr("ended_s", round(wall_before + time.time() - started, 2))
                    frozen = _finish(study, job, plan)
                    del running[number]
                    free.append(job.slot)
                    study.set_user_attr("wall_seconds", wall_before + time.time() - started)
                    record = trial_record(frozen, search.goal)
                    progress.finished(
                        number, record["status"], record["best_value"], record["duration_s"] or 0.0, search.goal
                    )
                    progress.write(
                        progress_line(
                            frozen,
                            total - to_start + launched - len(running),
                            total,
                            search.primary_metric,
                            search.goal,
                        )
                    )
            progress.update({number: (job.directory / PROGRESS_FILE, job.started) for number, job in running.items()})
    finally:  # Ctrl-C or an error here: no trial outlives the sweep (they are resumed as interrupted)
        progress.close()
        for job in running.values():
            if job.process.poll() is None:
                os.killpg(job.process.pid, signal.SIGKILL)
    if launched < to_start and not held_back:
        print(f"sweep timeout ({limits.timeout} s) reached: {to_start - launched} trial(s) not started", flush=True)
    wall = wall_before + time.time() - started
    study.set_user_attr("wall_seconds", wall)
    if plan.estimate is not None:
        _speed_factor(plan.estimate, study, {})
    return summarise(study, plan, sweep_dir, wall)


def _budgeted_epochs(plan: RunPlan, study, running: Dict[int, "_Job"], deadline: float) -> tuple:
    """(epochs for the next trial, why none starts): the plan's epochs while a whole trial can finish before the
    sweep's share of the budget ends, fewer when only a shorter one can, none (with the reason) when not even one
    epoch can. The expected trial is scaled by what the trials so far took against the estimate: finished ones
    by their wall time, running ones by their projection from their progress files. (None, None): no budget,
    or the first trial, without which there is no model at all."""
    started = study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING))
    if plan.estimate is None or not math.isfinite(deadline) or not started:
        return None, None
    factor = _speed_factor(plan.estimate, study, running)
    left = deadline - time.time()
    epochs = budget.epochs_that_fit(plan.estimate, left, factor)
    if epochs:
        return epochs, None
    return None, (
        f"budget: no more trials; even a 1-epoch trial is expected to outlast the {max(0.0, left):.0f} s "
        f"left of the sweep's share (trials so far ran x {factor:.2f} the planned time)"
    )


def _speed_factor(estimate, study, running: Dict[int, "_Job"]) -> float:
    """Actual over planned seconds of the trials so far (kept in the study for the summary)."""
    observed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = trial.user_attrs
        if attrs.get("duration_s") and attrs.get("epochs_run"):
            observed.append((attrs["duration_s"], budget.expected_trial_seconds(estimate, attrs["epochs_run"])))
    for job in running.values():
        record = read_progress(job.directory / PROGRESS_FILE)
        fraction = record.get("step", 0) / record["total"] if record.get("total") else 0.0
        if fraction >= MIN_PROJECTED_FRACTION:
            observed.append(((time.time() - job.started) / fraction, estimate.trial_s))
    factor = budget.speed_factor(observed)
    study.set_user_attr("speed_factor", round(factor, 3))
    return factor


# ------------------------------------------------------------------------------------------------ trials


def _create_experiment(plan: RunPlan) -> None:
    """Create the tracking store and experiment before trials start: concurrent trials would otherwise race
    to run the schema migrations of a fresh MLflow sqlite store and to create the experiment."""
    experiment_id(plan.tracking.uri, plan.tracking.experiment)


def _slots(plan: RunPlan) -> List[_Slot]:
    """One slot per concurrent trial: a GPU each when there are GPUs, else an even share of the cores."""
    concurrency = plan.search.limits.max_concurrent_trials
    gpus = _gpu_ids(plan.compute.device)
    if gpus and concurrency > len(gpus):
        print(f"{len(gpus)} GPU(s): running {len(gpus)} trial(s) at a time instead of {concurrency}", flush=True)
        concurrency = len(gpus)
    cores = plan.compute.num_threads or cpu.cores()
    threads = max(1, cores // concurrency)
    return [_Slot(threads, gpus[i] if gpus else None) for i in range(concurrency)]


def _gpu_ids(device: str) -> List[str]:
    if device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (visible or [str(i) for i in range(count)])[:count]


def _launch(
    study,
    plan: RunPlan,
    data_dir: str,
    sweep_dir: Path,
    storage_url: str,
    slot: _Slot,
    pipeline_run: Optional[tuple] = None,
    epochs: Optional[float] = None,
) -> _Job:
    """Start the next trial; ``epochs`` (a budget's last trials) shortens it when the space does not set epochs."""
    space = plan.search.space
    trial = study.ask({name: latent_distribution(dist) for name, dist in space.items()})
    params = {name: value_from_latent(name, dist, trial.params[name]) for name, dist in space.items()}
    trial.set_user_attr("params", params)
    directory = trial_dir(sweep_dir, trial.number)
    # A folder left by an earlier study in this place would make training resume its checkpoint.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    trial_plan = dataclasses.replace(plan, compute=dataclasses.replace(plan.compute, num_threads=slot.threads))
    hyperparameters = {k: v for k, v in params.items() if k != "model"}
    if epochs is not None and epochs < plan.model.epochs and "epochs" not in space:
        hyperparameters["epochs"] = epochs
        trial.set_user_attr("epochs_planned", epochs)
    trial_args = dataclasses.replace(
        train_args(
            trial_plan,
            data_dir,
            str(directory),
            hyperparameters,
            model_location(model_config(params["model"])) if "model" in params else None,
        ),
        run_name=f"{plan.name}-trial-{trial.number}",
        trial_storage=storage_url,
        study_name=study.study_name,
        trial_number=trial.number,
        progress=False,
        progress_file=str(directory / PROGRESS_FILE),
    )
    args = to_argv(trial_args)
    if pipeline_run:
        args += child_args(*pipeline_run, params.get("model") or model_id(plan.model))
    env = {**os.environ, "OMP_NUM_THREADS": str(slot.threads)}
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    log = directory / "train.log"
    with open(log, "wb") as handle:
        # One GPU (or none) per trial: the plain command, never accelerate.
        process = processes.start(launch_command(args), stdout=handle, stderr=subprocess.STDOUT, env=env)
    return _Job(trial, slot, process, directory, log, time.time())


def _poll(job: _Job, trial_timeout: Optional[int]) -> bool:
    """True once the trial's process has ended; kills it past `trial_timeout`."""
    if job.process.poll() is not None:
        return True
    if trial_timeout and time.time() - job.started > trial_timeout:
        os.killpg(job.process.pid, signal.SIGKILL)
        job.process.wait()
        job.timed_out = True
        return True
    return False


def _finish(study, job: _Job, plan: RunPlan):
    """Record a trial's outcome in the study: COMPLETE with its best value, PRUNED, or FAIL with a reason."""
    trial, limits = job.trial, plan.search.limits
    result = _read_json(job.directory / "result.json")
    # Training deletes its checkpoints when it ends normally; a killed or failed trial leaves them behind.
    shutil.rmtree(job.directory / "checkpoints", ignore_errors=True)
    trial.set_user_attr("duration_s", round(time.time() - job.started, 2))
    if result is not None:
        trial.set_user_attr("result_file", str(job.directory / "result.json"))
        trial.set_user_attr("epochs_run", result.get("epochs_run"))
        trial.set_user_attr("steps", result.get("steps"))
        if result.get("model_dir"):
            trial.set_user_attr("model_dir", result["model_dir"])
    metric = unprefixed(plan.search.primary_metric)
    value = (result or {}).get("val", {}).get(metric)
    code = job.process.returncode
    if job.timed_out:
        reason = f"timeout: killed after trial_timeout={limits.trial_timeout} s"
    elif result is not None and code == 0 and result.get("status") == "pruned":
        return study.tell(trial, state=TrialState.PRUNED)
    elif result is not None and code == 0 and result.get("status") == "completed":
        if isinstance(value, (int, float)) and math.isfinite(value):
            return study.tell(trial, float(value))
        reason = f"{plan.search.primary_metric} is {value}: the trial produced no usable value"
    else:
        reason = (result or {}).get("reason") or _failure_reason(code, job.log)
    trial.set_user_attr("reason", reason)
    return study.tell(trial, state=TrialState.FAIL)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _failure_reason(code: int, log: Path) -> str:
    """One line saying why a trial process died, from its exit code and the end of its log."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-60:]
    except OSError:
        tail = []
    text = "\n".join(tail).lower()
    if "out of memory" in text or "memoryerror" in text:
        return "out of memory" + (" (CUDA)" if "cuda" in text else "")
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (often the kernel's out-of-memory killer)"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
    return f"exit code {code}: {last[:200]}"
