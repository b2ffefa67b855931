"""A command job's ``distribution`` as AML runs it: one process per rank, with AML's variables.

AML's PyTorch distribution (``distribution: {type: pytorch, process_count_per_instance: P}`` with
``resources.instance_count: N``) starts the job's command P times on each of N nodes and sets, per Microsoft's
"Distributed GPU training guide (SDK v2)" (https://learn.microsoft.com/azure/machine-learning/how-to-train-distributed-gpu,
section PyTorch): "Azure Machine Learning sets the MASTER_ADDR, MASTER_PORT, WORLD_SIZE, and NODE_RANK environment
variables on each node, and sets the process-level RANK and LOCAL_RANK environment variables", so that
``torch.distributed.init_process_group(init_method="env://")`` (what the HF Trainer / accelerate call) forms one
group. WORLD_SIZE is the number of processes of the whole job (N x P), RANK the global index, LOCAL_RANK the
index on its node. Each process writes its own log (AML's ``user_logs/std_log_process_<rank>.txt``).

Here every "node" is this machine (MASTER_ADDR 127.0.0.1, one free port); on CPU, PyTorch picks the gloo backend.
The job fails as soon as one process fails (AML cancels the others), and succeeds when all exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import List, Optional


def layout(job: dict) -> tuple:
    """``(instance_count, processes per instance)`` of a YAML command job (1, 1 without a distribution)."""
    resources = job.get("resources") or {}
    instances = int(resources.get("instance_count") or job.get("instance_count") or 1)
    spec = job.get("distribution") or {}
    if str(spec.get("type", "")).lower() != "pytorch":
        return instances, 1
    return instances, int(spec.get("process_count_per_instance") or 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ranks:
    """The job's processes, seen as one (``poll``/``wait``/``returncode`` like a Popen)."""

    def __init__(self, processes: List[subprocess.Popen], logs: list):
        self.processes = processes
        self.logs = logs
        self.returncode: Optional[int] = None
        self.pid = processes[0].pid

    def poll(self) -> Optional[int]:
        codes = [process.poll() for process in self.processes]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            self.cancel()
            self.returncode = failed[0]
        elif all(code == 0 for code in codes):
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        import time

        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired("ranks", timeout)
            time.sleep(0.5)
        return self.returncode

    def cancel(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close_logs(self) -> None:
        for log in self.logs:
            log.close()


def launch(command: str, cwd: Path, env: dict, job_dir: Path, instances: int, per_instance: int) -> Ranks:
    """Start the command once per rank; rank 0's log is the job's ``std_log.txt``."""
    world = instances * per_instance
    port = free_port()
    processes, logs = [], []
    for rank in range(world):
        variables = dict(
            env,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            NODE_RANK=str(rank // per_instance),
            RANK=str(rank),
            LOCAL_RANK=str(rank % per_instance),
        )
        name = "std_log.txt" if rank == 0 else f"std_log_process_{rank:02d}.txt"
        log = open(job_dir / name, "w", encoding="utf-8")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                ["/bin/bash", "-c", command],
                cwd=cwd,
                env=variables,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return Ranks(processes, logs)
