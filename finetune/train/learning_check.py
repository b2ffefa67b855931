"""The learning check: is the fine-tuned model learning at all, judged against a baseline that takes seconds?

Before training, :func:`fit_baseline` fits the project's one-liner (:func:`finetune.selection.automl.balanced_baseline`:
class-balanced TF-IDF + logistic regression; one-vs-rest for multi-label data) on train and scores it on val,
always, whatever ``automl`` says. The fine-tuned model is then compared with it once early in epoch 1 (a third of
the way in, after the warmup) and at every evaluation, on the primary metric (``auc_weighted`` when the primary
metric is one to minimise: the one-liner's loss is not the weighted loss training reports).

"Clearly not learning" needs both signs (:func:`judge`):

- the training loss has not fallen by :data:`LOSS_DROP` (10 %) from its first logged value. An untrained head
  answers about uniformly, which costs ln k nats per text with or without balanced weights (they average 1 per
  text), and the entropy of the class priors under the logit-adjusted loss (its logits start out adjusted); any
  signal read from the texts takes the loss below that. The mean of the last three logs (30 steps of
  16 texts) moves by 2-3 % from batch to batch, so 10 % is about three of those swings;
- the val metric is more than :data:`MARGIN` (0.05) below the one-liner's: the issue's own tolerance for val AUC
  after epoch 1 (issue 25, "Goals"). A loss that does not fall on data where the one-liner also finds nothing
  (val metric near chance for both) is no reason to act.

Then, with ``--learning-check restart`` (a single run), training restarts once from the pretrained weights at
:data:`LOWER_LR_FACTOR` of its learning rate (1e-4 becomes 2.5e-5, inside the 2e-5..5e-5 grid of Devlin et al.
2019 for BERT fine-tuning; issue 25's failing run learnt at 5e-5) and, not learning again, stops and says so.
With ``warn`` (every sweep trial) it records and says so only: the sweep's early-termination policy decides
about trials, and a trial that restarted itself would hand that policy a curve it did not cut.
Each verdict is one line on stderr and a record in result.json's ``learning_check``; a model that ends below
the one-liner is flagged there (``below_baseline``) for the run's last line and its report.

Labels that do not follow from the texts (shuffled, or noise) defeat both models: the one-liner is then at chance
too, no gap opens and nothing restarts (a lower learning rate cannot find a signal that is not there). Such a run
is caught at its end instead (:func:`no_signal`, ``no_signal`` in result.json) and says so in the same one line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.data import read_targets
from finetune.selection.automl import balanced_baseline
from finetune.selection.choose import FINETUNED
from finetune.selection.metrics import task_metrics, unprefixed
from finetune.train.callbacks import decided_by_main

MARGIN = 0.05
LOSS_DROP = 0.10
LOWER_LR_FACTOR = 0.25
# AUC of a ranking that knows nothing; "no signal" is both models within MARGIN of it.
CHANCE_AUC = 0.5
# The early check waits this share of epoch 1 (and the warmup): the first steps only move the new head.
EARLY_SHARE = 1 / 3
RECENT_LOGS = 3
BASELINE_NAME = "TF-IDF + logistic regression (class-balanced)"
MULTI_LABEL_BASELINE_NAME = "TF-IDF + one-vs-rest logistic regression"

if TYPE_CHECKING:
    from finetune.plan.summary import RunSummary


def compared_metric(primary_metric: str, goal: str) -> str:
    """The metric both models are compared on (see the module docstring)."""
    return unprefixed(primary_metric) if goal == "maximize" else "auc_weighted"


def fit_baseline(train_file: str, val_file: str, labels: list[str], task: str, metric: str) -> dict:
    """The one-liner's val metrics: ``{"model", "metric", "value", "val", "fit_seconds"}``."""
    import numpy as np

    started = time.time()
    (train_texts, train_y), (val_texts, val_y) = (read_targets(path, labels, task) for path in (train_file, val_file))
    model = balanced_baseline(task).fit(train_texts, train_y)
    proba = np.asarray(model.predict_proba(val_texts))
    if task != "multi_label" and proba.shape[1] != len(labels):
        # A class missing from train has no column: it gets probability 0, as the model never predicts it.
        full = np.zeros((len(val_texts), len(labels)))
        full[:, model.classes_] = proba
        proba = full
    val = task_metrics(task, np.asarray(val_y), proba, labels=labels)
    return {
        "model": MULTI_LABEL_BASELINE_NAME if task == "multi_label" else BASELINE_NAME,
        "metric": metric,
        "value": val.get(metric),
        "val": val,
        "fit_seconds": round(time.time() - started, 2),
    }


