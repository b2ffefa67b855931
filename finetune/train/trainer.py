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


def raise_head_learning_rate(trainer, factor: float) -> None:
    """Create ``trainer``'s optimizer with the new head's parameters (those outside the pretrained encoder,
    ``base_model_prefix``) in their own groups at ``factor`` x the learning rate; the Trainer's scheduler then
    warms up and decays every group alike. A head starts from random weights, the encoder from pretrained ones:
    with few steps a head learning at the encoder's rate is what holds many-class training back."""
    if factor == 1.0:
        return
    optimizer = trainer.create_optimizer()
    model = trainer.model
    encoder = model.base_model_prefix + "."
    head = {id(p) for name, p in model.named_parameters() if not name.removeprefix("_orig_mod.").startswith(encoder)}
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in head]
        if not moved:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in head]
        settings = {key: value for key, value in group.items() if key != "params"}
        optimizer.add_param_group({**settings, "params": moved, "lr": group["lr"] * factor})
    optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
