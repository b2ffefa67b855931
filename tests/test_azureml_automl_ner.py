"""AML AutoML's ``text_ner`` model in the pipeline (issue 27): the AutoML test step scores it on the test split with
the entity metric every NER candidate gets, packages it, and the package serves the NER contract; the emulator's
stand-in reads the CoNLL MLTables, applies AutoML NER's data rules and answers as AutoML's NER ModelWrapper does."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from amlemu import automl_standin
from amlemu.scenarios import export_tree

MLTABLE = "paths:\n  - file: ./{file}\n"


@pytest.fixture(scope="module")
def ner_tree(tmp_path_factory, tiny_model_dir):
    """The exported AML tree of the bundled WNUT17 sample with AutoML on: its CoNLL MLTables and prepared splits."""
    return export_tree(
        [
            "dataset=wnut17_sample",
            f"model.path={tiny_model_dir}",
            "model=bert-base-cased",
            "search=none",
            "compute=t4",
            "compute.device=cpu",
            "compute.precision=fp32",
            "automl=text_classification",
        ],
        tmp_path_factory.mktemp("ner-tree"),
    )


@pytest.fixture(scope="module")
def tested(ner_tree, tmp_path_factory):
    """AutoML's (stand-in) best model trained on the tree's MLTables, then the AutoML test step on it."""
    from finetune.launch.azureml.runtime import steps

    work = tmp_path_factory.mktemp("ner-automl")
    automl_standin.train(
        ner_tree / "mltable" / "train", ner_tree / "mltable" / "val", "label", "text_ner", {"best_model": work / "best"}
    )
    prepared = ner_tree / "prepared"
    result = steps.test_automl(
        str(work / "best"),
        str(prepared / "test.jsonl"),
        str(prepared / "val.jsonl"),
        str(prepared / "labels.json"),
        str(ner_tree / "settings.json"),
        str(work / "tested"),
        task="ner",
    )
    return result, work / "tested", prepared


def conll_sentences(text: str) -> list:
    return [[line.split(" ") for line in block.split("\n")] for block in text.strip("\n").split("\n\n")]


@pytest.mark.slow  # exports a NER AML tree and runs the AutoML test step (module fixture)
def test_the_test_step_scores_automl_ner_by_strict_entity_f1(tested, ner_tree):
    """The step's test F1 is seqeval's strict IOB2 F1 of the stand-in's own tags (most frequent train tag per word,
    an I- that opens nothing made a B-), computed here without the project's code."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    result, out, prepared = tested
    counts = defaultdict(Counter)
    for sentence in conll_sentences((ner_tree / "mltable" / "train" / "train.txt").read_text()):
        for token, tag in sentence:
            counts[token.lower()][tag] += 1
    gold, predicted = [], []
    for line in (prepared / "test.jsonl").read_text().splitlines():
        sentence = json.loads(line)
        tags, previous = [], "O"
        for token in sentence["tokens"]:
            tag = counts[token.lower()].most_common(1)[0][0] if token.lower() in counts else "O"
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
            tags.append(tag)
            previous = tag
        gold.append(sentence["tags"])
        predicted.append(tags)
    expected = f1_score(gold, predicted, mode="strict", scheme=IOB2)
    assert expected > 0  # the stand-in finds some entities of the sample: the comparison means something
    assert result["test"]["f1_entity"] == pytest.approx(expected)
    assert result["task"] == "ner" and result["rows"] == len(gold) and result["decision"] == {"rule": "argmax_iob2"}
    assert {"f1.person", "precision_entity", "recall_entity"} <= set(result["test"])
    assert json.loads((out / "result.json").read_text())["test"] == result["test"]
    candidate = json.loads((out / "model" / "candidate.json").read_text())
    assert (
        candidate["family"] == "automl" and candidate["task"] == "ner" and candidate["mlflow_model"] == "mlflow_model"
    )
    assert (out / "model" / "mlflow_model" / "MLmodel").is_file()


