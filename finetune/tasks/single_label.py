"""Single-label classification (one class a text; two or more classes): what the stages ask of the task.

Targets are class ids; the head is ``AutoModelForSequenceClassification`` with softmax and (class-weighted)
cross-entropy; metrics :func:`finetune.metrics.classification_metrics`, primary ``val_auc_weighted``; the
decision a threshold or argmax rule chosen on val (:mod:`finetune.decision`); baseline candidate FLAML over
TF-IDF (:mod:`finetune.automl`); the response a ``label`` with every class's probability; AML AutoML
``text_classification``. :class:`~finetune.tasks.multi_label.MultiLabelTask` changes what differs.
"""

from __future__ import annotations

from typing import List

from finetune.data import read_targets
from finetune.report.data import data_section
from finetune.report.selection import selection_section
from finetune.selection.automl import run_automl
from finetune.selection.choose import evaluate
from finetune.selection.metrics import metric_names, task_metrics
from finetune.train.learning_check import fit_baseline
from finetune.train.losses import training_loss


class SingleLabelTask:
    name = "single_label"
    primary_metric = "val_auc_weighted"
    select_metric = "auc_weighted"
    model_class = "AutoModelForSequenceClassification"
    problem_type = "single_label_classification"
    automl_task = "text_classification"
    baseline_name = "automl"
    response_key = "label"
    trainer_overrides: dict = {}  # TrainingArguments the task must have, over the hardware's choices

    @property
    def metric_names(self) -> tuple:
        return metric_names(self.name)

    def encode(self, path: str, tokenizer, labels: List[str], max_length: int):
        from datasets import Dataset

        texts, targets = read_targets(path, labels, self.name)
        dataset = Dataset.from_dict({"text": texts, "label": self.training_targets(targets)})
        return dataset.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["text"],
        )

    def training_targets(self, targets) -> list:
        return list(targets)

    def collator(self, tokenizer, pad_to_multiple_of):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def training_loss(self, train_set, labels: List[str], setting: str):
        """``(compute_loss_func or None, class weights or None, logit-adjustment priors or None)``: auto is the
        logit-adjusted loss from three classes on (finetune.train.losses)."""
        return training_loss(train_set["label"], len(labels), setting, multi_label=False)

    def probabilities(self, logits):
        import torch

        return torch.softmax(logits, dim=-1).numpy()

    def truth(self, label_ids):
        return label_ids

    def compute_metrics(self, val_file: str, val_set, labels: List[str]):
        """The Trainer's ``compute_metrics``: the task's metrics at argmax (0.5 per label for multi-label)."""
        import torch

        def compute(prediction):
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            proba = self.probabilities(torch.as_tensor(logits, dtype=torch.float32))
            return task_metrics(self.name, self.truth(prediction.label_ids), proba)

        return compute

    def candidate_extras(self) -> dict:
        return {}

    def fit_baseline(self, train_file: str, val_file: str, labels: List[str], metric: str) -> dict:
        return fit_baseline(train_file, val_file, labels, self.name, metric)

    def baseline_description(self, plan) -> str:
        return f"local AutoML baseline (FLAML, {plan.automl.time_budget_s} s budget)"

    def run_baseline(self, data, plan, out_dir) -> dict:
        """The local baseline candidate: FLAML over TF-IDF features (multi-label: one-vs-rest logistic regression)."""
        return run_automl(data, plan.automl, out_dir, plan.seed, plan.train.class_weights)

    def data_report(self, summary, figures, run_dir) -> list:
        """The report's data section: classes (labels) per split, text lengths."""
        return data_section(summary, figures)

    def selection_report(self, summary, figures, run_dir) -> list:
        """The report's candidates section: every candidate's test metrics, the winner's curves."""
        return selection_section(summary, figures)

    def split_texts(self, path) -> list:
        """The texts of a prepared split (what the budget's calibration times)."""
        import pandas as pd

        return pd.read_csv(path, dtype=str, keep_default_na=False)["text"].tolist()

    def sample_request(self, test_path, size: int) -> dict:
        import pandas as pd

        texts = pd.read_csv(test_path, dtype=str, keep_default_na=False, nrows=size)["text"].tolist()
        return {"data": [{"text": text} for text in texts]}

    def evaluate(
        self,
        candidates: dict,
        test_path,
        labels: List[str],
        out_dir=None,
        *,
        val_path=None,
        settings=None,
        keep_rule=(),
    ) -> dict:
        """Selection's test scoring: each candidate at the decision rule chosen on val
        (:func:`finetune.selection.choose.evaluate`)."""
        return evaluate(
            candidates,
            test_path,
            labels,
            proba_dir=out_dir,
            val_csv=val_path,
            settings=settings,
            keep_rule=keep_rule,
            task=self.name,
        )


SINGLE_LABEL_TASK = SingleLabelTask()
