"""Killing the pipeline: no process it started survives, whatever the signal, and the local endpoint's state
stays consistent; a training output dir belongs to one training process at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from finetune.system import locks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def start_pipeline(tmp_path: Path, model_dir: Path, *overrides: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "finetune",
        "search=none",
        "automl=none",
        "endpoint=local",
        f"model.path={model_dir}",
        "dataset.sample=100",
        "model.max_length=16",
        "model.epochs=1",
        "compute.num_threads=1",
        f"output_root={tmp_path}",
        "run_name=k",
        *overrides,
    ]
    log = open(tmp_path / "pipeline.log", "ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path)


def descendants_once(pipeline: subprocess.Popen, marker: str, tmp_path: Path, timeout: float = 600):
    """Every descendant of the pipeline, as soon as one of them runs ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert pipeline.poll() is None, (tmp_path / "pipeline.log").read_text()[-3000:]
        found = []
        for child in psutil.Process(pipeline.pid).children(recursive=True):
            try:
                found.append((child, " ".join(child.cmdline())))
            except psutil.Error:
                pass
        if any(marker in command for _, command in found):
            return [child for child, _ in found]
        time.sleep(0.1)
    raise AssertionError(f"no {marker} process within {timeout} s")


def assert_all_gone(processes, timeout: float = 20) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    survivors = []
    for process in alive:
        try:
            survivors.append(" ".join(process.cmdline()))
        except psutil.Error:
            pass
    for process in alive:
        process.kill()
    assert not survivors, f"survived the pipeline: {survivors}"


@pytest.mark.slow  # a pipeline into training, per signal
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_pipeline_while_training_kills_the_training(tmp_path, tiny_model_dir, signum):
    pipeline = start_pipeline(tmp_path, tiny_model_dir)
    children = descendants_once(pipeline, "finetune.train", tmp_path)
    pipeline.send_signal(signum)
    code = pipeline.wait(timeout=60)
    assert_all_gone(children)
    if signum == signal.SIGTERM:
        # Terminated like Ctrl-C: one line, exit code 130, the training stopped with it.
        assert code == 130 and "Resume with" in (tmp_path / "pipeline.log").read_text()
    # The next run owns the training dir again (the lock died with its holder).
    with locks.hold(tmp_path / "k" / "train" / ".train.lock", wait=False):
        pass


@pytest.mark.slow  # a pipeline up to its rollout
def test_killing_the_pipeline_during_the_rollout_leaks_nothing(tmp_path, tiny_model_dir):
    pipeline = start_pipeline(tmp_path, tiny_model_dir)
    children = descendants_once(pipeline, "finetune.serve.inference_server", tmp_path)
    pipeline.kill()
    pipeline.wait(timeout=60)
    assert_all_gone(children + [p for p in psutil.process_iter() if _started_from(p, tmp_path)])

    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.serve",
            "status",
            "--endpoint",
            "amazon-automotive-sentiment",
            "--endpoints-dir",
            str(tmp_path / "endpoints"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert "running" not in status.stdout.replace("router: stopped", ""), status.stdout
    state = json.loads((tmp_path / "endpoints" / "amazon-automotive-sentiment" / "state.json").read_text())
    assert state["starting"] == {} and state["router"] is None
    assert sum(state["traffic"].values()) in (0, 100) and set(state["traffic"]) <= set(state["deployments"])
    assert all(record["pid"] is None for record in state["deployments"].values())


def _started_from(process: psutil.Process, folder: Path) -> bool:
    try:
        return str(folder) in " ".join(process.cmdline()) and process.pid != os.getpid()
    except psutil.Error:
        return False


def test_a_second_training_into_the_same_output_dir_says_so_in_one_line(tmp_path):
    output_dir = tmp_path / "train"
    with locks.hold(output_dir / ".train.lock", owner="python -m finetune.train"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "finetune.train",
                "--train-file",
                "t.csv",
                "--val-file",
                "v.csv",
                "--labels-file",
                "l.json",
                "--model",
                "m",
                "--output-dir",
                str(output_dir),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"is in use by pid {os.getpid()} (python -m finetune.train)" in done.stderr


@pytest.mark.slow  # four MLflow processes
def test_four_processes_opening_a_new_store_at_once(tmp_path):
    """The crash of the issue (`table _alembic_tmp_tags already exists`) without a whole pipeline."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = f"from finetune.registry.model_registry import experiment_id; print(experiment_id({uri!r}, 'finetune'))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [err[-1500:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1, "one experiment, the same id for all"
