"""What the Hugging Face Trainer is told for one training: its arguments (the task object supplies metrics and loss).

:mod:`finetune.train.entry` decides what to train (model, data, batch plan, resume) and wires the callbacks;
these functions turn :class:`finetune.config.spec.TrainArgs` and those decisions into the Trainer's own terms.
"""

from __future__ import annotations

from pathlib import Path

from finetune.config.spec import TrainArgs, trainer_arguments
from finetune.selection.metrics import unprefixed
from finetune.tasks import task_of


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
        **{**runtime.trainer_kwargs(), **task_of(args.task).trainer_overrides},
    )
