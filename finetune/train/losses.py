"""The training losses for imbalanced data, from the train split's counts, as Trainer ``compute_loss_func``s:
per-class cross-entropy weights or logit-adjusted cross-entropy (single-label), per-label positive weights for
binary cross-entropy (multi-label).

``class_weights=auto`` (:func:`single_label_mode`): ``balanced`` weights for two classes, the logit-adjusted loss
for three or more. Balanced weights on five skewed star classes (Amazon Musical Instruments, 68 % five stars, 2 %
one star: weights up to 32x apart) made the loss jump between batches (1.0 to 2.1 where plain cross-entropy stayed
within 0.8-1.0) and gave the lowest val AUC_weighted of the losses at every evaluation; issue 25's full-size run
(1,539 steps) ended at test AUC 0.729 where unweighted training reached 0.787. The logit-adjusted loss (Menon et
al. 2021, "Long-tail learning via logit adjustment", ICLR, eq. 10) keeps plain cross-entropy's gradient scale and
ranking and still moves argmax towards the rare classes (scripts/bench_imbalance.py; docs/performance.md, "Loss on
skewed classes"). Two classes keep the balanced weights they were measured with (README's quality table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from finetune.config.spec import CLASS_WEIGHTS


def class_weights(label_ids: Sequence[int], n_classes: int, mode: str) -> list[float] | None:
    """Per-class loss weights from the train split's class counts, or None (plain cross-entropy).

    ``balanced`` (and ``auto`` for two classes): n / (k * n_c), every class weighs as much in total
    (scikit-learn's "balanced"); with it the fine-tuned MiniLM finds 7 of 11 test negatives on a 4.5 %-negative
    set (scripts/bench_quality.py, README's quality table). Weights are scaled so that the average weight per
    training example is 1, so the loss and the learning rate keep their usual scale. None for ``none`` and for
    the logit-adjusted loss (:func:`single_label_mode`).
    """
    if single_label_mode(mode, n_classes) != "balanced":
        return None
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    total = sum(counts)
    weights = [total / (n_classes * n) for n in counts]
    scale = total / sum(w * n for w, n in zip(weights, counts))
    return [w * scale for w in weights]


def training_loss(targets, n_classes: int, mode: str, multi_label: bool):
    """``(compute_loss_func or None for the model's own loss, class weights or None, class priors or None)``."""
    if multi_label:
        weights = label_positive_weights(targets, mode)
        return (weighted_binary_cross_entropy(weights) if weights else None), weights, None
    priors = class_priors(targets, n_classes, mode)
    if priors:
        return logit_adjusted_cross_entropy(priors), None, priors
    weights = class_weights(targets, n_classes, mode)
    return (weighted_cross_entropy(weights) if weights else None), weights, None


def single_label_mode(mode: str, n_classes: int) -> str:
    """``balanced``, ``none`` or ``logit_adjusted``: what ``class_weights=mode`` means for ``n_classes`` classes
    (``auto``: see the module docstring)."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights={mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")
    if mode == "auto":
        return "balanced" if n_classes <= 2 else "logit_adjusted"
    return mode


def class_priors(label_ids: Sequence[int], n_classes: int, mode: str) -> list[float] | None:
    """The train split's class shares for the logit-adjusted loss, or None when ``mode`` does not use it. A class
    missing from train counts once, so its log prior stays finite."""
    if single_label_mode(mode, n_classes) != "logit_adjusted":
        return None
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    return [n / sum(counts) for n in counts]


def logit_adjusted_cross_entropy(priors: list[float], tau: float = 1.0):
    """A Trainer ``compute_loss_func``: cross-entropy of ``logits + tau * log(prior)`` (Menon et al. 2021, eq. 10).
    The raw logits then estimate class-balanced scores: argmax and the served softmax favour no class for being
    frequent, with no per-example weights, so the gradient scale stays that of plain cross-entropy."""
    import torch
    import torch.nn.functional as F

    offset = torch.tensor([tau * math.log(p) for p in priors], dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_item = F.cross_entropy(logits.float() + offset.to(logits.device), labels, reduction="none")
        return per_item.sum() / num_items_in_batch if num_items_in_batch is not None else per_item.mean()

    return loss


def label_positive_weights(targets, mode: str) -> list[float] | None:
    """Multi-label: a ``pos_weight`` per label for binary cross-entropy, from the train split's 0/1 matrix.

    ``balanced`` and ``auto``: negatives / positives of the label (its positives weigh as much in total as its
    negatives). On GoEmotions it beat the square root of that ratio on test F1 macro, 0.4838 against 0.4476, at
    equal micro F1 (0.5598 / 0.5606; scripts/bench_multilabel.py). ``none`` and ``logit_adjusted`` (a
    single-label loss): plain BCE.
    """
    import numpy as np

    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights={mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")
    if mode in ("none", "logit_adjusted"):
        return None
    targets = np.asarray(targets)
    positives = targets.sum(axis=0).clip(min=1)
    ratio = (len(targets) - positives).clip(min=1) / positives
    return [float(w) for w in ratio]


def weighted_binary_cross_entropy(pos_weight: list[float]):
    """A Trainer ``compute_loss_func``: BCE with logits and a positive weight per label, averaged over labels, then
    over texts. The Trainer's ``num_items_in_batch`` counts label entries, k per text of an n x k target: texts
    are that count / k (dividing by the entries made the loss k times too small, 28 times on GoEmotions)."""
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(pos_weight, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_item = F.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), reduction="none", pos_weight=weight.to(logits.device)
        ).mean(dim=1)
        return (
            per_item.mean() if num_items_in_batch is None else per_item.sum() / (num_items_in_batch / labels.shape[-1])
        )

    return loss


def weighted_cross_entropy(weights: list[float]):
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
