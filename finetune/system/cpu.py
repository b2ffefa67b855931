"""How many cores other processes keep busy, measured from CPU time rather than the load average.

The 1-minute load average lags: right after a run it still says "busy" for a minute on an idle machine, and it
counts this process too. CPU seconds of the whole machine less this process's own, over a window, say what the
others took in that window (children included: a spawned trial is another process).
"""

from __future__ import annotations

import os
import time

# Other processes' use, in cores, from which a core counts as taken.
CONTENDED_CORES = 0.5


def cores() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_marks() -> tuple:
    """(wall clock, CPU seconds of every process, CPU seconds of this one) to measure a window by."""
    # Imported here: AML's step environments have no psutil, and they import modules that import this one.
    import psutil

    system, own = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = system.user + system.system + sum(getattr(system, f, 0.0) for f in ("nice", "irq", "softirq", "steal"))
    return time.perf_counter(), busy, own.user + own.system


def others_busy_cores(since: tuple) -> float:
    """Cores other processes kept busy on average since ``since`` (:func:`cpu_marks`)."""
    now = cpu_marks()
    wall = max(now[0] - since[0], 1e-9)
    return max(0.0, ((now[1] - since[1]) - (now[2] - since[2])) / wall)


def busy_cores_now(window_s: float = 0.5) -> float:
    """Cores other processes keep busy now: this process sleeps through a short window and counts."""
    since = cpu_marks()
    time.sleep(window_s)
    return others_busy_cores(since)
