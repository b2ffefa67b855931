"""What the Hugging Face Trainer is told for one training: its arguments, the task's metrics and loss.

:mod:`finetune.train.entry` decides what to train (model, data, batch plan, resume) and wires the callbacks;
these functions turn :class:`finetune.config.spec.TrainArgs` and those decisions into the Trainer's own terms.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from finetune.config.spec import TrainArgs, trainer_arguments
from finetune.selection.metrics import task_metrics, unprefixed
from finetune.train.losses import (
    class_weights,
    label_positive_weights,
    weighted_binary_cross_entropy,
    weighted_cross_entropy,
)


def training_arguments(args: TrainArgs, batch, runtime, steps_per_epoch: int, checkpoint_dir: Path):
    """``TrainingArguments``: evaluation ``evals_per_epoch`` times an epoch, a checkpoint at each, the best kept."""
    from transformers import TrainingArguments

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
        # finetune.train.progress draws the one bar; HF's own would add an evaluation bar and print every log dict.
        disable_tqdm=True,
        **runtime.trainer_kwargs(),
    )


def metrics_function(task: str) -> Callable:
    """The Trainer's ``compute_metrics``: the one metric function on the head's probabilities (softmax, or a
    sigmoid per label for multi-label, scored at 0.5)."""
    import torch

    multi_label = task == "multi_label"

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        logits = torch.as_tensor(logits, dtype=torch.float32)
        proba = (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)).numpy()
        truth = prediction.label_ids.round().astype("int64") if multi_label else prediction.label_ids
        return task_metrics(task, truth, proba)

    return compute_metrics


def task_loss(args: TrainArgs, train_labels, num_labels: int) -> Tuple[Optional[List[float]], Optional[Callable]]:
    """``--class-weights`` for the task (per class, or per label's positives) and the weighted loss that uses them;
    ``(None, None)`` leaves the model's own loss."""
    if args.task == "multi_label":
        weights = label_positive_weights(train_labels, args.class_weights)
        return weights, weighted_binary_cross_entropy(weights) if weights else None
    weights = class_weights(train_labels, num_labels, args.class_weights)
    return weights, weighted_cross_entropy(weights) if weights else None
