"""The loss variants scripts/bench_imbalance.py measures against the shipped balanced weights."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_imbalance", Path(__file__).resolve().parent.parent / "scripts" / "bench_imbalance.py")
bench_imbalance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_imbalance)
capped_class_weights = bench_imbalance.capped_class_weights
logit_adjusted_cross_entropy = bench_imbalance.logit_adjusted_cross_entropy


def test_capped_weights_keep_the_ratio_and_an_average_of_one_per_example():
    labels = [0] * 680 + [1] * 200 + [2] * 70 + [3] * 30 + [4] * 20  # balanced weights span 34x
    weights = capped_class_weights(labels, 5, max_ratio=10)
    assert max(weights) / min(weights) == pytest.approx(10)
    assert weights[3] == pytest.approx(weights[4]), "the rarest classes share the cap"
    assert sum(weights[y] for y in labels) / len(labels) == pytest.approx(1)


def test_logit_adjusted_loss_is_cross_entropy_of_logits_shifted_by_log_priors():
    import torch

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
