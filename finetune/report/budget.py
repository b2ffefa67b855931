"""The report's budget section: budget against spent per stage, the estimate's error, and the sweep's anytime
curve (the best validation metric so far against wall time), which shows whether more budget would have helped."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from finetune.report.common import STATUS_STYLE, Figures, table

if TYPE_CHECKING:
    from finetune.plan.summary import RunSummary


def budget_section(summary: "RunSummary", figures: Figures) -> List[str]:
    section, lines = summary.budget, []
    if section:
        lines += ["## Budget", "", f"Plan: {section['plan']}.", ""]
        rows = [
            [name, _seconds(stage.get("expected_s")), _seconds(stage.get("spent_s"))]
            for name, stage in section["stages"].items()
        ]
        rows.append(["**total**", _seconds(section["expected_s"]), _seconds(section["spent_s"])])
        lines += [table(["stage", "expected", "spent"], rows), ""]
        error = section.get("estimate_error")
        lines.append(
            f"Spent {section['spent_s'] / 60:.1f} min of the {section['budget_s'] / 60:g}-minute budget "
            f"({section['spent_of_budget']:.0%}); the estimate was "
            + (
                f"{abs(error):.0%} {'over' if error > 0 else 'under'} the time spent."
                if error is not None
                else "not comparable (nothing spent)."
            )
        )
        lines.append("")
    curve = anytime_figure(summary, figures)
    if curve:
        lines += ([] if section else ["## Budget", ""]) + [curve, "", anytime_verdict(summary), ""]
    return lines


def best_so_far(summary: "RunSummary") -> List[tuple]:
    """(minutes into the sweep, best value so far, trial, status) at every trial's end, in the order they ended."""
    sweep = summary.sweep
    if sweep is None:
        return []
    maximize = sweep.goal == "maximize"
    ended = sorted((t for t in sweep.trials if t.ended_s is not None), key=lambda t: t.ended_s)
    points, best = [], None
    for trial in ended:
        value = trial.best_value if trial.status != "failed" else None
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        points.append((trial.ended_s / 60, best, trial.number, trial.status))
    return points


def anytime_figure(summary: "RunSummary", figures: Figures) -> Optional[str]:
    points = [p for p in best_so_far(summary) if p[1] is not None]
    if not points:
        return None
    figure, axes = figures.new(6.4, 3.8)
    axis = axes[0]
    minutes, values = [p[0] for p in points], [p[1] for p in points]
    axis.step([0.0, *minutes], [values[0], *values], where="post", color="black", linewidth=1.5, label="best so far")
    for when, value, number, status in points:
        color, marker = STATUS_STYLE.get(status, ("black", "o"))
        axis.plot(when, value, marker=marker, color=color, linestyle="none")
        axis.annotate(f"t{number}", (when, value), xytext=(3, 4), textcoords="offset points", fontsize=8)
    if summary.budget and summary.budget.get("sweep_share_s"):
        axis.axvline(
            summary.budget["sweep_share_s"] / 60,
            color="tab:red",
            linestyle="--",
            label="the sweep's share of the budget",
        )
    axis.set_xlabel("sweep wall time (min)")
    axis.set_ylabel(f"best {summary.sweep.primary_metric}")
    axis.set_title("Anytime performance of the sweep")
    axis.legend(fontsize=8)
    return figures.save(figure, "sweep_anytime", "best validation metric so far against the sweep's wall time")


def anytime_verdict(summary: "RunSummary") -> str:
    """One sentence: did the last trials still improve the best (more budget would likely help) or not."""
    points = [p for p in best_so_far(summary) if p[1] is not None]
    first_best = next(p for p in points if p[1] == points[-1][1])
    if first_best is points[-1] and len(points) > 1:
        return (
            f"The best value ({points[-1][1]:.4f}) came with the last trial to end, at {points[-1][0]:.1f} min: "
            "the sweep was still improving, so a larger budget would likely have found a better model."
        )
    return (
        f"The best value ({points[-1][1]:.4f}) was reached at {first_best[0]:.1f} min of {points[-1][0]:.1f}; "
        "the trials after it did not improve on it."
    )


def _seconds(value) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"
