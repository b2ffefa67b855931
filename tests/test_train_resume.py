"""Preemption: a training killed with SIGKILL mid-run resumes from its newest complete checkpoint when started
again with the same output dir, never from a half-written one, and finishes in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.train.checkpoints import COMPLETE_MARKER, RESUME_FILE, mark_complete, newest_complete_checkpoint
from finetune.train.command_line import main


def test_newest_complete_checkpoint_skips_and_deletes_incomplete_ones(tmp_path):
    def folder(step, marked=True, state=True):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if state:
            (path / "trainer_state.json").write_text("{}")
        if marked:
            mark_complete(path, step)
        return path

    folder(5)
    newest = folder(20)
    folder(100, marked=False)  # killed while writing
    folder(200, state=False)  # a marker without the Trainer's state cannot be resumed
    (tmp_path / "checkpoint-latest").mkdir()  # not a Trainer folder: left alone
    assert newest_complete_checkpoint(tmp_path, delete_incomplete=False) == newest
    assert (tmp_path / "checkpoint-100").exists()
    assert newest_complete_checkpoint(tmp_path) == newest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-5", "checkpoint-latest"]
    assert json.loads((newest / COMPLETE_MARKER).read_text())["step"] == 20
    assert newest_complete_checkpoint(tmp_path / "missing") is None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from finetune.config.schema import DatasetConfig
    from finetune.data import prepare

    dataset = DatasetConfig(
        source="bundled",
        text_column="review_body",
        rating_column="star_rating",
        positive_min_rating=4,
        negative_max_rating=2,
        sample=200,
    )
    return prepare(dataset, tmp_path_factory.mktemp("resume-data")).directory


@pytest.mark.slow  # a real training, killed and resumed
def test_killed_run_resumes_from_newest_complete_checkpoint(tmp_path, tiny_model_dir, data_dir, capfd):
    out = tmp_path / "out"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "--train-file",
        str(data_dir / "train.csv"),
        "--val-file",
        str(data_dir / "val.csv"),
        "--labels-file",
        str(data_dir / "labels.json"),
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--evals-per-epoch",
        "2",
        "--checkpoint-every-steps",
        "4",
        "--num-threads",
        "1",
        "--logging-steps",
        "5",
        "--telemetry-interval-s",
        "0.5",
        "--tracking-uri",
        tracking,
        "--progress",
        "false",
    ]
    checkpoints = out / "checkpoints"

    # The run to be preempted is a real process, killed without warning once a checkpoint is complete.
    first = subprocess.Popen(
        [sys.executable, "-m", "finetune.train", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if any((folder / COMPLETE_MARKER).exists() for folder in checkpoints.glob("checkpoint-*")):
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read()[-3000:]
    assert not (out / "result.json").exists()
    run_id = json.loads((checkpoints / RESUME_FILE).read_text())["mlflow_run_id"]
    resume_step = max(
        int(f.name.split("-")[1]) for f in checkpoints.glob("checkpoint-*") if (f / COMPLETE_MARKER).exists()
    )
    half_written = checkpoints / "checkpoint-999"
    half_written.mkdir()
    (half_written / "trainer_state.json").write_text("{not json")

    # The restart (in this process, to save a second interpreter start) is the same command.
    capfd.readouterr()
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert f"resuming from {checkpoints / f'checkpoint-{resume_step}'}" in err
    assert "checkpoint-999" not in err
    result = json.loads((out / "result.json").read_text())
    train_rows = sum(1 for _ in open(data_dir / "train.csv")) - 1
    assert result["status"] == "completed"
    assert result["steps"] == -(-train_rows // 8)
    assert result["runtime"]["resumed_from"].endswith(f"checkpoint-{resume_step}")
    assert result["evaluations"] and all(e["step"] > resume_step for e in result["evaluations"])
    assert result["mlflow_run_id"] == run_id
    assert result["throughput"]["train_samples_per_s"] > 0 and "host_memory_peak_gib" in result["throughput"]
    assert not checkpoints.exists() and (out / "model" / "candidate.json").exists()

    import mlflow

    metrics = mlflow.MlflowClient(tracking).get_run(run_id).data.metrics
    assert "val_auc_weighted" in metrics and "resources/host/memory_used_GiB/mean" in metrics
