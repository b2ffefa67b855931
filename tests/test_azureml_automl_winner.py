"""When AutoML wins on AML, it ships like a fine-tuned winner (issue 24, defect 1): rolled out with the same
smoke test, promoted, answering the same request/response contract, loadable by finetune.predict and
mlflow.pyfunc; and the emulator's AutoML stand-in reads MLTables and applies AutoML NLP's data rules."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from pathlib import Path

import pytest

from amlemu import automl_standin
from amlemu import recorder as aml_recorder
from test_azureml_submit import model_ref, recorder, rollout_calls, seed_model, server, settings  # noqa: F401

AUTOML_CONDA = {
    "name": "automl-nlp",
    "channels": ["conda-forge"],
    "dependencies": [
        "python=3.9",
        "pip",
        {"pip": ["azureml-automl-dnn-nlp==1.60.0", "azureml-defaults==1.60.0", "mlflow-skinny==2.9.2"]},
    ],
}
ENDPOINT = "onlineEndpoints/amazon-automotive-sentiment"
MLTABLE = (
    "paths:\n  - file: ./{file}\ntransformations:\n  - read_delimited:\n      delimiter: ','\n      encoding: utf8\n"
)


@pytest.mark.slow  # real inference servers behind the router
def test_deploy_step_rolls_out_and_promotes_an_automl_winner(server, recorder, monkeypatch, tmp_path, settings):
    """The AutoML winner gets the fine-tuned winner's rollout (new deployment, smoke test, traffic, Production)
    in the environment its MLflow model brought; before the fix the deploy step skipped it."""
    import yaml

    from finetune.launch.azureml import deploy as deploy_module
    from finetune.launch.azureml.runtime import steps

    monkeypatch.setattr(deploy_module, "deployment_name", lambda version, now=None: f"v{version}-test")
    seed_model(recorder)
    ref = Path(model_ref(tmp_path / "ref", candidate="automl"))
    choice = json.loads((ref / "model_ref.json").read_text())
    choice["environment"] = {
        "image": deploy_module.MODEL_ENVIRONMENT_IMAGE,
        "conda_file": AUTOML_CONDA,
        "description": "the AutoML model's own",
    }
    (ref / "model_ref.json").write_text(json.dumps(choice))

    result = steps.deploy(str(ref), str(settings), str(tmp_path / "rollout"), ml_client=server.ml_client())
    assert result.status == "succeeded"
    assert rollout_calls(recorder)[:3] == [
        f"PUT {ENDPOINT}",
        f"PUT {ENDPOINT}/deployments/v3-test",
        "POST /score deployment=v3-test",
    ]
    environment = recorder.find("PUT", r"environments/.+/versions/.+")[0].body["properties"]
    assert environment["image"] == deploy_module.MODEL_ENVIRONMENT_IMAGE
    assert yaml.safe_load(environment["condaFile"]) == AUTOML_CONDA
    model = recorder.resources[f"{aml_recorder.WORKSPACE_PATH}/models/automotive-sentiment/versions/3"]
    assert model["properties"]["stage"] == "Production"
    promoted = json.loads((tmp_path / "rollout" / "model_ref.json").read_text())
    assert promoted["candidate"] == "automl" and promoted["promoted"]["version"] == "3"
    assert json.loads((tmp_path / "rollout" / "rollout.json").read_text())["status"] == "succeeded"


# ------------------------------------------------------------------------------------------- the shipped package


WORDS = {"joy": ["delighted", "great", "love", "happy"], "anger": ["furious", "awful", "broken", "angry"]}


def write_split(folder: Path, name: str, rows: list) -> Path:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / f"{name}.csv", index=False)
    return folder / f"{name}.csv"


def synthetic(task: str, count: int, seed: int) -> list:
    """Texts whose words say their labels; multi-label rows hold 0, 1 or 2 labels as list literals."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        if task == "multi_label":
            labels = [label for label in sorted(WORDS) if rng.random() < 0.5]
        else:
            labels = [sorted(WORDS)[index % 2]]
        words = [rng.choice(WORDS[label]) for label in labels for _ in range(2)] + ["the", "item", "arrived"]
        if rng.random() < 0.15:  # some noise, so that no rule is perfect
            words.append(rng.choice(WORDS[rng.choice(sorted(WORDS))]))
        rng.shuffle(words)
        rows.append((" ".join(words), str(labels) if task == "multi_label" else labels[0]))
    return rows


