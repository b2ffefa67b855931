"""The report's training sections: the sweep's trials and curves, the kept training's learning curves, its
throughput and resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List

from finetune.report.common import STATUS_STYLE, Figures, table
from finetune.train.learning_check import describe_baseline, kept_training_check, shipped_below_baseline_line

if TYPE_CHECKING:
    from finetune.plan.results import SweepTrial
    from finetune.plan.summary import RunSummary


def sweep_section(summary: "RunSummary", figures: Figures) -> list[str]:
    sweep = summary.sweep
    if sweep is None or not sweep.trials:
        return []
    metric, trials = sweep.primary_metric, sweep.trials
    best = sweep.best.trial if sweep.best is not None else None
    policy = sweep.policy.get("type", "none")
    lines = [
        "## Hyperparameter sweep",
        "",
        f"{len(trials)} trials, {sweep.sampling} sampling, early-termination policy `{policy}`, "
        f"{sweep.goal} `{metric}`.",
    ]
    compute = sweep.compute
    if compute:
        lines[-1] += (
            f" Trials used {compute.get('trial_epochs')} epochs and {compute.get('trial_seconds')} s "
            f"of training in {compute.get('wall_seconds')} s wall time."
        )
    rows = [
        [
            f"{t.number}{' (best)' if t.number == best else ''}",
            t.status,
            t.best_value,
            len([v for v in t.values if v is not None]),
            f"{t.duration_s:.0f}" if t.duration_s is not None else None,
            " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
            t.reason or "",
        ]
        for t in trials
    ]
    lines += ["", table(["trial", "status", metric, "evaluations", "seconds", "params", "note"], rows), ""]

    curves = [t for t in trials if any(v is not None for v in t.values)]
    if curves:
        lines += [_sweep_figure(trials, curves, metric, best, figures), ""]
    return lines


def _zoom(trials: List["SweepTrial"]) -> tuple[float, float]:
    """A metric range around the trials that finished: a trial stopped far behind would flatten the rest."""
    every = [v for t in trials for v in [*t.values, t.best_value] if v is not None]
    finished = [v for t in trials if t.status == "completed" for v in [*t.values, t.best_value] if v is not None]
    low, high = min(finished or every), max(every)
    pad = max((high - low) * 0.25, 0.002)
    return low - pad, high + pad


def _sweep_figure(trials: list, curves: list, metric: str, best, figures: Figures) -> str:
    """Metric per trial over training and each searched hyperparameter against the metric, on one zoomed axis."""
    from matplotlib.ticker import MaxNLocator

    params = [name for name in dict.fromkeys(k for t in trials for k in t.params)][:3]
    low, high = _zoom(trials)
    figure, axes = figures.new(5.5 + 4 * len(params), 4.4, ncols=1 + len(params))
    left = axes[0]
    for trial in curves:
        points = [(i + 1, v) for i, v in enumerate(trial.values) if v is not None]
        color, marker = STATUS_STYLE.get(trial.status, ("black", "o"))
        steps, values = zip(*points)
        chosen = trial.number == best
        left.plot(steps, values, color=color, alpha=1.0 if chosen else 0.5, linewidth=2.5 if chosen else 1)
        shown = min(max(values[-1], low), high)  # a trial that ended below the zoomed range is labelled at its edge
        left.plot(
            steps[-1], shown, marker=marker if shown == values[-1] else "v", color=color, markersize=8, linestyle="none"
        )
        left.annotate(
            f"t{trial.number}{' (best)' if chosen else ''}",
            (steps[-1], shown),
            xytext=(5, 0),
            textcoords="offset points",
            fontsize=8,
            va="center",
            color=color,
        )
    for status in dict.fromkeys(t.status for t in curves):
        color, marker = STATUS_STYLE.get(status, ("black", "o"))
        left.plot([], [], color=color, marker=marker, label=str(status).replace("_", " "))
    left.plot([], [], color="black", marker="v", linestyle="none", label="ended below this range")
    left.set_ylim(low, high)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.margins(x=0.15)
    left.set_xlabel("evaluation interval")
    left.set_ylabel(metric)
    left.set_title("Metric per trial over training")
    left.legend(title="trial status", fontsize=8)
    for axis, name in zip(axes[1:], params):
        for trial in trials:
            value, x = trial.best_value, trial.params.get(name)
            if value is None or not isinstance(x, (int, float)):
                continue
            color, marker = STATUS_STYLE.get(trial.status, ("black", "o"))
            shown = min(max(value, low), high)
            axis.scatter(
                [x],
                [shown],
                color=color,
                marker=marker if shown == value else "v",
                s=90 if trial.number == best else 45,
            )
            axis.annotate(f"t{trial.number}", (x, shown), xytext=(4, 4), textcoords="offset points", fontsize=8)
        numbers = [t.params[name] for t in trials if isinstance(t.params.get(name), (int, float))]
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            axis.set_xscale("log")
        axis.set_ylim(low, high)
        axis.set_xlabel(name)
        axis.set_ylabel(f"best {metric}")
        axis.set_title(f"{name} against the metric")
    return figures.save(figure, "sweep_trials", "sweep trials: metric over training and per hyperparameter")


def learning_section(summary: "RunSummary", figures: Figures) -> list[str]:
    result_file = next((c.result_file for c in summary.candidates.values() if c.family == "hf" and c.result_file), None)
    if not result_file and summary.sweep is not None and summary.sweep.best is not None:
        result_file = summary.sweep.best.result_file
    if not result_file or not Path(result_file).is_file():
        return []
    result = json.loads(Path(result_file).read_text())
    evaluations = result.get("evaluations") or []
    if not evaluations:
        return []
    metric = summary.selection.metric if summary.selection is not None else "auc_weighted"
    x_key = "epoch" if all(e.get("epoch") is not None for e in evaluations) else "step"
    figure, (left, right) = figures.new(11, 4.2, ncols=2)
    xs = [e[x_key] for e in evaluations]
    train_loss = [point for point in result.get("train_loss") or [] if point.get(x_key) is not None]
    if train_loss:
        left.plot(
            [p[x_key] for p in train_loss],
            [p["loss"] for p in train_loss],
            color="tab:grey",
            alpha=0.8,
            label="training loss (per logging step)",
        )
    left.plot(xs, [e.get("val_loss") for e in evaluations], marker="o", label="validation loss")
    left.set_xlabel(x_key if x_key == "step" else "epoch")
    left.set_ylabel("cross-entropy loss (nats)")
    left.set_title("Training and validation loss" if train_loss else "Validation loss")
    left.legend()
    for name in dict.fromkeys([metric, "accuracy", "f1_macro"]):
        if any(f"val_{name}" in e for e in evaluations):
            right.plot(xs, [e.get(f"val_{name}") for e in evaluations], marker="o", label=name)
    right.set_xlabel(x_key)
    right.set_ylabel("score on val (0–1)")
    right.set_title("Validation metrics")
    right.legend(title="metric")
    return [
        "## Training curves (fine-tuned model)",
        "",
        f"From `{result_file}`, one point per evaluation.",
        "",
        figures.save(figure, "learning_curves", "learning curves"),
        "",
    ]


def learning_check_section(summary: "RunSummary") -> list[str]:
    """The fine-tuned model against the one-liner on val: each check's verdict, a restart, a stop, and a bold line
    when the shipped model is below the one-liner."""
    check = kept_training_check(summary)
    if not check:
        return []
    metric = check["baseline"]["metric"]
    lines = [
        "## Learning check",
        "",
        f"The baseline, {describe_baseline(check['baseline'])}; the fine-tuned model is *not learning* at a "
        f"check when its training loss has "
        f"not fallen by {check['loss_drop']:.0%} and its val {metric} is more than {check['margin']:g} below "
        f"that (action: `{check['action']}`).",
    ]
    shipped = shipped_below_baseline_line(summary)
    if shipped:
        shipped = shipped.removeprefix("warning: ")
        lines += ["", f"**{shipped[0].upper()}{shipped[1:]}.**"]
    elif check.get("below_baseline"):
        lines += [
            "",
            f"The kept fine-tuned model ({metric} {check['kept_value']:.4f}) is below the baseline; it was "
            "not shipped.",
        ]
    if check.get("restarted"):
        restart = check["restarted"]
        lines += [
            "",
            f"Training restarted at step {restart['at_step']} with learning rate "
            f"{restart['to_learning_rate']:g} instead of {restart['from_learning_rate']:g}.",
        ]
    if check.get("stopped"):
        lines += ["", f"Training stopped: {check['stopped']}."]
    rows = [
        [
            c["attempt"],
            c["step"],
            f"{c['epoch']:.2f}" if c.get("epoch") is not None else None,
            c["value"],
            c["first_loss"],
            c["recent_loss"],
            (c["verdict"] or "learning").replace("_", " "),
        ]
        for c in check.get("checks") or []
    ]
    if rows:
        lines += [
            "",
            table(["attempt", "step", "epoch", f"val {metric}", "first loss", "recent loss", "verdict"], rows),
        ]
    return lines + [""]


TRAINING_FIGURES = (
    ("train_samples_per_s", "training samples/s", "{:.1f}"),
    ("train_tokens_per_s", "training tokens/s", "{:,.0f}"),
    ("gpu_utilization_mean_pct", "mean GPU utilisation", "{:.0f} %"),
    ("gpu_memory_peak_mib", "peak GPU memory", "{:,.0f} MiB"),
    ("gpu_power_mean_w", "mean GPU power", "{:.0f} W"),
    ("host_cpu_mean_pct", "mean host CPU", "{:.0f} %"),
    ("host_memory_peak_gib", "peak host memory", "{:.2f} GiB"),
)


def training_section(summary: "RunSummary") -> list[str]:
    """Throughput and resources of the run that produced the fine-tuned candidate (nvitop telemetry)."""
    training = summary.training
    if not training:
        return []
    throughput, runtime = training.get("throughput") or {}, training.get("runtime") or {}
    facts = [
        (label, fmt.format(throughput[key]))
        for key, label, fmt in TRAINING_FIGURES
        if isinstance(throughput.get(key), (int, float))
    ]
    if runtime:
        facts.insert(
            0,
            (
                "device",
                f"{runtime.get('device_name') or runtime.get('device')} ({runtime.get('precision')}, "
                f"batch {runtime.get('batch', {}).get('batch_size')})",
            ),
        )
    return ["## Training throughput and resources", ""] + [f"- **{k}**: {v}" for k, v in facts] + [""]
