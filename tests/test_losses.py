"""The losses for skewed classes: the shipped logit-adjusted loss and the capped weights bench_imbalance.py measures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_imbalance", Path(__file__).resolve().parent.parent / "scripts" / "bench_imbalance.py"
)
bench_imbalance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_imbalance)
capped_class_weights = bench_imbalance.capped_class_weights


def test_capped_weights_keep_the_ratio_and_an_average_of_one_per_example():
    labels = [0] * 680 + [1] * 200 + [2] * 70 + [3] * 30 + [4] * 20  # balanced weights span 34x
    weights = capped_class_weights(labels, 5, max_ratio=10)
    assert max(weights) / min(weights) == pytest.approx(10)
    assert weights[3] == pytest.approx(weights[4]), "the rarest classes share the cap"
    assert sum(weights[y] for y in labels) / len(labels) == pytest.approx(1)


def test_logit_adjusted_loss_is_cross_entropy_of_logits_shifted_by_log_priors():
    import torch

    from finetune.train.losses import logit_adjusted_cross_entropy

    priors = [0.7, 0.2, 0.1]
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    shifted = [[z + math.log(p) for z, p in zip(row, priors)] for row in logits.tolist()]
    expected = [math.log(sum(math.exp(z) for z in row)) - row[y] for row, y in zip(shifted, labels.tolist())]
    loss = logit_adjusted_cross_entropy(priors)({"logits": logits}, labels)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    # A rare class's label costs more than under plain cross-entropy: its logit must beat a prior handicap.
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert expected[0] > plain[0].item()


def test_auto_keeps_balanced_weights_for_two_classes_and_adjusts_logits_for_more():
    """Issue 25: 32x balanced weights on five skewed star classes made training noisy and ranking worse than
    unweighted training; auto now uses the logit-adjusted loss from three classes on (finetune.train.losses)."""
    from finetune.train.losses import training_loss

    binary = [0] * 5 + [1] * 95
    loss, weights, priors = training_loss(binary, 2, "auto", multi_label=False)
    assert priors is None and weights == pytest.approx([10, 10 / 19])
    stars = [0] * 2 + [1] * 2 + [2] * 7 + [3] * 21 + [4] * 68
    loss, weights, priors = training_loss(stars, 5, "auto", multi_label=False)
    assert weights is None and priors == pytest.approx([0.02, 0.02, 0.07, 0.21, 0.68])
    import torch

    logits, labels = torch.zeros(2, 5), torch.tensor([0, 4])
    # Equal logits: the adjusted loss charges each text -log(its class prior), a rare label far more.
    expected = (-math.log(0.02) - math.log(0.68)) / 2
    assert loss({"logits": logits}, labels).item() == pytest.approx(expected, rel=1e-5)
    assert training_loss(stars, 5, "balanced", multi_label=False)[2] is None, "an explicit choice is kept"
    assert training_loss(stars, 5, "none", multi_label=False) == (None, None, None)


def test_logit_adjusted_multi_label_data_falls_back_to_plain_binary_cross_entropy():
    from finetune.train.losses import training_loss

    assert training_loss([[1, 0], [0, 1], [1, 1]], 2, "logit_adjusted", multi_label=True) == (None, None, None)
