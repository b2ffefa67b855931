#!/usr/bin/env python
"""The budget goals of issue 28, measured: full local runs under ``budget.minutes`` and the default run.

Each run is ``python -m finetune budget.minutes=M`` (or no budget override for the default run) in its own
output root, timed from outside (process start to exit, so calibration and start-up count). The table gives
per run: the wall time, actual / budget (goal 0.85-1.05), the printed estimate and its error against the wall
time (goal within +-20 %), the plan's line, the best val metric of the sweep, the fine-tuned model's test
AUC_weighted (goal >= 0.96 for the default run, <= 8 min) and the load average before and after (the machine
is shared: figures taken under load say so).

    nice -n 5 python scripts/bench_budget.py --minutes 5,10,20 --default --out /tmp/budget.json
    python scripts/bench_budget.py --table /tmp/budget.json          # print the table of earlier runs again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_one(label: str, overrides: list, root: Path) -> dict:
    """One full run in ``root/label``; its figures from summary.json and the clock outside it."""
    out = root / label
    load_before = os.getloadavg()[0]
    started = time.time()
    command = [sys.executable, "-m", "finetune", f"output_root={out}", f"run_name={label}", *overrides]
    with open(root / f"{label}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - started
    figures = {
        "label": label,
        "overrides": overrides,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    summary_file = out / label / "summary.json"
    if not summary_file.exists():
        return figures
    summary = json.loads(summary_file.read_text())
    section = summary.get("budget") or {}
    sweep = summary.get("sweep") or {}
    candidates = summary.get("candidates") or {}
    figures.update(
        budget_s=section.get("budget_s"),
        expected_s=section.get("expected_s"),
        spent_s=section.get("spent_s"),
        plan=section.get("plan"),
        # The sweep's best trial, or the single training's own val figure when the budget bought no sweep.
        best_val=(sweep.get("best") or {}).get("value")
        or (candidates.get("finetuned", {}).get("val") or {}).get("auc_weighted"),
        trials=len(sweep.get("trials") or []),
        speed_factor=(sweep.get("compute") or {}).get("speed_factor"),
        test_auc=(candidates.get("finetuned", {}).get("test") or {}).get("auc_weighted"),
        winner=(summary.get("selection") or {}).get("winner"),
        winner_test_auc=(candidates.get((summary.get("selection") or {}).get("winner"), {}).get("test") or {}).get(
            "auc_weighted"
        ),
    )
    return figures


def table(runs: list) -> str:
    rows = [
        "| run | wall | actual / budget | estimate (error) | trials | best val AUC | test AUC fine-tuned "
        "(winner) | load before/after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        budget_s, wall, expected = r.get("budget_s"), r["wall_s"], r.get("expected_s")
        ratio = f"{wall / budget_s:.2f}" if budget_s else "-"
        error = f"{expected / 60:.1f} min ({(expected - wall) / wall:+.0%})" if expected else "-"
        val = f"{r['best_val']:.4f}" if r.get("best_val") is not None else "-"
        test = f"{r['test_auc']:.4f}" if r.get("test_auc") is not None else "-"
        winner = (
            f" ({r['winner']} {r['winner_test_auc']:.4f})"
            if r.get("winner") and r["winner"] != "finetuned" and r.get("winner_test_auc") is not None
            else ""
        )
        rows.append(
            f"| {r['label']} | {wall / 60:.1f} min | {ratio} | {error} | {r.get('trials', '-')} | {val} | "
            f"{test}{winner} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    plans = [f"- {r['label']}: {r['plan']}" for r in runs if r.get("plan")]
    return "\n".join(rows + [""] + plans)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="5,10,20", help="comma-separated budget.minutes values ('' for none)")
    parser.add_argument("--default", action="store_true", help="also run python -m finetune with no budget override")
    parser.add_argument(
        "--root", default="/tmp/finetune-bench-budget", help="each invocation's runs and logs go to a new folder here"
    )
    parser.add_argument("--out", help="write the figures here as JSON (appended to as runs finish)")
    parser.add_argument("--table", help="print the table of a JSON file written by --out and exit")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run")
    options = parser.parse_args(argv)
    if options.table:
        print(table(json.loads(Path(options.table).read_text())))
        return 0
    # A new folder per invocation: a run named like an earlier one in the same output root resumes it, and a
    # resumed run would time the leftovers, not the budget.
    root = Path(options.root) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    jobs = [("default", [])] if options.default else []
    jobs += [(f"budget-{m}min", [f"budget.minutes={m}"]) for m in filter(None, options.minutes.split(","))]
    runs = []
    for label, overrides in jobs:
        runs.append(run_one(label, overrides + options.overrides, root))
        print(json.dumps(runs[-1]), flush=True)
        if options.out:
            Path(options.out).write_text(json.dumps(runs, indent=2))
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
