"""The learning check: the fine-tuned model against the class-balanced TF-IDF + logistic regression one-liner on val.

The data is a keyword task (one of five praise or five complaint words among neutral filler) that both the
one-liner and a tiny BERT can learn, so "not learning" comes only from what a test breaks (a learning rate of 0).
The tiny BERT is conftest's, built over these words.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from conftest import build_tiny_bert, train_arguments
from finetune.train.command_line import main as train_main
from finetune.train.learning_check import LOSS_DROP, MARGIN, early_step, judge

PRAISE = ("awesome", "amazing", "best", "beautiful", "excellent")
COMPLAINT = ("awful", "bad", "broken", "annoying", "defective")
FILLER = (
    "about",
    "after",
    "again",
    "belt",
    "blade",
    "brake",
    "bulb",
    "cable",
    "car",
    "clean",
    "cover",
    "door",
    "engine",
    "filter",
    "battery",
    "charger",
    "antenna",
    "bumper",
    "cap",
    "clip",
)


def write_split(path: Path, rows: int, rng: random.Random) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = "good" if i % 2 else "poor"
            words = rng.sample(FILLER, 6)
            words.insert(rng.randrange(7), rng.choice(PRAISE if label == "good" else COMPLAINT))
            writer.writerow([" ".join(words), label])


@pytest.fixture(scope="module")
def keyword_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keywords")
    rng = random.Random(0)
    # 60 steps of 16 per epoch: the early check (step 20) sees a learning model within the margin already.
    write_split(folder / "train.csv", 960, rng)
    write_split(folder / "val.csv", 80, rng)
    (folder / "labels.json").write_text(json.dumps(["poor", "good"]))
    return folder


@pytest.fixture(scope="module")
def keyword_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("keyword-bert"), [" ".join(PRAISE + COMPLAINT + FILLER)])


def train(data: Path, model: Path, out: Path, *extra: str) -> dict:
    code = train_main(
        train_arguments(
            data,
            model,
            out,
            "--tracking-uri",
            f"sqlite:///{out.parent / 'mlflow.db'}",
            "--batch-size",
            "16",
            "--logging-steps",
            "2",
            *extra,
        )
    )
    assert code == 0
    return json.loads((out / "result.json").read_text())


def test_judge_needs_a_flat_loss_and_a_wide_gap():
    flat, falling = [0.69, 0.70, 0.68, 0.69], [0.69, 0.55, 0.40, 0.30]
    assert judge(flat, 0.50, 0.90) == "not_learning"
    assert judge(falling, 0.50, 0.90) == "behind", "a falling loss is learning, even far below the baseline"
    assert judge(flat, 0.90 - MARGIN + 0.001, 0.90) is None, "within the margin of the baseline"
    assert judge(flat, 0.95, 0.90) is None
    # Just under the required drop still counts as flat; just over it as falling.
    assert judge([1.0, (1 - LOSS_DROP) + 0.01], 0.5, 0.9) == "not_learning"
    assert judge([1.0, (1 - LOSS_DROP) - 0.01], 0.5, 0.9) == "behind"
    assert judge(flat, None, 0.9) is None and judge(flat, 0.5, None) is None
    assert judge(flat, 0.40, 0.52, baseline_auc=0.52) is None, "a one-liner at chance: nothing to be behind"
    assert judge(flat, 0.40, 0.90, baseline_auc=0.90) == "not_learning"


def test_early_check_comes_after_the_warmup_and_before_the_first_evaluation():
    assert early_step(90, 0, 10) == 30, "a third of epoch 1"
    assert early_step(90, 20, 10) == 50, "the warmup and three logs after it"
    assert early_step(20, 0, 10) is None, "epoch 1 ends before three logs: its evaluation judges"


@pytest.mark.slow  # a real (tiny) fine-tune
def test_a_model_that_cannot_learn_restarts_once_then_stops(keyword_data, keyword_bert, tmp_path, capsys):
    result = train(
        keyword_data,
        keyword_bert,
        tmp_path / "frozen",
        "--learning-rate",
        "0",
        "--epochs",
        "3",
        "--learning-check",
        "restart",
    )
    err = capsys.readouterr().err
    check = result["learning_check"]
    assert check["baseline"]["value"] > 0.95, "the one-liner learns the keywords"
    assert [c["verdict"] for c in check["checks"]] == ["not_learning", "not_learning"]
    assert [c["attempt"] for c in check["checks"]] == [1, 2], "one restart, then a stop: never a third attempt"
    assert check["restarted"]["to_learning_rate"] == 0 and check["stopped"]
    assert check["below_baseline"] is True
    assert result["epochs_run"] < 1, "stopped early in epoch 1 of the second attempt"
    assert result["hyperparameters"]["learning_rate"] == 0
    lines = [line for line in err.splitlines() if line.startswith("learning check (")]
    assert len(lines) == 2 and "restarting once" in lines[0] and "training stops here" in lines[1]
    assert sum("warning: the fine-tuned model is below the baseline" in line for line in err.splitlines()) == 1
    assert not (tmp_path / "frozen" / "checkpoints").exists()


@pytest.mark.slow  # a real (tiny) fine-tune
def test_shuffled_labels_are_caught_in_one_line_and_not_restarted(keyword_bert, tmp_path, capsys):
    """Issue 25's "cannot learn" case: labels shuffled away from the texts. The one-liner learns nothing from them
    either, so no gap to it opens; the run must still end saying, in one line, that nothing beat chance."""
    rng = random.Random(2)
    for name, rows in (("train", 960), ("val", 400)):
        write_split(tmp_path / f"{name}.csv", rows, rng)
        with open(tmp_path / f"{name}.csv", newline="", encoding="utf-8") as handle:
            header, *body = list(csv.reader(handle))
        labels = [label for _, label in body]
        rng.shuffle(labels)
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *[[text, label] for (text, _), label in zip(body, labels)]])
    (tmp_path / "labels.json").write_text(json.dumps(["poor", "good"]))
    result = train(
        tmp_path,
        keyword_bert,
        tmp_path / "shuffled",
        "--learning-rate",
        "3e-3",
        "--epochs",
        "1",
        "--learning-check",
        "restart",
    )
    err = capsys.readouterr().err
    check = result["learning_check"]
    assert check["no_signal"] is True and check["restarted"] is None, "a lower learning rate cannot find no signal"
    assert abs(check["baseline"]["val"]["auc_weighted"] - 0.5) < MARGIN and abs(check["kept_auc"] - 0.5) < MARGIN
    chance = [line for line in err.splitlines() if "no better than chance" in line]
    assert len(chance) == 1 and "labels do not follow from the texts" in chance[0]


@pytest.mark.slow  # a real (tiny) fine-tune
def test_the_learning_keyword_model_is_not_called_chance(keyword_data, keyword_bert, tmp_path):
    check = train(
        keyword_data,
        keyword_bert,
        tmp_path / "signal",
        "--learning-rate",
        "3e-3",
        "--epochs",
        "1",
        "--learning-check",
        "restart",
    )["learning_check"]
    assert check["no_signal"] is False and check["kept_auc"] > 0.9


@pytest.mark.slow  # a real (tiny) fine-tune
def test_warn_records_and_trains_on(keyword_data, keyword_bert, tmp_path, capsys):
    result = train(
        keyword_data,
        keyword_bert,
        tmp_path / "warned",
        "--learning-rate",
        "0",
        "--epochs",
        "1",
        "--learning-check",
        "warn",
    )
    err = capsys.readouterr().err
    check = result["learning_check"]
    assert check["restarted"] is None and check["stopped"] is None
    assert result["epochs_run"] == pytest.approx(1.0), "a sweep's trial runs until its policy stops it"
    assert {c["verdict"] for c in check["checks"]} == {"not_learning"} and len(check["checks"]) == 2
    assert "recorded only (learning_check=warn)" in err


@pytest.mark.slow  # a real (tiny) fine-tune
def test_a_model_that_learns_is_not_flagged(keyword_data, keyword_bert, tmp_path, capsys):
    result = train(
        keyword_data,
        keyword_bert,
        tmp_path / "learns",
        "--learning-rate",
        "3e-3",
        "--epochs",
        "1",
        "--learning-check",
        "restart",
    )
    err = capsys.readouterr().err
    check = result["learning_check"]
    assert check["restarted"] is None and check["stopped"] is None and check["below_baseline"] is False
    assert check["checks"][-1]["verdict"] is None
    assert "restarting" not in err and "below the baseline" not in err


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["search=none"], "restart"),
        ([], "warn"),  # the default config sweeps: its trials only record, the sweep's policy decides
        (["search=none", "train.learning_check=warn"], "warn"),
    ],
)
def test_a_single_run_restarts_and_a_sweep_trial_only_warns(overrides, expected, tmp_path):
    from finetune.cli.main import compose, expand
    from finetune.plan.build import build_plan
    from finetune.train.process import train_args

    [(hydra_overrides, space)] = expand([*overrides, f"output_root={tmp_path}"], multirun=False)
    plan = build_plan(compose(hydra_overrides, space), hydra_overrides, "check")
    assert train_args(plan, str(tmp_path), str(tmp_path / "out")).learning_check == expected


@pytest.mark.slow  # a full local pipeline (train twice, FLAML, register, report)
def test_a_run_that_ships_a_model_below_the_baseline_says_so_last_and_in_its_report(
    keyword_data, tiny_model_dir, tmp_path
):
    """conftest's tiny BERT reads every keyword text as seven [UNK]s: it cannot learn this data, and with nothing
    else to choose (automl=none) selection ships it."""
    import os
    import subprocess
    import sys

    data = tmp_path / "keywords.csv"
    write_split(data, 400, random.Random(1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune",
            "dataset=file",
            f"dataset.path={data}",
            "search=none",
            "automl=none",
            "endpoint=none",
            f"model.path={tiny_model_dir}",
            "model.epochs=1",
            "compute.num_threads=1",
            f"output_root={tmp_path}",
            "run_name=below",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("warning: the shipped model (") and "is below the baseline: val auc_weighted" in last
    assert "restarting once at 0.25 x the learning rate" in run.stderr
    report = (tmp_path / "below" / "report.md").read_text()
    assert "## Learning check" in report and "is below the baseline: val auc_weighted" in report
    assert "Training restarted at step" in report
