"""Child processes that die with the process that started them.

A pipeline killed at any moment, SIGKILL included, must leave no training or serving process behind: an
orphaned ``python -m finetune.train`` kept writing checkpoints that the next run resumed from, then deleted
them under it. Each child gets its own process group (so the whole tree can be signalled) and, on Linux,
``PR_SET_PDEATHSIG`` (prctl(2)): the kernel sends it SIGKILL when its parent dies, however the parent died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    """A port free on loopback now, for a child to listen on: a model server, or the rendezvous of a
    multi-GPU training (two concurrent sweep trials must not share one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child leads its own process group and is killed when ``parent_pid`` dies.

    libc is loaded here, in the parent: between fork and exec the child may only make plain calls (another
    thread of the parent could hold the import lock the fork copied).
    """
    libc = None
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        os.setpgid(0, 0)
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return setup


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child's process group (the child and whatever it started) and reap the child."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start(command: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """Start ``command`` as a child that dies with this process, in its own process group."""
    return subprocess.Popen(list(command), preexec_fn=die_with_parent(os.getpid()), **popen_kwargs)


def run(command: Sequence[str], **popen_kwargs) -> int:
    """Run ``command`` to completion as a child that dies with this process; its exit code.

    Ctrl-C, SIGTERM (turned into KeyboardInterrupt by the CLI) or any error while waiting kills its process
    group before the exception goes on, so the child never outlives a failed wait either.
    """
    process = start(command, **popen_kwargs)
    try:
        return process.wait()
    except BaseException:
        kill_group(process)
        raise


def interrupt_on_signals() -> None:
    """SIGTERM as Ctrl-C: ``finally`` blocks and context managers clean up (stop servers, kill children).

    SIGINT is taken back too: a shell starting a command in the background without job control sets it to
    "ignore", which the command inherits, and these commands promise that Ctrl-C (or kill -INT) stops them.
    """

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def started_at() -> float:
    """When this process started (epoch seconds), from Linux's /proc; now where there is no /proc. A run's
    budget counts from here: interpreter start, imports and planning are part of what the user waits for."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()
