"""Shared fixtures: a tiny random BERT saved to disk (seconds, no download) and an offline environment."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Set before any test imports torch/mlflow/HF: no telemetry, no hub access, one thread per process
# (two threads collapse when the other core is busy).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Budget calibrations the tests take (under the load of the tests themselves, in subprocesses too) go to a cache
# of this test process, not the user's: a user's next run would otherwise plan from a contended measurement.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="finetune-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

REPO = Path(__file__).resolve().parent.parent


def build_tiny_bert(folder: Path, texts: list[str]) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary of the words in `texts`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words[:3000]
    folder.mkdir(parents=True, exist_ok=True)
    # The vocabulary as a mapping: transformers 5 ignores `vocab_file=` here and would map every word to [UNK],
    # leaving tiny-model tests a model that can learn only from text length.
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids(vocab[-1]) == len(vocab) - 1
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_arguments(data: Path, model, out: Path, *extra: str) -> list:
    """`python -m finetune.train` flags for a prepared data folder: one thread, no progress bars."""
    return [
        "--train-file",
        str(data / "train.csv"),
        "--val-file",
        str(data / "val.csv"),
        "--labels-file",
        str(data / "labels.json"),
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--num-threads",
        "1",
        "--progress",
        "false",
        *extra,
    ]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_mlflow_run_left_open():
    """A test whose tracking store "fails" can leave MLflow's active run open in this process; every later
    in-process training would then find a run already active and train untracked. Close it after each test."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run()


# What a plan's budget is fitted from in tests that are not about budgets (tests/test_budget.py calibrates for
# real): a measurement of a fast machine, so plans keep their sweeps and nothing spends 10-40 s timing steps.
FIXED_CALIBRATION = {
    "train_example_s": 0.01,
    "eval_example_s": 0.005,
    "load_s": 5.0,
    "threads": 1,
    "thread_exponent": 0.9,
    "device": "cpu",
    "rows": {"train": 1000, "val": 100},
    "measured": "fixed (tests/conftest.py)",
    "load_average": 0.0,
}


@pytest.fixture(autouse=True)
def _fixed_calibration(request):
    """In-process plans calibrate from :data:`FIXED_CALIBRATION` on an idle machine (subprocess runs still
    measure). Its own
    MonkeyPatch: taking the `monkeypatch` fixture here would set that up before `_no_mlflow_run_left_open` and undo
    a test's patches of mlflow only after that cleanup had called them."""
    if request.module.__name__ == "test_budget":
        yield
        return
    from finetune.plan import calibration
    from finetune.system import cpu

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "calibrate", lambda plan, busy_now: (dict(FIXED_CALIBRATION), 0.0))
        # An idle machine, whatever the other test worker is doing: plans come out the same on every run.
        patch.setattr(cpu, "busy_cores_now", lambda: 0.0)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import csv

    bundled = REPO / "finetune" / "data_files" / "automotive_reviews.csv"
    with open(bundled, newline="", encoding="utf-8") as handle:
        texts = [row["review_body"] for row in csv.DictReader(handle)]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), texts)
