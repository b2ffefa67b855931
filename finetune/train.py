"""The one training entry point: ``python -m finetune.train`` locally, in sweep trials and as the AML command job.

It takes split files and hyperparameters (never Hydra config), fine-tunes with the Hugging Face Trainer
(dynamic padding, evaluation on val ``evals_per_epoch`` times per epoch), and writes:

- ``<output-dir>/model/``: loads as-is with ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` /
  ``pipeline("text-classification")``; ``id2label`` holds the class names; plus ``candidate.json``.
- ``<output-dir>/result.json``: status, every evaluation, best val metrics, throughput.

The test split is not read here: the select stage tests every candidate once, with the code that serves
it, and the launcher logs those figures (``test_<metric>``) to this training's MLflow run.
Imbalanced classes: ``--class-weights`` weights the cross-entropy per class (see :func:`class_weights`).
``--early-stopping-patience N`` stops after N evaluations without a better primary metric.

The model kept is the best evaluation by the primary metric, so a sweep's "best value" of a trial and the
model it hands on agree. Checkpoints are written at every evaluation (the best one must be recoverable, and
the Trainer's best-model keep needs save steps to be a multiple of eval steps) and, with
``--checkpoint-every-steps N``, also every N optimizer steps in between, bounding the work a preemption loses.
Each is marked complete only after every process finished writing it; a restarted run with the same output dir
resumes from the newest complete one (AML low-priority nodes get evicted) with the batch size, learning rate
and MLflow run it started with, and a half-written checkpoint is deleted, never loaded.
Speed switches (precision, batching, compile, batch size) come from :mod:`finetune.speed`, resource telemetry
from :mod:`finetune.telemetry`. Under ``accelerate launch`` (several GPUs) every process trains; only the
first one tracks, writes files and reports to a sweep.
Metrics go to MLflow as ``val_<metric>`` (per evaluation); with no tracking URI MLflow uses its
environment, which on AML is the workspace.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from finetune.config import ModelConfig

COMPLETE_MARKER = "checkpoint.complete"
# Written next to the checkpoints at the start: what a restarted run must reuse.
RESUME_FILE = "resume.json"


@dataclass
class TrainArgs:
    train_file: str
    val_file: str
    labels_file: str
    model: str
    output_dir: str
    # Hyperparameter defaults are the model config's, so the CLI and `model=` agree without a second list.
    learning_rate: float = ModelConfig.learning_rate
    batch_size: int = ModelConfig.batch_size
    epochs: float = ModelConfig.epochs
    max_length: int = ModelConfig.max_length
    warmup_ratio: float = ModelConfig.warmup_ratio
    weight_decay: float = ModelConfig.weight_decay
    adam_beta1: float = ModelConfig.adam_beta1
    adam_beta2: float = ModelConfig.adam_beta2
    adam_epsilon: float = ModelConfig.adam_epsilon
    gradient_accumulation_steps: int = ModelConfig.gradient_accumulation_steps
    seed: int = 0
    evals_per_epoch: int = 1
    # auto | balanced | none: see class_weights().
    class_weights: str = "auto"
    # Stop after this many evaluations without a better primary metric; 0 = never.
    early_stopping_patience: int = 0
    logging_steps: int = 10
    tracking_uri: Optional[str] = None
    experiment: str = "finetune"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # nest the MLflow run under this one (the pipeline run)
    tags: Optional[str] = None  # a JSON object of MLflow tags for the run
    model_id: Optional[str] = None  # the base model as logged (hub id or name); default --model
    trial_storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_number: Optional[int] = None
    primary_metric: str = "val_auc_weighted"
    goal: str = "maximize"
    num_threads: int = 0
    device: str = "auto"
    precision: str = "auto"
    group_by_length: bool = True
    pad_to_multiple_of: int = 0
    dataloader_workers: int = -1  # -1 = auto (finetune.speed)
    torch_compile: str = "auto"
    tf32: bool = True
    optim: str = "auto"
    attn_implementation: str = "sdpa"
    auto_batch_size: bool = False
    max_batch_size: int = 128
    lr_scaling: str = "sqrt"
    checkpoint_every_steps: int = 0
    telemetry_interval_s: float = 5.0
    progress: bool = True
    progress_file: Optional[str] = None  # a sweep trial's progress (step, total, latest metrics) as JSON
    extra: dict = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.train",
        description="Fine-tune a Hugging Face encoder as a text classifier on prepared split files.",
    )
    defaults = TrainArgs("", "", "", "", "")
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        flag = "--" + name.replace("_", "-")
        required = name in ("train_file", "val_file", "labels_file", "model", "output_dir")
        if isinstance(value, bool):
            parser.add_argument(flag, type=_parse_bool, default=value, metavar="true|false")
        elif required:
            parser.add_argument(flag, required=True)
        else:
            kind = {float: float, int: int}.get(type(value), str)
            if name == "trial_number":
                kind = int
            parser.add_argument(flag, type=kind, default=value)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: Optional[List[str]] = None) -> TrainArgs:
    namespace = build_parser().parse_args(argv)
    return TrainArgs(**vars(namespace))


# --------------------------------------------------------------------------------------------- helpers


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def newest_complete_checkpoint(checkpoint_dir: Path, delete_incomplete: bool = True) -> Optional[Path]:
    """The newest checkpoint every process finished writing; incomplete ones are removed.

    Complete means marked (the marker is written last, atomically) and holding the Trainer's state; a folder
    killed mid-write lacks the marker whatever its step number, so it can never be the one resumed.
    """
    if not checkpoint_dir.is_dir():
        return None
    complete = []
    for folder in checkpoint_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if not match or not folder.is_dir():
            continue
        if (folder / COMPLETE_MARKER).is_file() and (folder / "trainer_state.json").is_file():
            complete.append((int(match.group(1)), folder))
        elif delete_incomplete:
            shutil.rmtree(folder, ignore_errors=True)
    return max(complete, default=(0, None))[1]


def mark_complete(folder: Path, step: int) -> None:
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time()}))
    os.replace(tmp, folder / COMPLETE_MARKER)


def read_split(path: str, label2id: dict):
    import pandas as pd

    frame = pd.read_csv(path, dtype={"text": str, "label": str}, keep_default_na=False)
    unknown = sorted(set(frame["label"]) - set(label2id))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not in the labels file {sorted(label2id)}")
    return frame["text"].tolist(), [label2id[x] for x in frame["label"]]


CLASS_WEIGHTS = ("auto", "balanced", "none")


def class_weights(label_ids: Sequence[int], n_classes: int, mode: str) -> Optional[List[float]]:
    """Per-class loss weights from the train split's class counts, or None (plain cross-entropy).

    ``balanced``: n / (k * n_c), every class weighs as much in total (scikit-learn's "balanced").
    ``auto``: the square root of that: a rare class gains weight without the noisy over-correction of full
    balancing (measured in scripts/bench_quality.py). Weights are scaled so that the average weight per
    training example is 1, so the loss and the learning rate keep their usual scale.
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights={mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")
    if mode == "none":
        return None
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    total = sum(counts)
    weights = [total / (n_classes * n) for n in counts]
    if mode == "auto":
        weights = [w ** 0.5 for w in weights]
    scale = total / sum(w * n for w, n in zip(weights, counts))
    return [w * scale for w in weights]


def weighted_cross_entropy(weights: List[float]):
    """A Trainer ``compute_loss_func``: cross-entropy with per-class weights.

    The Trainer passes ``num_items_in_batch`` (labels over all gradient-accumulation micro-batches) and then
    expects a sum divided by it, not a per-micro-batch mean.
    """
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_item = F.cross_entropy(logits.float(), labels, reduction="none") * weight.to(logits.device)[labels]
        return per_item.sum() / num_items_in_batch if num_items_in_batch is not None else per_item.mean()

    return loss


# --------------------------------------------------------------------------------------------- training


def train(args: TrainArgs, callbacks: Sequence = ()) -> dict:
    """Fine-tune and write the model and result.json; ``callbacks`` are extra Trainer callbacks (benchmarks)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from finetune.metrics import classification_metrics
    from finetune.speed import BatchPlan, choose_runtime, is_main_process, load_model, plan_batch, throughput_meter

    transformers.logging.set_verbosity_error()
    _quiet_library_progress_bars()
    started = time.time()
    first_process = is_main_process()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"
    labels = json.loads(Path(args.labels_file).read_text())
    label2id = {name: i for i, name in enumerate(labels)}
    id2label = {i: name for i, name in enumerate(labels)}

    runtime = choose_runtime(args)
    torch.set_num_threads(runtime.threads)
    # A restarted run keeps the batch size its steps are counted in, its learning rate and its MLflow run.
    resume_file = checkpoint_dir / RESUME_FILE
    previous = json.loads(resume_file.read_text()) if resume_file.is_file() else {}
    # Before the model loads: a job that cannot track fails before it spends anything (see start_tracking).
    tracking = start_tracking(args, previous.get("mlflow_run_id")) if first_process else _NullTracking()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # The classification head is initialised randomly: seed before creating it, or equal seeds give
    # different trials (the Trainer seeds only after the model exists).
    transformers.set_seed(args.seed)
    model = load_model(args.model, runtime, num_labels=len(labels), id2label=id2label, label2id=label2id,
                       ignore_mismatched_sizes=True)

    def encode(path: str):
        texts, ids = read_split(path, label2id)
        dataset = Dataset.from_dict({"text": texts, "label": ids})
        return dataset.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
            batched=True,
            remove_columns=["text"],
        )

    train_set, val_set = encode(args.train_file), encode(args.val_file)
    mean_tokens = float(np.mean([len(ids) for ids in train_set["input_ids"]]))

    resume = newest_complete_checkpoint(checkpoint_dir, delete_incomplete=first_process)
    batch = BatchPlan(**previous["batch"]) if "batch" in previous else plan_batch(args, runtime, model, len(train_set))
    world = runtime.world_size
    steps_per_epoch = max(1, math.ceil(len(train_set) / (batch.batch_size * args.gradient_accumulation_steps * world)))
    eval_steps = max(1, steps_per_epoch // max(1, args.evals_per_epoch))
    primary = args.primary_metric[len("val_"):] if args.primary_metric.startswith("val_") else args.primary_metric

    training_args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=batch.learning_rate,
        per_device_train_batch_size=batch.batch_size,
        per_device_eval_batch_size=batch.batch_size * 2,
        num_train_epochs=args.epochs,
        # A float below 1 is a fraction of the total steps (transformers 5 folded warmup_ratio into this).
        warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        # Every evaluation is saved; --checkpoint-every-steps adds saves in between (Observer.on_step_end).
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=primary,
        greater_is_better=args.goal == "maximize",
        logging_steps=args.logging_steps,
        report_to=[],
        # finetune.progress draws the one bar; HF's own would add an evaluation bar and print every log dict.
        disable_tqdm=True,
        **runtime.trainer_kwargs(),
    )

    evaluations: List[dict] = []
    train_losses: List[dict] = []
    state = {"status": "completed", "reason": None}
    reporter = None
    if args.trial_storage and first_process:
        from finetune.search.reporting import TrialReporter

        reporter = TrialReporter(args.trial_storage, args.study_name, args.trial_number, args.primary_metric, args.goal)

    if first_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(resume_file, {"batch": batch.to_dict(), "mlflow_run_id": tracking.run_id})
        tracking.tags({f"runtime.{k}": v for k, v in {**runtime.to_dict(), **batch.to_dict()}.items()
                       if k not in ("notes", "how")})
        for note in runtime.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"batch size {batch.batch_size} per device: {batch.how}", file=sys.stderr)

    class Observer(TrainerCallback):
        """Renames eval_* to val_*, logs to MLflow, reports to the sweep, stops on NaN or a prune decision,
        adds step-based checkpoints and marks each checkpoint complete."""

        def on_step_end(self, _args, control_state, control, **kwargs):
            every = args.checkpoint_every_steps
            if every > 0 and control_state.global_step % every == 0:
                control.should_save = True

        def on_save(self, _args, control_state, control, **kwargs):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()  # every process has written its part (its RNG state) by now
            folder = checkpoint_dir / f"checkpoint-{control_state.global_step}"
            if first_process and folder.is_dir():
                mark_complete(folder, control_state.global_step)

        def on_log(self, _args, control_state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None:
                if not math.isfinite(loss):
                    state.update(status="failed", reason=f"training loss became {loss} at step {control_state.global_step}")
                    control.should_training_stop = True
                tracking.log({"train_loss": loss}, control_state.global_step)
                train_losses.append({"step": control_state.global_step, "epoch": control_state.epoch, "loss": loss})

        def on_evaluate(self, _args, control_state, control, metrics=None, **kwargs):
            values = {f"val_{k[len('eval_'):]}": v for k, v in (metrics or {}).items() if k.startswith("eval_")
                      and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
            record = {"step": control_state.global_step, "epoch": control_state.epoch, **values}
            evaluations.append(record)
            tracking.log(values, control_state.global_step)
            value = values.get(args.primary_metric)
            prune = reporter is not None and value is not None and reporter.report(value, len(evaluations))
            if _decided_by_main(prune):
                state.update(status="pruned", reason=f"early-terminated by the sweep policy at evaluation {len(evaluations)}")
                control.should_training_stop = True
                control.should_save = False

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        proba = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()
        return classification_metrics(prediction.label_ids, proba)

    meter = throughput_meter(batch.batch_size * args.gradient_accumulation_steps * world, mean_tokens)
    weights = class_weights(train_set["label"], len(labels), args.class_weights)
    extra_callbacks = []
    if args.early_stopping_patience > 0:
        from transformers import EarlyStoppingCallback

        # Watches metric_for_best_model (the primary val metric) at every evaluation.
        extra_callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=runtime.pad_to_multiple_of),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        compute_loss_func=weighted_cross_entropy(weights) if weights else None,
        callbacks=[Observer(), meter, *extra_callbacks, *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from finetune.progress import training_callback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(training_callback(args.progress and first_process, args.progress_file if first_process else None,
                                           args.primary_metric))
    if resume is not None and first_process:
        print(f"resuming from {resume}", file=sys.stderr)
    monitor = _resource_monitor(args, tracking, lambda: trainer.state.global_step) if first_process else None
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        figures = monitor.stop() if monitor else {}

    result: dict = {
        "status": state["status"],
        "reason": state["reason"],
        "evaluations": evaluations,
        "train_loss": train_losses,
        "epochs_run": float(trainer.state.epoch or 0.0),
        "steps": int(trainer.state.global_step),
        "hyperparameters": _hyperparameters(args),
        "class_weights": dict(zip(labels, weights)) if weights else None,
        "early_stopped": bool(extra_callbacks) and extra_callbacks[0].early_stopping_patience_counter
                         >= args.early_stopping_patience,
        "device": runtime.device,
        "precision": runtime.precision,
        "threads": runtime.threads,
        "runtime": {**runtime.to_dict(), "batch": batch.to_dict(), "resumed_from": str(resume) if resume else None},
    }
    if state["status"] != "failed":
        best = _best_evaluation(evaluations, args.primary_metric, args.goal)
        result["val"] = {k[len("val_"):]: v for k, v in best.items() if k.startswith("val_")} if best else {}
        model_dir = output_dir / "model"
        trainer.save_model(str(model_dir))
        if first_process:
            tokenizer.save_pretrained(str(model_dir))
            # The Trainer pickles its arguments next to the weights; a model folder must load without unpickling.
            (model_dir / "training_args.bin").unlink(missing_ok=True)
            (model_dir / "candidate.json").write_text(json.dumps({"kind": "hf", "labels": labels, "max_length": args.max_length}, indent=2))
        result["model_dir"] = str(model_dir)
    result["throughput"] = {**meter.figures(), **figures}
    if runtime.device == "cuda":
        result["throughput"]["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    result["duration_s"] = time.time() - started
    result["mlflow_run_id"] = tracking.run_id
    if first_process:
        tracking.finish(result)
        _write_json_atomic(output_dir / "result.json", result)
        # Checkpoints go only once result.json is on disk: a kill before this point resumes instead of retraining.
        if state["status"] != "failed":
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
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


def _hyperparameters(args: TrainArgs) -> dict:
    keys = ("learning_rate", "batch_size", "epochs", "max_length", "warmup_ratio", "weight_decay", "adam_beta1",
            "adam_beta2", "adam_epsilon", "gradient_accumulation_steps", "seed", "class_weights",
            "early_stopping_patience")
    return {k: getattr(args, k) for k in keys}


def _resource_monitor(args: TrainArgs, tracking, step):
    from finetune.telemetry import ResourceMonitor

    monitor = ResourceMonitor(interval_s=args.telemetry_interval_s, log=tracking.log, step=step)
    monitor.start()
    return monitor


def _decided_by_main(flag: bool) -> bool:
    """The first process's decision, on every process: they must stop at the same step or DDP hangs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    decision = [flag]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


@contextlib.contextmanager
def _owned(output_dir: str):
    """One process trains into an output dir at a time: a second one would resume from checkpoints the first
    is still writing, and the first deletes them when it ends. Under DDP the first process holds it for all."""
    from finetune import locks

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with locks.hold(Path(output_dir) / ".train.lock", wait=False, owner="python -m finetune.train",
                    busy=lambda holder: f"--output-dir {output_dir} is in use by {holder}, another training run; "
                                        "wait for it to finish or choose another output dir"):
        yield


# AML sets these in every job (azureml-mlflow reads the same: azureml/mlflow/_common/constants.py RunEnvVars).
AML_RUN_VARIABLE = "AZUREML_RUN_ID"


def on_azureml(environ=None) -> bool:
    """Whether this process is an AML job (its MLflow store is then the workspace, reached via azureml://)."""
    environ = os.environ if environ is None else environ
    return AML_RUN_VARIABLE in environ or environ.get("MLFLOW_TRACKING_URI", "").startswith("azureml:")


def start_tracking(args: TrainArgs, run_id: Optional[str] = None):
    """MLflow tracking for this training, or a clear decision when the store cannot be opened.

    On AML the sweep reads its objective from what training logs, so a job that cannot track is useless:
    it fails here, before any GPU time, with one line (``UserError``). Locally the metrics also land in
    result.json, so training goes on untracked after a warning.
    """
    try:
        return _Tracking(args, run_id)
    except Exception as error:  # noqa: BLE001 - any store failure is judged the same way
        from finetune.errors import UserError

        where = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        if on_azureml():
            raise UserError(f"MLflow tracking at {where} cannot be used ({reason}); an AML job needs the "
                            "azureml-mlflow plugin in its environment (finetune's job environments carry it)") from None
        print(f"warning: MLflow tracking at {where} is unavailable ({reason}); training goes on untracked, "
              "metrics are in result.json", file=sys.stderr)
        return _NullTracking()


class _Tracking:
    """MLflow logging that never breaks a started training: a failure is reported once, then logging stops."""

    def __init__(self, args: TrainArgs, run_id: Optional[str] = None):
        import logging

        import mlflow

        # Its INFO lines (creating a sqlite store's tables) would land between the progress bar's redraws.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.mlflow = mlflow
        self.broken = False
        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(args.experiment)
        active = mlflow.active_run()
        self.run = active or self._start(args, run_id)
        self.owns_run = active is None
        self.run_id = self.run.info.run_id
        mlflow.log_params({**_hyperparameters(args), "model": args.model_id or args.model,
                           "primary_metric": args.primary_metric})

    def _start(self, args: TrainArgs, run_id: Optional[str]):
        """A resumed training continues the MLflow run it started (when the store still has it)."""
        if run_id:
            try:
                return self.mlflow.start_run(run_id=run_id)
            except self.mlflow.exceptions.MlflowException:
                pass
        tags = {**json.loads(args.tags or "{}"), "base_model": args.model_id or args.model}
        return self.mlflow.start_run(run_name=args.run_name, tags=tags, parent_run_id=args.parent_run_id,
                                     nested=args.parent_run_id is not None)

    def _guarded(self, action, *args, **kwargs) -> None:
        if self.broken:
            return
        try:
            action(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a tracking outage must not cost the training
            self.broken = True
            print(f"warning: MLflow logging failed ({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
                  "no more metrics are logged for this run, training goes on", file=sys.stderr)

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if clean:
            # run_id explicitly: the telemetry thread has no active run (MLflow keeps the active run per thread).
            self._guarded(self.mlflow.log_metrics, clean, step=step, run_id=self.run_id)

    def tags(self, tags: dict) -> None:
        self._guarded(self.mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def finish(self, result: dict) -> None:
        self._guarded(self.mlflow.set_tags, {"status": result["status"], "epochs_run": result["epochs_run"]})
        if self.owns_run:
            self._guarded(self.mlflow.end_run, status="FAILED" if result["status"] == "failed" else "FINISHED")


class _NullTracking:
    """Tracking for the processes after the first under DDP: one MLflow run per training, not one per GPU."""

    run_id = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def tags(self, tags: dict) -> None:
        pass

    def finish(self, result: dict) -> None:
        pass


def main(argv: Optional[List[str]] = None) -> int:
    from finetune.errors import UserError

    args = parse_args(argv)
    try:
        with _owned(args.output_dir):
            result = train(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{result['status']} after {result['steps']} steps ({result.get('epochs_run')} epochs) in "
          f"{result['duration_s']:.0f} s; metrics in {Path(args.output_dir) / 'result.json'}", file=sys.stderr)
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    raise SystemExit(main())
