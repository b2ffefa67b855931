"""Multi-label classification (any number of labels a text): what differs from single-label.

One sigmoid per label with binary cross-entropy (``problem_type=multi_label_classification``), each label's
positives weighted by its negative/positive ratio, float multi-hot targets, metrics at 0.5 during training
(selection then chooses per-label thresholds on val), a ``labels`` list in the response, AML AutoML
``text_classification_multilabel``.
"""

from __future__ import annotations

from typing import List

from finetune.tasks.single_label import SingleLabelTask
from finetune.train.losses import training_loss


class MultiLabelTask(SingleLabelTask):
    name = "multi_label"
    problem_type = "multi_label_classification"
    automl_task = "text_classification_multilabel"
    response_key = "labels"

    def baseline_description(self, plan) -> str:
        return "local AutoML baseline (one-vs-rest TF-IDF + logistic regression)"

    def training_targets(self, targets) -> list:
        import numpy as np

        # BCE takes float targets: the collator then stacks them into a float tensor.
        return np.asarray(targets).astype(np.float32).tolist()

    def training_loss(self, train_set, labels: List[str], setting: str):
        return training_loss(train_set["label"], len(labels), setting, multi_label=True)

    def probabilities(self, logits):
        import torch

        return torch.sigmoid(logits).numpy()

    def truth(self, label_ids):
        return label_ids.round().astype("int64")


MULTI_LABEL_TASK = MultiLabelTask()