@pytest.mark.slow  # exports a NER AML tree and runs the AutoML test step (module fixture)
def test_a_registered_automl_ner_package_serves_the_ner_contract(tested, monkeypatch, tmp_path):
    """The package as the register step stages it answers entities at character offsets from its score.py (the NER
    entry script), the same as mlflow.pyfunc, and re-scores on test as the step scored it."""
    import mlflow.pyfunc
    import pandas as pd
    import yaml

    from finetune.registry.model_registry import stage_artifact
    from finetune.serve.entry_scripts import NER_SCORE_SCRIPT
    from finetune.tasks.ner import NER_TASK

    result, out, prepared = tested
    sample = {"data": [{"text": "I saw Taylor Swift in London"}]}
    folder = stage_artifact(out / "model", sample, tmp_path / "registered", conda={"unused": True})

    monkeypatch.setenv("AZUREML_MODEL_DIR", str(folder))
    spec = importlib.util.spec_from_file_location("score_automl_ner_package", folder / "score.py")
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    texts = ["London is rainy , says Taylor", "@paulwalk loves the Empire State Building !"]
    answer = score.run(json.dumps({"data": [{"text": text} for text in texts]}))
    entities = [prediction["entities"] for prediction in answer["predictions"]]
    assert any(entities), "the stand-in knows these train words: something must be tagged"
    for text, found in zip(texts, entities):
        for entity in found:
            assert text[entity["start"] : entity["end"]] == entity["text"] and not entity["label"].startswith("B-")
    tokens = score.run(json.dumps({"data": [{"tokens": ["London", "is", "rainy"]}]}))["predictions"][0]
    assert len(tokens["tags"]) == 3 and len(tokens["scores"]) == 3

    loaded = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"text": texts}))
    assert [json.loads(cell) for cell in loaded["entities"]] == entities
    # Its pyfunc loader module is NER's own: Python caches loader modules by name, and a process that loaded an NER
    # version under the classifiers' name (finetune_score) answered the next classifier version with NER's code.
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "finetune_ner_score"
    assert (folder / "code" / "finetune_ner_score.py").read_text() == NER_SCORE_SCRIPT.read_text()

    rescored = NER_TASK.evaluate(
        {"automl": folder}, prepared / "test.jsonl", json.loads((prepared / "labels.json").read_text())
    )
    assert rescored["automl"]["test"] == result["test"]


@pytest.mark.slow  # exports a NER AML tree (module fixture)
def test_the_ner_deployment_code_is_the_ner_entry_script(ner_tree):
    """The exported deployment's score.py is the NER entry script: the classifiers' would refuse a tagger."""
    from finetune.serve.entry_scripts import NER_SCORE_SCRIPT

    assert (ner_tree / "score" / "score.py").read_text() == NER_SCORE_SCRIPT.read_text()


# ------------------------------------------------------------------------------------------- the stand-in


def conll_table(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text(text, encoding="utf-8")
    (folder / "MLTable").write_text(MLTABLE.format(file="data.txt"))
    return folder


GOOD = "Peter B-person\nsings O\n\n"


@pytest.mark.parametrize(
    "train_text, message",
    [
        (GOOD * 49, "at least 50 training samples"),
        ("\n" + GOOD * 60, "starts with an empty line"),
        (GOOD * 60 + "\n", "exactly one empty line"),
        ("Peter  B-person\nsings O\n\n" + GOOD * 60, "one space"),
        ("Peter B-person \nsings O\n\n" + GOOD * 60, "one space"),
        ("Peter PER\nsings O\n\n" + GOOD * 60, "starts with I- or B-"),
        ("Peter b-person\nsings O\n\n" + GOOD * 60, "starts with I- or B-"),
        (GOOD.replace("\n\n", "\n\n\n") + GOOD * 60, "more than one empty line"),
    ],
)
def test_standin_applies_automl_ner_data_rules(tmp_path, train_text, message):
    """Each documented NER check of "Set up AutoML to train an NLP model" fails the job before training."""
    train = conll_table(tmp_path / "train", train_text)
    valid = conll_table(tmp_path / "val", GOOD * 5)
    with pytest.raises(automl_standin.AutomlDataError, match=message):
        automl_standin.train(train, valid, "label", "text_ner", {"best_model": tmp_path / "model"})
    assert not (tmp_path / "model").exists()


def test_standin_ner_model_answers_as_automl_s_ner_model_wrapper(tmp_path):
    """predict_proba(CoNLL without labels) -> 'token TAG probability' lines; predict drops the probabilities."""
    import mlflow.sklearn
    import numpy as np

    automl_standin.train(
        conll_table(tmp_path / "train", GOOD * 60),
        conll_table(tmp_path / "val", GOOD * 5),
        "label",
        "text_ner",
        {"best_model": tmp_path / "model"},
    )
    model = mlflow.sklearn.load_model(str(tmp_path / "model"))
    assert model.predict_proba("Peter\nsings\n\nPaul") == "Peter B-person 1.000\nsings O 1.000\n\nPaul O 1.000"
    assert model.predict(np.array(["Peter\nsings"])) == ["Peter B-person\nsings O"]