def describe_baseline(baseline: dict) -> str:
    """``<model> reaches val <metric> <value> (fitted in N s)``; a metric val cannot give (a class missing) is
    said so, and then no check acts."""
    value = baseline.get("value")
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    reached = (
        f"reaches val {baseline['metric']} {value:.4f}"
        if finite
        else f"has no val {baseline['metric']} on this val split (no check acts)"
    )
    return f"{baseline['model']} {reached} (fitted in {baseline['fit_seconds']:.0f} s)"


def judge(
    losses: list[float], value: float | None, baseline: float | None, baseline_auc: float | None = None
) -> str | None:
    """``not_learning`` (loss not falling and far below the one-liner), ``behind`` (far below only) or None; None
    too when the one-liner's val AUC (``baseline_auc``) is at chance: there is nothing to be behind."""
    if value is None or baseline is None or not math.isfinite(value) or not math.isfinite(baseline):
        return None
    if no_signal(CHANCE_AUC, baseline_auc):
        return None
    if value >= baseline - MARGIN:
        return None
    recent = recent_loss(losses)
    if recent is None:
        return "behind"
    return "not_learning" if recent > (1 - LOSS_DROP) * losses[0] else "behind"


def recent_loss(losses: list[float]) -> float | None:
    """The mean of the last :data:`RECENT_LOGS` logged losses after the first (the reference); None before two."""
    recent = losses[1:][-RECENT_LOGS:]
    return sum(recent) / len(recent) if recent else None


def early_step(steps_per_epoch: int, warmup_steps: int, logging_steps: int) -> int | None:
    """The optimizer step of the early check, or None when epoch 1 is too short for one before its evaluation:
    a third of epoch 1, not before the warmup plus three logs (the recent losses must be post-warmup ones)."""
    step = max(math.ceil(steps_per_epoch * EARLY_SHARE), warmup_steps + RECENT_LOGS * logging_steps)
    return step if step < steps_per_epoch else None


def no_signal(model_auc: float | None, baseline_auc: float | None) -> bool:
    """Neither the fine-tuned model nor the one-liner ranks val texts better than chance (AUC_weighted within
    :data:`MARGIN` of :data:`CHANCE_AUC`): the labels do not follow from the texts."""
    values = (model_auc, baseline_auc)
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v < CHANCE_AUC + MARGIN for v in values)


@dataclass
class CheckLog:
    """What the check saw over all attempts of one training (result.json's ``learning_check``)."""

    baseline: dict
    action: str
    checks: list[dict] = field(default_factory=list)
    restarted: dict | None = None
    stopped: str | None = None

    def to_dict(self, kept_value: float | None, kept_auc: float | None = None) -> dict:
        """``kept_value``: the kept model's val metric; None when training stopped before its first evaluation,
        and then the value the last check measured is the kept model's. ``kept_auc``: its val AUC_weighted."""
        if kept_value is None and self.checks:
            kept_value, kept_auc = self.checks[-1]["value"], self.checks[-1].get("auc")
        baseline = self.baseline.get("value")
        below = kept_value is not None and baseline is not None and math.isfinite(kept_value) and kept_value < baseline
        return {
            "baseline": self.baseline,
            "action": self.action,
            "margin": MARGIN,
            "loss_drop": LOSS_DROP,
            "checks": self.checks,
            "restarted": self.restarted,
            "stopped": self.stopped,
            "kept_value": kept_value,
            "below_baseline": below,
            "kept_auc": kept_auc,
            "no_signal": no_signal(kept_auc, self.baseline.get("val", {}).get("auc_weighted")),
        }


