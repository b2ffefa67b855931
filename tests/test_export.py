"""The serving runtimes: the export stage (ONNX, ONNX int8), score.py under each runtime, the plan's choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.cli.main import compose
from finetune.errors import ConfigProblems
from finetune.plan.build import build_plan
from finetune.serve.export import export_candidate
from test_serve_score import load_score
from test_serve_support import LABELS, TEXTS, make_hf_candidate, score_alone


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """The tiny classifier fitted to TEXTS: confident, varied predictions a broken runtime cannot match by chance."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = make_hf_candidate(tiny_model_dir, tmp_path_factory.mktemp("trained") / "model")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch, labels=torch.tensor([1, 0, 1, 0, 1, 0])).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    info = json.loads((folder / "candidate.json").read_text())
    (folder / "candidate.json").write_text(json.dumps({**info, "max_length": 64}))
    return folder


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    return {runtime: export_candidate(trained, runtime, root / runtime) for runtime in ("onnx", "onnx-int8")}


@pytest.mark.slow  # a tiny fine-tune exported to ONNX (module fixture)
def test_export_carries_only_what_the_runtime_needs(trained, exported):
    assert export_candidate(trained, "torch", trained.parent / "unused") == trained
    for runtime, folder in exported.items():
        info = json.loads((folder / "candidate.json").read_text())
        assert info["runtime"] == runtime and info["labels"] == LABELS and info["max_length"] == 64
        assert (folder / info["onnx_file"]).is_file()
        names = {path.name for path in folder.iterdir()}
        # No PyTorch weights, and the fp32 graph does not linger beside the int8 one.
        assert not any(name.endswith((".safetensors", ".bin")) for name in names), names
        assert {"config.json", "tokenizer_config.json"} <= names
        assert [name for name in names if name.endswith(".onnx")] == [info["onnx_file"]]
        assert not any(name.endswith(".partial") for name in names)
    size = {
        runtime: (folder / json.loads((folder / "candidate.json").read_text())["onnx_file"]).stat().st_size
        for runtime, folder in exported.items()
    }
    assert size["onnx-int8"] < size["onnx"] / 2


@pytest.mark.slow  # a tiny fine-tune exported to ONNX (module fixture)
def test_each_runtime_gives_the_probabilities_and_labels_of_torch(monkeypatch, trained, exported):
    texts = TEXTS * 6  # several forward chunks of different lengths
    request = json.dumps({"data": [{"text": text} for text in texts]})
    reference = load_score(monkeypatch, trained, FINETUNE_MAX_BATCH="4")
    torch_proba = reference._scorer.predict_proba(texts)
    assert reference._scorer.runtime == "torch"
    # The head makes confident, varied predictions: a broken runtime could not match them by chance.
    assert torch_proba.max() > 0.9 and len(set(reference.decided_labels(torch_proba, LABELS, None))) == 2
    # On this tiny overfit model int8's error reaches 0.08 (mean 0.035; transformers 5.25, onnxruntime 1.23-1.32),
    # largest where the sigmoid is steepest; so int8 is held to bounds with that headroom and to torch's
    # decisions wherever torch is not on the fence. Its quality on a real model is bench_score.py's to measure.
    confident = np.abs(torch_proba[:, 1] - 0.5) > 0.2
    for runtime, max_error, mean_error in (("onnx", 1e-4, 1e-4), ("onnx-int8", 0.12, 0.05)):
        score = load_score(monkeypatch, exported[runtime], FINETUNE_MAX_BATCH="4")
        assert score._scorer.runtime == runtime
        proba = score._scorer.predict_proba(texts)
        error = np.abs(proba - torch_proba)
        assert error.max() < max_error and error.mean() < mean_error, (runtime, error.max(), error.mean())
        assert (proba.argmax(axis=1) == torch_proba.argmax(axis=1))[confident].all(), runtime
        body = score.run(request)
        # run() applies the one decision rule to this runtime's probabilities.
        assert [p["label"] for p in body["predictions"]] == score.decided_labels(proba, LABELS, None)
        if runtime == "onnx":
            assert score.decided_labels(proba, LABELS, None) == reference.decided_labels(torch_proba, LABELS, None)


@pytest.mark.slow  # a tiny fine-tune exported to ONNX (module fixture)
def test_onnx_runtime_serves_without_torch(exported):
    """The ONNX deployment's environment has no PyTorch: score.py must not need it."""
    assert score_alone(exported["onnx-int8"], "torch")["predictions"][0]["label"] in LABELS


@pytest.mark.slow  # a tiny fine-tune exported to ONNX (module fixture)
def test_a_candidate_missing_its_onnx_file_fails_at_init(monkeypatch, exported, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported["onnx"], broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="runtime onnx but its ONNX file 'model.onnx'"):
        load_score(monkeypatch, broken)


def test_the_runtime_is_chosen_per_deployment_in_the_plan(tmp_path):
    from finetune.serve import export, score

    assert export.RUNTIMES == score.RUNTIMES

    def plan(*overrides):
        overrides = [*overrides, f"output_root={tmp_path}", "dry_run=true"]
        return build_plan(compose(overrides, {}), overrides, "runtime")

    assert "export" not in plan().stages and plan().endpoint.runtime == "torch"
    stages = plan("endpoint.runtime=onnx-int8", "search=none").stages
    assert stages[:3] == ["data", "train", "export"]
    with pytest.raises(ConfigProblems, match="endpoint.runtime=tensorrt: unknown; use one of torch, onnx, onnx-int8"):
        plan("endpoint.runtime=tensorrt")
