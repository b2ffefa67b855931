"""Live progress on stderr: one bar per training (steps, rate, ETA) and one line for a sweep.

A training shows its own bar when it runs in the foreground; a sweep trial runs in a subprocess whose output
goes to its log, so it writes its progress to a small JSON file instead (``--progress-file``) and the sweep
draws one bar per running trial from those files, under a sweep line with trials done / running / stopped
and an ETA. Bars redraw at most once a second on a terminal and once every 30 s into a log file (where the
trials' steps join the sweep line instead of bars of their own), so logs keep a trace without a flood.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

from finetune.selection.metrics import unprefixed
from finetune.system.files import write_json_atomic


def _min_interval() -> float:
    return 1.0 if sys.stderr.isatty() else 30.0


def bar(total: Optional[float], description: str, position: int = 0, unit: str = "step", **kwargs):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        position=position,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=_min_interval(),
        leave=position == 0,
        **kwargs,
    )


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def training_callback(show_bar: bool, progress_file: Optional[str], primary_metric: str):
    """A Trainer callback for the bar and/or the progress file (HF's own bar and log printer are removed)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.written = 0.0
            self.postfix: dict = {}
            self.started = time.time()

        def on_train_begin(self, args, state, control, **kwargs):
            if show_bar:
                self.bar = bar(state.max_steps, "train", initial=state.global_step)
            self._write(state, force=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
            self._write(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.postfix["loss"] = f"{logs['loss']:.4f}"
                self._show()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get("eval_" + unprefixed(primary_metric))
            if isinstance(value, (int, float)):
                self.postfix[primary_metric] = f"{value:.4f}"
                self._show()
            self._write(state, force=True)

        def on_train_end(self, args, state, control, **kwargs):
            self._write(state, force=True)
            if self.bar is not None:
                self.bar.close()

        def _show(self) -> None:
            if self.bar is not None:
                self.bar.set_postfix(self.postfix, refresh=False)

        def _write(self, state, force: bool = False) -> None:
            if not progress_file or not force and time.time() - self.written < 1.0:
                return
            self.written = time.time()
            record = {
                "step": state.global_step,
                "total": state.max_steps,
                "started": self.started,
                "updated": self.written,
                **self.postfix,
            }
            write_json_atomic(progress_file, record)

    return TrainingProgress()


def read_progress(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


class SweepProgress:
    """The sweep line (trials done / running / stopped, best value, ETA) and one bar per running trial."""

    def __init__(self, total: int, done: int, concurrency: int, metric: str):
        self.total, self.concurrency, self.metric = total, max(1, concurrency), metric
        self.line = bar(
            total,
            "sweep",
            unit="trial",
            initial=done,
            bar_format="{desc}: {n_fmt}/{total_fmt} trials |{bar}| {postfix}",
        )
        self.trial_bars: dict = {}
        self.durations: list = []
        self.counts = {"completed": 0, "early_terminated": 0, "failed": 0}
        self.best: Optional[float] = None
        self.refreshed = 0.0

    def update(self, running: dict) -> None:
        """`running`: trial number -> (progress file, started time). Redraws trial bars and the ETA."""
        estimates, totals, steps = [], [], []
        for position, (number, (path, started)) in enumerate(sorted(running.items()), start=1):
            record = read_progress(path)
            if record.get("total"):
                steps.append(f"t{number} {record.get('step', 0)}/{record['total']}")
            trial_bar = self.trial_bars.get(number)
            if trial_bar is None and record.get("total") and sys.stderr.isatty():
                trial_bar = self.trial_bars[number] = bar(record["total"], f"trial {number}", position=position)
            if trial_bar is not None:
                trial_bar.update(record.get("step", 0) - trial_bar.n)
                shown = {k: v for k, v in record.items() if k in ("loss", self.metric)}
                if shown:
                    trial_bar.set_postfix(shown, refresh=False)
            elapsed = time.time() - started
            fraction = record.get("step", 0) / record["total"] if record.get("total") else 0.0
            estimates.append(elapsed / fraction - elapsed if fraction > 0.02 else None)
            if fraction > 0.02:
                totals.append(elapsed / fraction)
        # Until a trial completes, the running trials' projected durations stand in for a typical one.
        known = self.durations or totals
        typical = sum(known) / len(known) if known else None
        # A budgeted sweep starts more trials than it planned when the planned ones leave time: none then waits.
        waiting = max(0, self.total - self.line.n - len(running))
        left = [e if e is not None else typical for e in estimates]
        eta = None
        if all(e is not None for e in left) and (typical is not None or waiting == 0):
            eta = (max(left, default=0.0)) + (waiting * typical / self.concurrency if waiting else 0.0)
        stopped = self.counts["early_terminated"]
        best = f", best {self.best:.4f}" if self.best is not None else ""
        refresh = time.time() - self.refreshed >= _min_interval()
        self.refreshed = time.time() if refresh else self.refreshed
        # Into a log there are no per-trial bars (their cursor moves would be noise): steps go on this line.
        running_text = f" ({', '.join(steps)})" if steps and not sys.stderr.isatty() else ""
        self.line.set_postfix_str(
            f"running {len(running)}{running_text}, stopped early {stopped}, "
            f"failed {self.counts['failed']}{best}, ETA {format_seconds(eta)}",
            refresh=refresh,
        )

    def finished(self, number: int, status: str, value: Optional[float], duration_s: float, goal: str) -> None:
        trial_bar = self.trial_bars.pop(number, None)
        if trial_bar is not None:
            trial_bar.close()
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "completed":
            self.durations.append(duration_s)
        if value is not None and status != "failed":
            better = self.best is None or (value > self.best if goal == "maximize" else value < self.best)
            self.best = value if better else self.best
        self.line.update(1)

    def write(self, line: str) -> None:
        """A line on stdout that does not tear the bars."""
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        for trial_bar in self.trial_bars.values():
            trial_bar.close()
        self.line.close()