@pytest.fixture(params=["single_label", "multi_label"])
def automl_package(request, tmp_path):
    """AutoML's best model (the stand-in) made a candidate by the AutoML test step, then staged as the register
    step stages a winner: what a registered AutoML version holds."""
    from finetune.config.schema import SelectConfig
    from finetune.launch.azureml.runtime import steps
    from finetune.registry.model_registry import stage_artifact

    task = request.param
    data = tmp_path / "data"
    for split, count, seed in (("train", 120, 0), ("val", 60, 1), ("test", 60, 2)):
        write_split(data, split, synthetic(task, count, seed))
        (data / f"{split}_table").mkdir()
        (data / f"{split}_table" / f"{split}.csv").write_bytes((data / f"{split}.csv").read_bytes())
        (data / f"{split}_table" / "MLTable").write_text(MLTABLE.format(file=f"{split}.csv"))
    (data / "labels.json").write_text(json.dumps(sorted(WORDS)))
    (data / "settings.json").write_text(json.dumps({"select": dataclasses.asdict(SelectConfig()), "data": {}}))
    automl_standin.train(
        data / "train_table",
        data / "val_table",
        "label",
        "text_classification_multilabel" if task == "multi_label" else "text_classification",
        {"best_model": tmp_path / "best_model"},
    )
    steps.test_automl(
        str(tmp_path / "best_model"),
        str(data / "test.csv"),
        str(data / "val.csv"),
        str(data / "labels.json"),
        str(data / "settings.json"),
        str(tmp_path / "tested"),
        task=task,
    )
    sample = {"data": [{"text": "great love the item"}, {"text": "awful broken thing"}]}
    folder = stage_artifact(tmp_path / "tested" / "model", sample, tmp_path / "registered", conda={"unused": True})
    return task, folder, data


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_a_registered_automl_version_answers_the_contract_everywhere(automl_package, monkeypatch, tmp_path):
    """score.py, finetune.predict and mlflow.pyfunc give the same labels under the rule chosen on val."""
    import mlflow.pyfunc
    import pandas as pd
    import yaml

    from finetune import predict
    from finetune.serve import SCORE_SCRIPT

    task, folder, data = automl_package
    candidate = json.loads((folder / "candidate.json").read_text())
    rule = candidate["decision"]["rule"]
    assert rule == ("per_label_thresholds" if task == "multi_label" else "threshold")
    # It serves where its MLflow model loads: the package's environment is the model's own, not the plan's.
    assert yaml.safe_load((folder / "conda.yaml").read_text()) == yaml.safe_load(
        (folder / "mlflow_model" / "conda.yaml").read_text()
    )

    monkeypatch.setenv("AZUREML_MODEL_DIR", str(folder))
    spec = importlib.util.spec_from_file_location("score_automl_package", SCORE_SCRIPT)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    texts = ["great love the item", "awful broken thing", "the item arrived"]
    answer = score.run(json.dumps({"data": [{"text": text} for text in texts]}))
    key = "labels" if task == "multi_label" else "label"
    online = [prediction[key] for prediction in answer["predictions"]]
    assert all(set(prediction["probabilities"]) == set(WORDS) for prediction in answer["predictions"])
    assert online[0] == (["joy"] if task == "multi_label" else "joy")
    assert online[1] == (["anger"] if task == "multi_label" else "anger")

    pd.DataFrame({"id": [1, 2, 3], "text": texts}).to_csv(tmp_path / "in.csv", index=False)
    assert (
        predict.main(
            [
                "--model",
                str(folder),
                "--input",
                str(tmp_path / "in.csv"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    batch = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert list(batch["id"]) == [1, 2, 3] and list(batch[key]) == online

    loaded = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"text": texts}))
    assert list(loaded[key]) == online
    assert [round(p, 6) for p in loaded["probability_joy"]] == [
        p["probabilities"]["joy"] for p in answer["predictions"]
    ]


# ------------------------------------------------------------------------------------------- the stand-in


def mltable(folder: Path, rows: list, extra_csv: bool = False) -> Path:
    csv = write_split(folder, "data", rows)
    (folder / "MLTable").write_text(MLTABLE.format(file=csv.name))
    if extra_csv:  # a CSV the MLTable does not list: AML's mltable never reads it
        write_split(folder, "stray", [("ignored text", "third")] * 60)
    return folder


def test_standin_reads_the_files_the_mltable_lists(tmp_path):
    table = automl_standin.read_mltable(mltable(tmp_path / "t", synthetic("single_label", 60, 0), extra_csv=True))
    assert len(table) == 60 and set(table["label"]) == set(WORDS)


@pytest.mark.parametrize(
    "task, train_rows, message",
    [
        ("text_classification", synthetic("single_label", 49, 0), "at least 50 training samples"),
        ("text_classification", [("same label", "joy")] * 60, "at least two unique labels"),
        (
            "text_classification_multilabel",
            [(t, f"['{label}']") for t, label in synthetic("single_label", 60, 0)],
            "multi-class task",
        ),
        ("text_classification_multilabel", [("a", "['joy']"), ("b", "joy,anger")] * 30, "mixes Python lists"),
        (
            "text_classification_multilabel",
            [("a", "[1, 'x']"), ("b", "['1', 'x']"), ("c", "[]")] * 20,
            "both as int and as str",
        ),
    ],
)
def test_standin_applies_automl_nlps_data_rules(tmp_path, task, train_rows, message):
    """Each documented check of "Set up AutoML to train an NLP model" fails the job before training."""
    valid = [(t, str(json.loads(json.dumps([label])))) for t, label in synthetic("single_label", 20, 1)]
    train = mltable(tmp_path / "train", train_rows)
    val = mltable(tmp_path / "val", valid if task.endswith("multilabel") else synthetic("single_label", 20, 1))
    with pytest.raises(automl_standin.AutomlDataError, match=message):
        automl_standin.train(train, val, "label", task, {"best_model": tmp_path / "model"})
    assert not (tmp_path / "model").exists()


def test_standin_writes_automl_s_mlflow_layout(tmp_path):
    import yaml

    folder = tmp_path / "model"
    automl_standin.train(
        mltable(tmp_path / "train", synthetic("single_label", 60, 0)),
        mltable(tmp_path / "val", synthetic("single_label", 20, 1)),
        "label",
        "text_classification",
        {"best_model": folder},
    )
    flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert (
        set(flavors) == {"python_function", "sklearn"}
        and flavors["python_function"]["loader_module"] == "mlflow.sklearn"
    )
    assert {"model.pkl", "conda.yaml", "requirements.txt", "STAND_IN.txt"} <= {p.name for p in folder.iterdir()}


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_predict_without_the_automl_runtime_says_so_in_one_line(automl_package, tmp_path, capsys):
    """On a machine without AutoML NLP's runtime the package cannot load; the user is told where it can."""
    import pickle
    import sys

    from finetune import predict

    _task, folder, _data = automl_package
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "absent_automl_runtime.py").write_text("class Wrapper:\n    pass\n")
    sys.path.insert(0, str(runtime))
    try:
        import absent_automl_runtime

        # A model.pkl whose class lives in a package this Python does not have, as AutoML's does here.
        (folder / "mlflow_model" / "model.pkl").write_bytes(pickle.dumps(absent_automl_runtime.Wrapper()))
    finally:
        sys.path.remove(str(runtime))
        del sys.modules["absent_automl_runtime"]
    (tmp_path / "in.csv").write_text("text\ngreat\n")
    assert (
        predict.main(
            [
                "--model",
                str(folder),
                "--input",
                str(tmp_path / "in.csv"),
                "--output",
                str(tmp_path / "out.csv"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No module named 'absent_automl_runtime'" in err
    assert f"it loads in the environment of {folder / 'mlflow_model' / 'conda.yaml'}" in err