def below_baseline_line(check: dict | None) -> str | None:
    """The one line that says a kept model is below the one-liner on val, or that neither beats chance (None when
    neither holds)."""
    if not check or not (check.get("below_baseline") or check.get("no_signal")):
        return None
    baseline = check["baseline"]
    if check.get("no_signal"):
        return (
            f"warning: the fine-tuned model is no better than chance on val (auc_weighted {check['kept_auc']:.4f}"
            f"), nor is the {baseline['model']} ({baseline['val']['auc_weighted']:.4f}): the labels do not "
            "follow from the texts (shuffled, or noise?)"
        )
    return (
        f"warning: the fine-tuned model is below the baseline: val {baseline['metric']} {check['kept_value']:.4f} "
        f"< {baseline['value']:.4f} for the {baseline['model']}"
    )


def kept_training_check(summary: RunSummary) -> dict | None:
    """``learning_check`` of the training that produced the fine-tuned candidate (None before it ran)."""
    candidate = summary.candidates.get(FINETUNED)
    result_file = candidate.result_file if candidate is not None else None
    if not result_file or not Path(result_file).is_file():
        return None
    return json.loads(Path(result_file).read_text()).get("learning_check")


def shipped_below_baseline_line(summary: RunSummary) -> str | None:
    """The run's last word when it registers a fine-tuned model that is below the one-liner on val."""
    selection, registration = summary.selection, summary.registration
    if selection is None or registration is None or not registration.registered or selection.winner != FINETUNED:
        return None
    line = below_baseline_line(kept_training_check(summary))
    return line and line.replace(
        "the fine-tuned model is", f"the shipped model ({registration.name} version {registration.version}) is", 1
    )


def callback(log: CheckLog, attempt: int, speak: bool, val_set, early: int | None):
    """The Trainer callback of one attempt (``speak``: this process prints; under DDP only the first does). Set
    ``callback.trainer`` before training starts: the early check predicts on val with it. ``callback.restart``
    tells the caller to train again at a lower learning rate."""
    from transformers import TrainerCallback

    metric = log.baseline["metric"]

    class LearningCheck(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.losses: list[float] = []
            self.evaluated = False
            self.restart = False

        def on_log(self, _args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and math.isfinite(loss):
                self.losses.append(loss)

        def on_step_end(self, _args, state, control, **kwargs):
            if early is not None and state.global_step == early and not self.evaluated:
                # predict(), not evaluate(): an extra evaluation would reach the sweep's policy as an interval.
                metrics = self.trainer.predict(val_set, metric_key_prefix="check").metrics
                self._judge(state, control, metrics, "check", "early in epoch 1")

        def on_evaluate(self, _args, state, control, metrics=None, **kwargs):
            self.evaluated = True
            self._judge(state, control, metrics or {}, "eval", f"evaluation at step {state.global_step}")

        def _judge(self, state, control, metrics: dict, prefix: str, when: str):
            value = metrics.get(f"{prefix}_{metric}")
            verdict = judge(self.losses, value, log.baseline.get("value"), log.baseline["val"].get("auc_weighted"))
            recent = recent_loss(self.losses)
            log.checks.append(
                {
                    "attempt": attempt,
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "value": value,
                    "auc": metrics.get(f"{prefix}_auc_weighted"),
                    "first_loss": self.losses[0] if self.losses else None,
                    "recent_loss": recent,
                    "verdict": verdict,
                }
            )
            # Every process stops at the same step or DDP hangs: the first one's verdict counts.
            acting = decided_by_main(verdict == "not_learning") and log.action == "restart"
            if acting:
                control.should_training_stop = True
                control.should_save = False
                self.restart = attempt == 1
                if attempt > 1:
                    log.stopped = f"not learning after the restart at a lower learning rate ({when})"
            if verdict is None or not speak:
                return

            def say(text: str) -> None:
                print(f"learning check ({when}): {text}", file=sys.stderr, flush=True)

            gap = f"val {metric} {value:.4f} vs {log.baseline['value']:.4f} for the {log.baseline['model']}"
            if verdict == "behind":
                say(f"behind the baseline, {gap}; the training loss is falling, training goes on")
                return
            loss = f"training loss {self.losses[0]:.3f} -> {recent:.3f}, {gap}"
            if not acting:
                say(f"not learning ({loss}); recorded only (learning_check=warn)")
            elif self.restart:
                say(f"not learning ({loss}); restarting once at {LOWER_LR_FACTOR:g} x the learning rate")
            else:
                say(f"still not learning at the lower learning rate ({loss}); training stops here")

    return LearningCheck()
