"""The one training entry point: ``python -m finetune.train`` locally, in sweep trials and as the AML command job.

It takes split files and hyperparameters (never Hydra config), fine-tunes with the Hugging Face Trainer
(dynamic padding, evaluation on val ``evals_per_epoch`` times per epoch), and writes:

- ``<output-dir>/model/``: loads as-is with ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` /
  ``pipeline("text-classification")``; ``id2label`` holds the class names; plus ``candidate.json``.
- ``<output-dir>/result.json``: status, every evaluation, best val metrics, throughput.

The test split is not read here: the select stage tests every candidate once, with the code that serves
it, and the launcher logs those figures (``test_<metric>``) to this training's MLflow run.
Imbalanced classes: ``--class-weights`` weights the cross-entropy per class (:mod:`finetune.train.losses`).
``--task multi_label``: one sigmoid per label with binary cross-entropy (``problem_type`` ``multi_label_classification``
in the saved config, so ``AutoModelForSequenceClassification`` users get the same head), split label cells are
label lists, ``--class-weights`` weighs each label's positives (:mod:`finetune.train.losses`) and the val
metrics are :func:`finetune.selection.metrics.multi_label_metrics` at 0.5 (the select stage chooses per-label thresholds).
``--early-stopping-patience N`` stops after N evaluations without a better primary metric.

The model kept is the best evaluation by the primary metric, so a sweep's "best value" of a trial and the
model it hands on agree. Checkpoints are written at every evaluation (the best one must be recoverable, and
the Trainer's best-model keep needs save steps to be a multiple of eval steps) and, with
``--checkpoint-every-steps N``, also every N optimizer steps in between, bounding the work a preemption loses.
A restarted run with the same output dir resumes from the newest complete checkpoint with the batch size,
learning rate and MLflow run it started with (:mod:`finetune.train.checkpoints`).
Speed switches (precision, batching, compile, batch size) come from :mod:`finetune.train.hardware`, resource telemetry
from :mod:`finetune.train.telemetry`, the Trainer callbacks from :mod:`finetune.train.callbacks`. Under
``accelerate launch`` (several GPUs) every process trains; only the first one tracks, writes files and reports
to a sweep. Metrics go to MLflow as ``val_<metric>`` (per evaluation; :mod:`finetune.train.tracking`).

Its arguments are the training contract, :class:`finetune.config.spec.TrainArgs`; :func:`train` is its recipe, as
torchtune's are: :func:`setup` (runtime and tracking, then :func:`_setup_model`, :func:`_setup_data` and the batch
plan), :func:`fit` (:func:`_setup_trainer`, then train) and :func:`finish` (the model and result.json). What the
Hugging Face Trainer itself is told (its arguments, metrics and loss) is :mod:`finetune.train.trainer`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from finetune.config.spec import TrainArgs, logged_parameters
from finetune.search.reporting import TrialReporter
from finetune.selection.metrics import unprefixed
from finetune.system.files import write_json_atomic
from finetune.tasks import task_of
from finetune.train import learning_check
from finetune.train.callbacks import observer, throughput_meter
from finetune.train.checkpoints import RESUME_FILE, newest_complete_checkpoint
from finetune.train.hardware import BatchPlan, choose_runtime, is_main_process, load_model, plan_batch
from finetune.train.learning_check import (
    LOWER_LR_FACTOR,
    CheckLog,
    compared_metric,
    describe_baseline,
    early_step,
)
from finetune.train.progress import training_callback
from finetune.train.telemetry import ResourceMonitor
from finetune.train.tracking import NullTracking, start_tracking
from finetune.train.trainer import raise_head_learning_rate, training_arguments

# --------------------------------------------------------------------------------------------- training


@dataclass
class Setup:
    """Everything :func:`fit` needs, decided before the first step."""

    args: TrainArgs
    started: float
    first_process: bool
    output_dir: Path
    checkpoint_dir: Path
    labels: List[str]
    runtime: Any  # finetune.train.hardware.Runtime
    batch: Any  # finetune.train.hardware.BatchPlan
    tracking: Any  # finetune.train.tracking tracking
    tokenizer: Any
    model: Any
    train_set: Any
    val_set: Any
    mean_tokens: float  # tokens per training example, padding excluded (the throughput figures)
    resume: Optional[Path]  # the checkpoint this run continues from
    training_args: Any  # transformers.TrainingArguments
    steps_per_epoch: int
    check_log: CheckLog  # the learning check's baseline and verdicts, over both attempts
    attempt: int = 1  # 2 after the learning check restarted training at a lower learning rate


@dataclass
class Fitted:
    """What :func:`fit` leaves for :func:`finish`."""

    trainer: Any
    observer: Any  # finetune.train.callbacks.observer
    meter: Any
    weights: Optional[List[float]]
    priors: Optional[List[float]]  # the logit-adjusted loss's class shares
    early_stopping: Any  # the EarlyStoppingCallback, or None
    check: Any  # the learning check's callback (finetune.train.learning_check.callback)
    figures: dict = dataclasses.field(default_factory=dict)  # resource telemetry, once trained


def train(args: TrainArgs, callbacks: Sequence = ()) -> dict:
    """Fine-tune and write the model and result.json; ``callbacks`` are extra Trainer callbacks (benchmarks).
    A first attempt the learning check finds not learning is restarted once at a lower learning rate."""
    prepared = setup(args)
    fitted = fit(prepared, callbacks)
    if fitted.check.restart:
        prepared = restart_at_lower_rate(prepared, fitted.trainer.state.global_step)
        fitted = fit(prepared, callbacks)
    return finish(prepared, fitted)


def setup(args: TrainArgs) -> Setup:
    """Hardware and tracking first (a job that cannot track fails before it spends anything), then the model, the
    tokenised splits, the batch plan and the Trainer's arguments."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    _quiet_library_progress_bars()
    started = time.time()
    first_process = is_main_process()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"
    labels = json.loads(Path(args.labels_file).read_text())

    runtime = choose_runtime(args)
    torch.set_num_threads(runtime.threads)
    # A restarted run keeps the batch size its steps are counted in, its learning rate and its MLflow run.
    resume_file = checkpoint_dir / RESUME_FILE
    previous = json.loads(resume_file.read_text()) if resume_file.is_file() else {}
    # Before the model loads: a job that cannot track fails before it spends anything (see start_tracking).
    tracking = start_tracking(args, previous.get("mlflow_run_id")) if first_process else NullTracking()

    restarted = previous.get("learning_check_restart")
    if restarted:
        # Resuming the attempt the learning check restarted: its learning rate, not the command line's.
        args = dataclasses.replace(args, learning_rate=restarted["to_learning_rate"])
    tokenizer, model = _setup_model(args, runtime, labels)
    train_set, val_set = _setup_data(args, tokenizer, labels)
    resume = newest_complete_checkpoint(checkpoint_dir, delete_incomplete=first_process)
    batch = BatchPlan(**previous["batch"]) if "batch" in previous else plan_batch(args, runtime, model, len(train_set))
    metric = compared_metric(args.primary_metric, args.goal)
    check_log = CheckLog(
        baseline=task_of(args.task).fit_baseline(args.train_file, args.val_file, labels, metric),
        action=args.learning_check or "warn",
        restarted=restarted,
    )
    if first_process:
        print(f"learning check baseline: {describe_baseline(check_log.baseline)}", file=sys.stderr)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _write_resume(resume_file, batch, tracking.run_id, restarted)
        tracking.tags(
            {
                f"runtime.{k}": v
                for k, v in {**runtime.to_dict(), **batch.to_dict()}.items()
                if k not in ("notes", "how")
            }
        )
        for note in runtime.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"batch size {batch.batch_size} per device: {batch.how}", file=sys.stderr)
    steps_per_epoch = max(
        1, math.ceil(len(train_set) / (batch.batch_size * args.gradient_accumulation_steps * runtime.world_size))
    )
    return Setup(
        args=args,
        started=started,
        first_process=first_process,
        output_dir=output_dir,
        checkpoint_dir=checkpoint_dir,
        labels=labels,
        runtime=runtime,
        batch=batch,
        tracking=tracking,
        tokenizer=tokenizer,
        model=model,
        train_set=train_set,
        val_set=val_set,
        mean_tokens=float(np.mean([len(ids) for ids in train_set["input_ids"]])),
        resume=resume,
        training_args=training_arguments(args, batch, runtime, steps_per_epoch, checkpoint_dir),
        steps_per_epoch=steps_per_epoch,
        check_log=check_log,
        attempt=2 if restarted else 1,
    )


