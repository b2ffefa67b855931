"""The one training entry point: ``python -m finetune.train`` locally, in sweep trials and as the AML command job.

It takes split files and hyperparameters (never Hydra config), fine-tunes with the Hugging Face Trainer
(dynamic padding, evaluation on val ``evals_per_epoch`` times per epoch), and writes:

- ``<output-dir>/model/``: loads as-is with ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` /
  ``pipeline("text-classification")``; ``id2label`` holds the class names; plus ``candidate.json``.
- ``<output-dir>/result.json``: status, every evaluation, best val metrics, throughput.

The test split is not read here: the select stage tests every candidate once, with the code that serves
it, and the launcher logs those figures (``test_<metric>``) to this training's MLflow run.
Imbalanced classes: ``--class-weights`` weights the cross-entropy per class (see :func:`class_weights`).
``--task multi_label``: one sigmoid per label with binary cross-entropy (``problem_type`` ``multi_label_classification``
in the saved config, so ``AutoModelForSequenceClassification`` users get the same head), split label cells are
label lists, ``--class-weights`` weighs each label's positives (:func:`label_positive_weights`) and the val
metrics are :func:`finetune.metrics.multi_label_metrics` at 0.5 (the select stage chooses per-label thresholds).
``--early-stopping-patience N`` stops after N evaluations without a better primary metric.

The model kept is the best evaluation by the primary metric, so a sweep's "best value" of a trial and the
model it hands on agree. Checkpoints are written at every evaluation (the best one must be recoverable, and
the Trainer's best-model keep needs save steps to be a multiple of eval steps) and, with
``--checkpoint-every-steps N``, also every N optimizer steps in between, bounding the work a preemption loses.
A restarted run with the same output dir resumes from the newest complete checkpoint with the batch size,
learning rate and MLflow run it started with (:mod:`finetune.checkpoints`).
Speed switches (precision, batching, compile, batch size) come from :mod:`finetune.speed`, resource telemetry
from :mod:`finetune.telemetry`, the Trainer callbacks from :mod:`finetune.train_callbacks`. Under
``accelerate launch`` (several GPUs) every process trains; only the first one tracks, writes files and reports
to a sweep. Metrics go to MLflow as ``val_<metric>`` (per evaluation; :mod:`finetune.train_tracking`).

Its arguments are the training contract, :class:`finetune.spec.TrainArgs`; :func:`train` is its recipe in three
steps: :func:`setup` (everything the Trainer needs), :func:`fit` and :func:`finalize` (the model and result.json).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from finetune.checkpoints import RESUME_FILE, newest_complete_checkpoint
from finetune.files import write_json_atomic
from finetune.metrics import unprefixed
from finetune.spec import CLASS_WEIGHTS, TrainArgs, logged_parameters, parse_args, trainer_arguments


def class_weights(label_ids: Sequence[int], n_classes: int, mode: str) -> Optional[List[float]]:
    """Per-class loss weights from the train split's class counts, or None (plain cross-entropy).

    ``balanced``: n / (k * n_c), every class weighs as much in total (scikit-learn's "balanced").
    ``auto`` is ``balanced`` for classes: with it the fine-tuned MiniLM reaches test F1 macro 0.42 on five star
    ratings (with the square root of these weights and 2 epochs it nearly always said the majority star: 0.22)
    and finds 7 of 11 test negatives on a 4.5 %-negative set (scripts/bench_quality.py, README's quality table).
    Weights are scaled so that the average weight per training example is 1, so the loss and the learning rate
    keep their usual scale.
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights={mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")
    if mode == "none":
        return None
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    total = sum(counts)
    weights = [total / (n_classes * n) for n in counts]
    scale = total / sum(w * n for w, n in zip(weights, counts))
    return [w * scale for w in weights]


def label_positive_weights(targets, mode: str) -> Optional[List[float]]:
    """Multi-label: a ``pos_weight`` per label for binary cross-entropy, from the train split's 0/1 matrix.

    ``balanced`` and ``auto``: negatives / positives of the label (its positives weigh as much in total as its
    negatives). On GoEmotions it beat the square root of that ratio on test F1 macro, 0.4838 against 0.4476, at
    equal micro F1 (0.5598 / 0.5606; scripts/bench_multilabel.py). ``none``: plain BCE.
    """
    import numpy as np

    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights={mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")
    if mode == "none":
        return None
    targets = np.asarray(targets)
    positives = targets.sum(axis=0).clip(min=1)
    ratio = (len(targets) - positives).clip(min=1) / positives
    return [float(w) for w in ratio]


def weighted_binary_cross_entropy(pos_weight: List[float]):
    """A Trainer ``compute_loss_func``: BCE with logits and a positive weight per label, averaged over labels, then
    over texts. The Trainer's ``num_items_in_batch`` counts label entries, k per text of an n x k target: texts
    are that count / k (dividing by the entries made the loss k times too small, 28 times on GoEmotions)."""
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(pos_weight, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_item = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none",
                                                      pos_weight=weight.to(logits.device)).mean(dim=1)
        return per_item.mean() if num_items_in_batch is None else per_item.sum() / (num_items_in_batch / labels.shape[-1])

    return loss


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


@dataclass
class Setup:
    """Everything :func:`fit` needs, decided before the first step."""

    args: TrainArgs
    started: float
    first_process: bool
    output_dir: Path
    checkpoint_dir: Path
    labels: List[str]
    runtime: Any  # finetune.speed.Runtime
    batch: Any  # finetune.speed.BatchPlan
    tracking: Any  # finetune.train_tracking tracking
    tokenizer: Any
    model: Any
    train_set: Any
    val_set: Any
    mean_tokens: float  # tokens per training example, padding excluded (the throughput figures)
    resume: Optional[Path]  # the checkpoint this run continues from
    training_args: Any  # transformers.TrainingArguments


@dataclass
class Fitted:
    """What :func:`fit` leaves for :func:`finalize`."""

    trainer: Any
    observer: Any  # finetune.train_callbacks.observer
    meter: Any
    weights: Optional[List[float]]
    early_stopping: Any  # the EarlyStoppingCallback, or None
    figures: dict  # resource telemetry


def train(args: TrainArgs, callbacks: Sequence = ()) -> dict:
    """Fine-tune and write the model and result.json; ``callbacks`` are extra Trainer callbacks (benchmarks)."""
    prepared = setup(args)
    return finalize(prepared, fit(prepared, callbacks))


def setup(args: TrainArgs) -> Setup:
    """Hardware, tracking, model, tokenised splits, batch plan and Trainer arguments."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer

    from finetune.data import read_targets
    from finetune.speed import BatchPlan, choose_runtime, is_main_process, load_model, plan_batch
    from finetune.train_tracking import NullTracking, start_tracking

    transformers.logging.set_verbosity_error()
    _quiet_library_progress_bars()
    started = time.time()
    first_process = is_main_process()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"
    labels = json.loads(Path(args.labels_file).read_text())
    label2id = {name: i for i, name in enumerate(labels)}

    runtime = choose_runtime(args)
    torch.set_num_threads(runtime.threads)
    # A restarted run keeps the batch size its steps are counted in, its learning rate and its MLflow run.
    resume_file = checkpoint_dir / RESUME_FILE
    previous = json.loads(resume_file.read_text()) if resume_file.is_file() else {}
    # Before the model loads: a job that cannot track fails before it spends anything (see start_tracking).
    tracking = start_tracking(args, previous.get("mlflow_run_id")) if first_process else NullTracking()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # The classification head is initialised randomly: seed before creating it, or equal seeds give
    # different trials (the Trainer seeds only after the model exists).
    transformers.set_seed(args.seed)
    multi_label = args.task == "multi_label"
    model = load_model(args.model, runtime, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id=label2id, ignore_mismatched_sizes=True,
                       problem_type="multi_label_classification" if multi_label else "single_label_classification")

    def encode(path: str):
        texts, targets = read_targets(path, labels, args.task)
        # BCE takes float targets: the collator then stacks them into a float tensor.
        dataset = Dataset.from_dict({"text": texts, "label": targets.astype(np.float32).tolist() if multi_label
                                     else targets})
        return dataset.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
            batched=True,
            remove_columns=["text"],
        )

    train_set, val_set = encode(args.train_file), encode(args.val_file)
    resume = newest_complete_checkpoint(checkpoint_dir, delete_incomplete=first_process)
    batch = BatchPlan(**previous["batch"]) if "batch" in previous else plan_batch(args, runtime, model, len(train_set))
    if first_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(resume_file, {"batch": batch.to_dict(), "mlflow_run_id": tracking.run_id}, indent=2)
        tracking.tags({f"runtime.{k}": v for k, v in {**runtime.to_dict(), **batch.to_dict()}.items()
                       if k not in ("notes", "how")})
        for note in runtime.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"batch size {batch.batch_size} per device: {batch.how}", file=sys.stderr)
    return Setup(args=args, started=started, first_process=first_process, output_dir=output_dir,
                 checkpoint_dir=checkpoint_dir, labels=labels, runtime=runtime, batch=batch, tracking=tracking,
                 tokenizer=tokenizer, model=model, train_set=train_set, val_set=val_set,
                 mean_tokens=float(np.mean([len(ids) for ids in train_set["input_ids"]])), resume=resume,
                 training_args=_training_arguments(args, batch, runtime, len(train_set), checkpoint_dir))


def _training_arguments(args: TrainArgs, batch, runtime, train_rows: int, checkpoint_dir: Path):
    from transformers import TrainingArguments

    steps_per_epoch = max(1, math.ceil(train_rows / (batch.batch_size * args.gradient_accumulation_steps
                                                     * runtime.world_size)))
    eval_steps = max(1, steps_per_epoch // max(1, args.evals_per_epoch))
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=batch.learning_rate,
        per_device_train_batch_size=batch.batch_size,
        per_device_eval_batch_size=batch.batch_size * 2,
        **trainer_arguments(args),
        seed=args.seed,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        # Every evaluation is saved; --checkpoint-every-steps adds saves in between (the observer's on_step_end).
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=unprefixed(args.primary_metric),
        greater_is_better=args.goal == "maximize",
        logging_steps=args.logging_steps,
        report_to=[],
        # finetune.progress draws the one bar; HF's own would add an evaluation bar and print every log dict.
        disable_tqdm=True,
        **runtime.trainer_kwargs(),
    )


def fit(prepared: Setup, callbacks: Sequence = ()) -> Fitted:
    """Train (resuming when a complete checkpoint is there), with the observer, throughput meter, early stopping,
    the progress bar and resource telemetry attached."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from finetune.progress import training_callback
    from finetune.train_callbacks import observer, throughput_meter

    args, first_process = prepared.args, prepared.first_process
    reporter = None
    if args.trial_storage and first_process:
        from finetune.search.reporting import TrialReporter

        reporter = TrialReporter(args.trial_storage, args.study_name, args.trial_number, args.primary_metric, args.goal)
    watcher = observer(args, prepared.checkpoint_dir, first_process, prepared.tracking, reporter)

    multi_label = args.task == "multi_label"

    def compute_metrics(prediction):
        from finetune.metrics import task_metrics

        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        logits = torch.as_tensor(logits, dtype=torch.float32)
        proba = (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)).numpy()
        truth = prediction.label_ids.round().astype("int64") if multi_label else prediction.label_ids
        return task_metrics(args.task, truth, proba)

    meter = throughput_meter(prepared.batch.batch_size * args.gradient_accumulation_steps * prepared.runtime.world_size,
                             prepared.mean_tokens)
    weights = (label_positive_weights(prepared.train_set["label"], args.class_weights) if multi_label
               else class_weights(prepared.train_set["label"], len(prepared.labels), args.class_weights))
    loss = weighted_binary_cross_entropy if multi_label else weighted_cross_entropy
    early_stopping = None
    if args.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        # Watches metric_for_best_model (the primary val metric) at every evaluation.
        early_stopping = EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)
    trainer = Trainer(
        model=prepared.model,
        args=prepared.training_args,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.val_set,
        data_collator=DataCollatorWithPadding(prepared.tokenizer, pad_to_multiple_of=prepared.runtime.pad_to_multiple_of),
        processing_class=prepared.tokenizer,
        compute_metrics=compute_metrics,
        compute_loss_func=loss(weights) if weights else None,
        callbacks=[watcher, meter, *([early_stopping] if early_stopping else []), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(training_callback(args.progress and first_process, args.progress_file if first_process else None,
                                           args.primary_metric))
    if prepared.resume is not None and first_process:
        print(f"resuming from {prepared.resume}", file=sys.stderr)
    monitor = _resource_monitor(args, prepared.tracking, lambda: trainer.state.global_step) if first_process else None
    try:
        trainer.train(resume_from_checkpoint=str(prepared.resume) if prepared.resume else None)
    finally:
        figures = monitor.stop() if monitor else {}
    return Fitted(trainer=trainer, observer=watcher, meter=meter, weights=weights, early_stopping=early_stopping,
                  figures=figures)


def finalize(prepared: Setup, fitted: Fitted) -> dict:
    """Save the best model (unless training failed), write result.json, end tracking, drop the checkpoints."""
    import torch

    args, runtime, watcher, trainer = prepared.args, prepared.runtime, fitted.observer, fitted.trainer
    weights, labels = fitted.weights, prepared.labels
    result: dict = {
        "status": watcher.status,
        "reason": watcher.reason,
        "evaluations": watcher.evaluations,
        "train_loss": watcher.train_losses,
        "epochs_run": float(trainer.state.epoch or 0.0),
        "steps": int(trainer.state.global_step),
        "hyperparameters": logged_parameters(args),
        "class_weights": dict(zip(labels, weights)) if weights else None,
        "early_stopped": fitted.early_stopping is not None
                         and fitted.early_stopping.early_stopping_patience_counter >= args.early_stopping_patience,
        "device": runtime.device,
        "precision": runtime.precision,
        "threads": runtime.threads,
        "runtime": {**runtime.to_dict(), "batch": prepared.batch.to_dict(),
                    "resumed_from": str(prepared.resume) if prepared.resume else None},
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
            (model_dir / "candidate.json").write_text(json.dumps({"family": "hf", "task": args.task, "labels": labels,
                                                                  "max_length": args.max_length}, indent=2))
        result["model_dir"] = str(model_dir)
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
    from finetune.telemetry import ResourceMonitor

    monitor = ResourceMonitor(interval_s=args.telemetry_interval_s, log=tracking.log, step=step)
    monitor.start()
    return monitor


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
