"""The training losses for imbalanced data: per-class cross-entropy weights (single-label) and per-label positive
weights for binary cross-entropy (multi-label), from the train split's counts, as Trainer ``compute_loss_func``s."""
from __future__ import annotations

from collections.abc import Sequence

from finetune.config.spec import CLASS_WEIGHTS


def class_weights(label_ids: Sequence[int], n_classes: int, mode: str) -> list[float] | None:
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


def label_positive_weights(targets, mode: str) -> list[float] | None:
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


def weighted_binary_cross_entropy(pos_weight: list[float]):
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
