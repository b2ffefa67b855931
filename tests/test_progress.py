"""The sweep line: trials done / running / stopped, the best value so far and an ETA from the trials' progress."""

from __future__ import annotations

import json
import time

from finetune.train.progress import SweepProgress, format_seconds


def write_progress(path, step: int, total: int) -> None:
    path.write_text(json.dumps({"step": step, "total": total}))


def test_the_sweep_line_estimates_the_time_left_from_running_and_finished_trials(tmp_path, capsys):
    progress = SweepProgress(total=4, done=0, concurrency=1, metric="val_auc_weighted")
    write_progress(tmp_path / "t0.json", 5, 10)
    # Half of trial 0 took 60 s: 60 s more for it, then 3 trials of about 120 s one at a time.
    progress.update({0: (tmp_path / "t0.json", time.time() - 60)})
    line = progress.line.postfix
    assert "running 1 (t0 5/10)" in line and "stopped early 0" in line
    assert "ETA 7m" in line or "ETA 6m5" in line

    progress.finished(0, "completed", 0.93, 100.0, "maximize")
    progress.finished(1, "early_terminated", 0.71, 20.0, "maximize")
    write_progress(tmp_path / "t2.json", 1, 10)
    progress.update({2: (tmp_path / "t2.json", time.time() - 5)})
    line = progress.line.postfix
    assert progress.line.n == 2 and "stopped early 1" in line and "best 0.9300" in line
    assert "ETA 2m2" in line  # trial 2: ~45 s left, then one more at the 100 s a completed trial took
    progress.close()
    assert "sweep" in capsys.readouterr().err


def test_seconds_read_as_minutes_or_hours():
    assert (format_seconds(75), format_seconds(3 * 3600 + 120), format_seconds(None)) == ("1m15s", "3h02m", "?")


def test_trials_beyond_the_planned_count_leave_the_eta_to_the_running_ones(tmp_path):
    progress = SweepProgress(total=2, done=0, concurrency=2, metric="val_auc_weighted")
    progress.finished(0, "completed", 0.97, 200.0, "maximize")
    progress.finished(1, "completed", 0.96, 200.0, "maximize")
    write_progress(tmp_path / "t2.json", 5, 10)  # a third trial in the time the two planned ones left
    progress.update({2: (tmp_path / "t2.json", time.time() - 60)})
    assert "ETA 1m00s" in progress.line.postfix or "ETA 0m59s" in progress.line.postfix
    progress.close()