def _setup_model(args: TrainArgs, runtime, labels: List[str]):
    """The tokenizer and the pretrained encoder with a new head for ``labels``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.model), _new_model(args, runtime, labels)


def _setup_data(args: TrainArgs, tokenizer, labels: List[str]):
    """The train and val splits, encoded by the task (padding is the collator's, per batch)."""
    task = task_of(args.task)
    return tuple(task.encode(path, tokenizer, labels, args.max_length) for path in (args.train_file, args.val_file))


def _new_model(args: TrainArgs, runtime, labels: List[str]):
    """The pretrained encoder with the task's new head for ``labels``."""
    import transformers

    # The classification head is initialised randomly: seed before creating it, or equal seeds give
    # different trials (the Trainer seeds only after the model exists).
    transformers.set_seed(args.seed)
    task = task_of(args.task)
    head = {"problem_type": task.problem_type} if task.problem_type else {}
    return load_model(
        args.model,
        runtime,
        task.model_class,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
        **head,
    )


def _write_resume(resume_file: Path, batch, mlflow_run_id: Optional[str], restarted: Optional[dict]) -> None:
    write_json_atomic(
        resume_file,
        {
            "batch": batch.to_dict(),
            "mlflow_run_id": mlflow_run_id,
            **({"learning_check_restart": restarted} if restarted else {}),
        },
        indent=2,
    )


def restart_at_lower_rate(prepared: Setup, at_step: int) -> Setup:
    """The learning check's one restart: the pretrained weights again, :data:`LOWER_LR_FACTOR` of the learning
    rate, no checkpoint of the first attempt (a later resume must not continue it); same data, tracking run and
    output dir. The resume file records the restart, so a preempted second attempt resumes as itself."""
    args, batch = prepared.args, prepared.batch
    lower = dataclasses.replace(args, learning_rate=args.learning_rate * LOWER_LR_FACTOR)
    batch = dataclasses.replace(batch, learning_rate=batch.learning_rate * LOWER_LR_FACTOR)
    restarted = {"from_learning_rate": args.learning_rate, "to_learning_rate": lower.learning_rate, "at_step": at_step}
    prepared.check_log.restarted = restarted
    if prepared.first_process:
        for folder in prepared.checkpoint_dir.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
        _write_resume(prepared.checkpoint_dir / RESUME_FILE, batch, prepared.tracking.run_id, restarted)
    return dataclasses.replace(
        prepared,
        args=lower,
        batch=batch,
        model=_new_model(lower, prepared.runtime, prepared.labels),
        resume=None,
        training_args=training_arguments(
            lower, batch, prepared.runtime, prepared.steps_per_epoch, prepared.checkpoint_dir
        ),
        attempt=2,
    )


def fit(prepared: Setup, callbacks: Sequence = ()) -> Fitted:
    """Train (resuming when a complete checkpoint is there), with resource telemetry around it."""
    fitted = _setup_trainer(prepared, callbacks)
    trainer = fitted.trainer
    if prepared.resume is not None and prepared.first_process:
        print(f"resuming from {prepared.resume}", file=sys.stderr)
    monitor = (
        _resource_monitor(prepared.args, prepared.tracking, lambda: trainer.state.global_step)
        if prepared.first_process
        else None
    )
    try:
        trainer.train(resume_from_checkpoint=str(prepared.resume) if prepared.resume else None)
    finally:
        fitted.figures = monitor.stop() if monitor else {}
    return fitted


def _setup_trainer(prepared: Setup, callbacks: Sequence) -> Fitted:
    """The Trainer with the observer, throughput meter, learning check, early stopping and progress bar attached."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    args, first_process = prepared.args, prepared.first_process
    reporter = None
    if args.trial_storage and first_process:
        reporter = TrialReporter(args.trial_storage, args.study_name, args.trial_number, args.primary_metric, args.goal)
    watcher = observer(args, prepared.checkpoint_dir, first_process, prepared.tracking, reporter)
    meter = throughput_meter(
        prepared.batch.batch_size * args.gradient_accumulation_steps * prepared.runtime.world_size, prepared.mean_tokens
    )
    task = task_of(args.task)
    loss_func, weights, priors = task.training_loss(prepared.train_set, prepared.labels, args.class_weights)
    early_stopping = None
    if args.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        # Watches metric_for_best_model (the primary val metric) at every evaluation.
        early_stopping = EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)
    warmup = prepared.training_args.warmup_steps
    total_steps = math.ceil(prepared.steps_per_epoch * args.epochs)
    check = learning_check.callback(
        prepared.check_log,
        prepared.attempt,
        first_process,
        prepared.val_set,
        early_step(
            prepared.steps_per_epoch, math.ceil(warmup * total_steps) if warmup < 1 else int(warmup), args.logging_steps
        )
        if prepared.resume is None
        else None,
    )
    trainer = Trainer(
        model=prepared.model,
        args=prepared.training_args,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.val_set,
        data_collator=task.collator(prepared.tokenizer, prepared.runtime.pad_to_multiple_of),
        processing_class=prepared.tokenizer,
        compute_metrics=task.compute_metrics(args.val_file, prepared.val_set, prepared.labels),
        compute_loss_func=loss_func,
        callbacks=[watcher, meter, check, *([early_stopping] if early_stopping else []), *callbacks],
    )
    check.trainer = trainer
    raise_head_learning_rate(trainer, args.head_lr_factor)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(
        training_callback(
            args.progress and first_process, args.progress_file if first_process else None, args.primary_metric
        )
    )
    return Fitted(
        trainer=trainer,
        observer=watcher,
        meter=meter,
        weights=weights,
        priors=priors,
        early_stopping=early_stopping,
        check=check,
    )


def finish(prepared: Setup, fitted: Fitted) -> dict:
    """Save the best model (unless training failed), write result.json, end tracking, drop the checkpoints."""
    import torch

    args, runtime, watcher, trainer = prepared.args, prepared.runtime, fitted.observer, fitted.trainer
    weights, labels = fitted.weights, prepared.labels
    result: dict = {
        "status": watcher.status,
        "reason": watcher.reason or prepared.check_log.stopped,
        "evaluations": watcher.evaluations,
        "train_loss": watcher.train_losses,
        "epochs_run": float(trainer.state.epoch or 0.0),
        "steps": int(trainer.state.global_step),
        "hyperparameters": logged_parameters(args),
        "class_weights": dict(zip(labels, weights)) if weights else None,
        "logit_adjusted_priors": dict(zip(labels, fitted.priors)) if fitted.priors else None,
        "early_stopped": fitted.early_stopping is not None
        and fitted.early_stopping.early_stopping_patience_counter >= args.early_stopping_patience,
        "device": runtime.device,
        "precision": runtime.precision,
        "threads": runtime.threads,
        "runtime": {
            **runtime.to_dict(),
            "batch": prepared.batch.to_dict(),
            "resumed_from": str(prepared.resume) if prepared.resume else None,
        },
    }
    if watcher.status != "failed":
        best = _best_evaluation(watcher.evaluations, args.primary_metric, args.goal)
        result["val"] = {unprefixed(k): v for k, v in best.items() if k.startswith("val_")} if best else {}
        model_dir = prepared.output_dir / "model"
        trainer.save_model(str(model_dir))
        if prepared.first_process:
            prepared.tokenizer.save_pretrained(str(model_dir))
            # The Trainer pickles its arguments next to the weights; a model folder must load without unpickling.
            (model_dir / "training_args.bin").unlink(missing_ok=True)
            (model_dir / "candidate.json").write_text(
                json.dumps(
                    {
                        "family": "hf",
                        "task": args.task,
                        "labels": labels,
                        "max_length": args.max_length,
                        **task_of(args.task).candidate_extras(),
                    },
                    indent=2,
                )
            )
        result["model_dir"] = str(model_dir)
    check_log = prepared.check_log
    kept = result.get("val") or {}
    result["learning_check"] = check_log.to_dict(kept.get(check_log.baseline["metric"]), kept.get("auc_weighted"))
    result["throughput"] = {**fitted.meter.figures(), **fitted.figures}
    if runtime.device == "cuda":
        result["throughput"]["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    result["duration_s"] = time.time() - prepared.started
    result["mlflow_run_id"] = prepared.tracking.run_id
    if prepared.first_process:
        prepared.tracking.finish(result)
        write_json_atomic(prepared.output_dir / "result.json", result, indent=2, default=float)
        # Checkpoints go only once result.json is on disk: a kill before this point resumes instead of retraining.
        if watcher.status != "failed":
            shutil.rmtree(prepared.checkpoint_dir, ignore_errors=True)
    return result


def _quiet_library_progress_bars() -> None:
    """Tokenising ("Map"), loading and saving ("Writing model shards") draw bars that say nothing useful."""
    import datasets
    import huggingface_hub.utils
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _best_evaluation(evaluations: List[dict], metric: str, goal: str) -> Optional[dict]:
    scored = [e for e in evaluations if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
    if not scored:
        return evaluations[-1] if evaluations else None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda e: e[metric])


def _resource_monitor(args: TrainArgs, tracking, step):
    monitor = ResourceMonitor(interval_s=args.telemetry_interval_s, log=tracking.log, step=step)
    monitor.start()
    return monitor
