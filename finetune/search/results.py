"""What a sweep's finished trials add up to: one record per trial (status, curve, best value, cost), the best
trial (a completed one first, early-terminated only when none completed), ``sweep.json`` and the text tables
the runner prints as trials end and once at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import List, Optional

from finetune.plan.results import BestTrial, SweepResult, SweepTrial, TrainingResult
from finetune.plan.run_plan import RunPlan
from finetune.search.pruners import curve, replaced

STATUS = {"COMPLETE": "completed", "PRUNED": "early_terminated", "FAIL": "failed"}


def trial_record(trial, goal: str) -> dict:
    status = STATUS[trial.state.name]
    values = [v if math.isfinite(v) else None for v in curve(trial)]
    finite = [v for v in values if v is not None]
    if trial.value is not None:
        best = trial.value
    else:
        best = (max if goal == "maximize" else min)(finite) if finite else None
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "params": attrs.get("params", {}),
        "status": status,
        "best_value": best,
        "values": values,
        "epochs_run": attrs.get("epochs_run"),
        "steps": attrs.get("steps"),
        "duration_s": attrs.get("duration_s"),
        "stopped_at_interval": attrs.get("stopped_at_interval", len(values)) if status == "early_terminated" else None,
        "reason": attrs.get("reason"),
        "model_dir": attrs.get("model_dir"),
        "result_file": attrs.get("result_file"),
        "ended_s": attrs.get("ended_s"),
    }


def best_record(records: List[dict], goal: str) -> Optional[dict]:
    """The completed trial with the best value; early-terminated trials only when none completed."""
    for status in ("completed", "early_terminated"):
        candidates = [r for r in records if r["status"] == status and r["best_value"] is not None and r["model_dir"]]
        if candidates:
            pick = max if goal == "maximize" else min
            return pick(candidates, key=lambda r: r["best_value"])
    return None


def summarise(study, plan: RunPlan, sweep_dir: Path, wall: float) -> SweepResult:
    search = plan.search
    trials = study.get_trials(deepcopy=False)
    skip = replaced(trials)
    records = [trial_record(t, search.goal) for t in trials if t.state.is_finished() and t.number not in skip]
    best = best_record(records, search.goal)
    if not search.keep_trial_models:
        for record in records:
            if record is not best and record["model_dir"]:
                shutil.rmtree(record["model_dir"], ignore_errors=True)
    print(trials_table(records, search.primary_metric), flush=True)
    best_trial, best_training = None, None
    if best is not None:
        best_training = TrainingResult.read(best["result_file"])
        best_trial = BestTrial(
            trial=best["number"],
            params=best["params"],
            value=best["best_value"],
            model_dir=best["model_dir"],
            val=best_training.val,
            result_file=best["result_file"],
        )
        print(
            f"best: trial {best['number']} {search.primary_metric}={best['best_value']:.4f} -> {best['model_dir']}",
            flush=True,
        )
    sweep = SweepResult(
        sampling=search.sampling,
        policy=dataclasses.asdict(search.policy),
        primary_metric=search.primary_metric,
        goal=search.goal,
        trials=[SweepTrial(**{k: v for k, v in r.items() if k not in ("model_dir", "result_file")}) for r in records],
        best=best_trial,
        compute={
            "trial_epochs": round(sum(r["epochs_run"] or 0.0 for r in records), 4),
            "trial_seconds": round(sum(r["duration_s"] or 0.0 for r in records), 2),
            "wall_seconds": round(wall, 2),
            **({"speed_factor": study.user_attrs["speed_factor"]} if "speed_factor" in study.user_attrs else {}),
        },
        best_training=best_training,
    )
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep.to_dict(), indent=2))
    return sweep


def _format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def progress_line(trial, done: int, total: int, metric: str, goal: str) -> str:
    record = trial_record(trial, goal)
    status = record["status"]
    if status == "early_terminated":
        status += f" at interval {record['stopped_at_interval']}"
    elif status == "failed":
        status += f" ({record['reason']})"
    value = (
        f"{metric} {record['best_value']:.4f}, "
        if record["best_value"] is not None and record["status"] != "failed"
        else ""
    )
    return (
        f"[sweep {done}/{total}] trial {trial.number} {status}: {value}"
        f"{_format_params(record['params'])}, {record['duration_s'] or 0:.0f} s"
    )


def trials_table(records: List[dict], metric: str) -> str:
    """The sweep's trials as a text table: params, best value, status, epochs/steps run, duration."""
    header = ("trial", "params", f"best {metric}", "status", "epochs", "steps", "seconds")
    rows = []
    for r in records:
        status = r["status"] + (f" @{r['stopped_at_interval']}" if r["status"] == "early_terminated" else "")
        rows.append(
            (
                str(r["number"]),
                _format_params(r["params"]),
                "-" if r["best_value"] is None else f"{r['best_value']:.4f}",
                status,
                "-" if r["epochs_run"] is None else f"{r['epochs_run']:.2f}",
                "-" if r["steps"] is None else str(r["steps"]),
                "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
