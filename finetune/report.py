"""``report.md`` and its plots, from ``summary.json`` and the files it points to.

The report is for a person deciding whether to trust the model: what data it saw, how the sweep went,
how training converged, how every candidate did on the same test split and why one was chosen, and
whether the endpoint answered. Each section appears only when its stage ran and left its data, so a
minimal run (no sweep, no AutoML, no endpoint) still gets a valid report. Plots use matplotlib's Agg
canvas directly (no pyplot state, no display needed) and go to ``<run_dir>/figures/``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from finetune.decision import describe
from finetune.metrics import per_class_key

KIND_DESCRIPTIONS = {
    "hf": "fine-tuned transformer",
    "automl": "local AutoML baseline (FLAML on TF-IDF)",
    "production": "model currently in production, re-scored on this test split",
}
STATUS_STYLE = {"completed": ("tab:blue", "o"), "early_terminated": ("tab:red", "x"), "failed": ("grey", "s")}


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class _Figures:
    """Saves figures under ``run_dir/figures`` and remembers them for the report and summary."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.folder = run_dir / "figures"
        self.paths: list[Path] = []

    def new(self, width: float = 6.4, height: float = 4.0, ncols: int = 1):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(width, height))
        FigureCanvasAgg(figure)
        return figure, figure.subplots(1, ncols, squeeze=False)[0]

    def save(self, figure, name: str, title: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        self.paths.append(path)
        return f"![{title}]({path.relative_to(self.run_dir).as_posix()})"


# -------------------------------------------------------------------------------------------- sections


def _run_section(summary: dict) -> list[str]:
    run = summary.get("run", {})
    lines = [f"# Run {run.get('name', '')}".rstrip(), ""]
    facts = [("launcher", run.get("launcher")), ("started", run.get("started")), ("finished", run.get("finished")),
             ("duration", f"{run['duration_s']:.0f} s" if run.get("duration_s") is not None else None),
             ("stages", " → ".join(run.get("stages", [])) or None), ("run directory", run.get("run_dir"))]
    training = summary.get("training") or {}
    splits = (summary.get("data") or {}).get("splits") or {}
    hyperparameters = training.get("hyperparameters") or {}
    facts += [("base model", f"`{training['base_model']}`" if training.get("base_model") else None),
              ("hyperparameters of the kept model", ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in hyperparameters.items()) or None),
              ("data", ", ".join(f"{name} {split.get('rows')} rows" for name, split in splits.items()) or None)]
    lines += [f"- **{key}**: {value}" for key, value in facts if value]
    return lines


def _data_section(summary: dict, figures: _Figures) -> list[str]:
    data = summary.get("data")
    if not data or not data.get("splits"):
        return []
    labels, splits = data.get("labels", []), data["splits"]
    lines = ["## Data", "", f"Source: `{data.get('source')}`; {data.get('rows_raw')} raw rows, "
             f"{data.get('rows_labelled')} labelled; classes: {', '.join(labels)}.", ""]
    rows = []
    for name, split in splits.items():
        counts, total = split.get("class_counts", {}), split.get("rows") or 0
        rows.append([name, total, *(f"{counts.get(label, 0)} ({100 * counts.get(label, 0) / max(total, 1):.1f}%)"
                                    for label in labels), (split.get("sha256") or "")[:12]])
    lines += [_table(["split", "rows", *labels, "sha256"], rows), ""]

    figure, (axis,) = figures.new()
    width, highest = 0.8 / max(len(labels), 1), 0.0
    for index, label in enumerate(labels):
        shares = [100 * split.get("class_counts", {}).get(label, 0) / max(split.get("rows") or 0, 1)
                  for split in splits.values()]
        positions = [i + (index - (len(labels) - 1) / 2) * width for i in range(len(splits))]
        bars = axis.bar(positions, shares, width, label=label)
        axis.bar_label(bars, fmt="%.0f%%", fontsize=8)
        highest = max([highest, *shares])
    axis.set_xticks(range(len(splits)), [f"{name}\n({split.get('rows')} rows)" for name, split in splits.items()])
    axis.set_ylabel("share of split (%)")
    axis.set_ylim(0, highest * 1.3 + 1)  # headroom: the legend sits above the bars
    axis.set_title("Class balance per split")
    axis.legend(title="class", loc="upper center", ncols=min(len(labels), 4))
    lines += [figures.save(figure, "data_class_balance", "class balance per split"), ""]

    lengths = _text_lengths(splits)
    if lengths:
        import numpy as np

        figure, (axis,) = figures.new()
        everything = np.concatenate(list(lengths.values()))
        upper = max(float(np.percentile(everything, 99)), 1.0)
        bins = np.linspace(0, upper, 40)
        for name, values in lengths.items():
            axis.hist(np.clip(values, 0, upper), bins=bins, histtype="step", linewidth=1.5,
                      weights=np.full(len(values), 100 / len(values)), label=f"{name} (median {np.median(values):.0f})")
        axis.set_xlabel("text length (words; longer texts counted in the last bin)")
        axis.set_ylabel("share of split (%)")
        axis.set_title("Text length per split")
        axis.legend(title="split")
        lines += [figures.save(figure, "data_text_length", "text length per split"), ""]
    return lines


def _text_lengths(splits: dict) -> dict:
    import numpy as np
    import pandas as pd

    lengths = {}
    for name, split in splits.items():
        path = split.get("path")
        if path and Path(path).is_file():
            texts = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["text"])["text"]
            if len(texts):
                lengths[name] = np.asarray(texts.str.split().str.len(), dtype=float)
    return lengths


def _sweep_section(summary: dict, figures: _Figures) -> list[str]:
    sweep = summary.get("sweep")
    if not sweep or not sweep.get("trials"):
        return []
    metric, trials = sweep.get("primary_metric", "metric"), sweep["trials"]
    best = (sweep.get("best") or {}).get("trial")
    policy = (sweep.get("policy") or {}).get("type", "none")
    lines = ["## Hyperparameter sweep", "",
             f"{len(trials)} trials, {sweep.get('sampling')} sampling, early-termination policy `{policy}`, "
             f"{sweep.get('goal', 'maximize')} `{metric}`."]
    compute = sweep.get("compute") or {}
    if compute:
        lines[-1] += (f" Trials used {compute.get('trial_epochs')} epochs and {compute.get('trial_seconds')} s "
                      f"of training in {compute.get('wall_seconds')} s wall time.")
    rows = [[f"{t['number']}{' (best)' if t['number'] == best else ''}", t.get("status"), t.get("best_value"),
             len([v for v in t.get("values") or [] if v is not None]),
             f"{t['duration_s']:.0f}" if t.get("duration_s") is not None else None,
             " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (t.get("params") or {}).items()),
             t.get("reason") or ""]
            for t in trials]
    lines += ["", _table(["trial", "status", metric, "evaluations", "seconds", "params", "note"], rows), ""]

    curves = [t for t in trials if any(v is not None for v in t.get("values") or [])]
    if curves:
        lines += [_sweep_figure(trials, curves, metric, best, figures), ""]
    return lines


def _zoom(trials: list) -> tuple[float, float]:
    """A metric range around the trials that finished: a trial stopped far behind would flatten the rest."""
    every = [v for t in trials for v in [*(t.get("values") or []), t.get("best_value")] if v is not None]
    finished = [v for t in trials if t.get("status") == "completed"
                for v in [*(t.get("values") or []), t.get("best_value")] if v is not None]
    low, high = min(finished or every), max(every)
    pad = max((high - low) * 0.25, 0.002)
    return low - pad, high + pad


def _sweep_figure(trials: list, curves: list, metric: str, best, figures: _Figures) -> str:
    """Metric per trial over training and each searched hyperparameter against the metric, on one zoomed axis."""
    from matplotlib.ticker import MaxNLocator

    params = [name for name in dict.fromkeys(k for t in trials for k in (t.get("params") or {}))][:3]
    low, high = _zoom(trials)
    figure, axes = figures.new(5.5 + 4 * len(params), 4.4, ncols=1 + len(params))
    left = axes[0]
    for trial in curves:
        points = [(i + 1, v) for i, v in enumerate(trial["values"]) if v is not None]
        color, marker = STATUS_STYLE.get(trial.get("status"), ("black", "o"))
        steps, values = zip(*points)
        chosen = trial["number"] == best
        left.plot(steps, values, color=color, alpha=1.0 if chosen else 0.5, linewidth=2.5 if chosen else 1)
        shown = min(max(values[-1], low), high)  # a trial that ended below the zoomed range is labelled at its edge
        left.plot(steps[-1], shown, marker=marker if shown == values[-1] else "v", color=color, markersize=8,
                  linestyle="none")
        left.annotate(f"t{trial['number']}{' (best)' if chosen else ''}", (steps[-1], shown), xytext=(5, 0),
                      textcoords="offset points", fontsize=8, va="center", color=color)
    for status in dict.fromkeys(t.get("status") for t in curves):
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
            value, x = trial.get("best_value"), (trial.get("params") or {}).get(name)
            if value is None or not isinstance(x, (int, float)):
                continue
            color, marker = STATUS_STYLE.get(trial.get("status"), ("black", "o"))
            shown = min(max(value, low), high)
            axis.scatter([x], [shown], color=color, marker=marker if shown == value else "v",
                         s=90 if trial["number"] == best else 45)
            axis.annotate(f"t{trial['number']}", (x, shown), xytext=(4, 4), textcoords="offset points", fontsize=8)
        numbers = [t["params"][name] for t in trials if isinstance((t.get("params") or {}).get(name), (int, float))]
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            axis.set_xscale("log")
        axis.set_ylim(low, high)
        axis.set_xlabel(name)
        axis.set_ylabel(f"best {metric}")
        axis.set_title(f"{name} against the metric")
    return figures.save(figure, "sweep_trials", "sweep trials: metric over training and per hyperparameter")


def _learning_section(summary: dict, figures: _Figures) -> list[str]:
    result_file = next((c.get("result_file") for c in summary.get("candidates", {}).values()
                        if c.get("kind") == "hf" and c.get("result_file")), None)
    result_file = result_file or ((summary.get("sweep") or {}).get("best") or {}).get("result_file")
    if not result_file or not Path(result_file).is_file():
        return []
    result = json.loads(Path(result_file).read_text())
    evaluations = result.get("evaluations") or []
    if not evaluations:
        return []
    metric = (summary.get("selection") or {}).get("metric", "auc_weighted")
    x_key = "epoch" if all(e.get("epoch") is not None for e in evaluations) else "step"
    figure, (left, right) = figures.new(11, 4.2, ncols=2)
    xs = [e[x_key] for e in evaluations]
    train_loss = [point for point in result.get("train_loss") or [] if point.get(x_key) is not None]
    if train_loss:
        left.plot([p[x_key] for p in train_loss], [p["loss"] for p in train_loss], color="tab:grey", alpha=0.8,
                  label="training loss (per logging step)")
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
    return ["## Training curves (fine-tuned model)", "", f"From `{result_file}`, one point per evaluation.", "",
            figures.save(figure, "learning_curves", "learning curves"), ""]


TRAINING_FIGURES = (
    ("train_samples_per_s", "training samples/s", "{:.1f}"),
    ("train_tokens_per_s", "training tokens/s", "{:,.0f}"),
    ("gpu_utilization_mean_pct", "mean GPU utilisation", "{:.0f} %"),
    ("gpu_memory_peak_mib", "peak GPU memory", "{:,.0f} MiB"),
    ("gpu_power_mean_w", "mean GPU power", "{:.0f} W"),
    ("host_cpu_mean_pct", "mean host CPU", "{:.0f} %"),
    ("host_memory_peak_gib", "peak host memory", "{:.2f} GiB"),
)


def _training_section(summary: dict) -> list[str]:
    """Throughput and resources of the run that produced the fine-tuned candidate (nvitop telemetry)."""
    training = summary.get("training")
    if not training:
        return []
    throughput, runtime = training.get("throughput") or {}, training.get("runtime") or {}
    facts = [(label, fmt.format(throughput[key])) for key, label, fmt in TRAINING_FIGURES
             if isinstance(throughput.get(key), (int, float))]
    if runtime:
        facts.insert(0, ("device", f"{runtime.get('device_name') or runtime.get('device')} ({runtime.get('precision')}, "
                                   f"batch {runtime.get('batch', {}).get('batch_size')})"))
    return ["## Training throughput and resources", ""] + [f"- **{k}**: {v}" for k, v in facts] + [""]


def _selection_section(summary: dict, figures: _Figures) -> list[str]:
    selection = summary.get("selection")
    candidates = summary.get("candidates", {})
    if not selection:
        if not candidates:
            return []
        rows = [[name, _describe(c.get("kind"), c), c.get("val", {}).get("auc_weighted")] for name, c in candidates.items()]
        return ["## Candidates", "", _table(["candidate", "what", "val auc_weighted"], rows), ""]
    metric, winner = selection["metric"], selection["winner"]
    columns = list(dict.fromkeys([metric, "accuracy", "f1_macro", "recall_macro", "auc_weighted",
                                  "average_precision_weighted"]))
    labels = summary.get("data", {}).get("labels") or []
    rows = []
    for row in selection["table"]:
        name = row["candidate"]
        label = f"**{name}** (chosen)" if name == winner else name
        description = _describe(row.get("kind"), candidates.get(name, {}))
        val = candidates.get(name, {}).get("val", {}).get(metric)
        if "error" in row:
            rows.append([label, description, val, f"failed: {row['error']}", *[""] * (len(columns) + 2)])
        else:
            recall = " / ".join(f"{row.get(per_class_key('recall', l), float('nan')):.2f}" for l in labels)
            at_argmax = (row.get("test_argmax") or {}).get("f1_macro")
            rows.append([label, description, val, *(row.get(c) for c in columns), describe(row.get("decision")),
                         recall, at_argmax])
    lines = ["## Candidates on the test split", "",
             f"Every candidate scored on the same test split by one metric function; chosen by test `{metric}` "
             f"(margin over production: {selection.get('margin', 0):g}). Label metrics are at the decision rule "
             "each candidate ships (chosen on val; the endpoint answers with it); AUC and average precision rank "
             "probabilities and do not depend on it.", "",
             _table(["candidate", "what", f"val {metric}", *(f"test {c}" for c in columns), "decision rule",
                     f"test recall ({' / '.join(labels)})", "test f1_macro at argmax"], rows), "",
             f"**Decision: {selection['decision']}** — {selection['reason']}", ""]

    scored = [row for row in selection["table"] if "error" not in row]
    figure, (axis,) = figures.new(7, 2 + 1.1 * len(scored))
    shown = list(dict.fromkeys([metric, "accuracy", "f1_macro"]))
    height = 0.8 / len(shown)
    for index, name in enumerate(shown):
        positions = [i + (index - (len(shown) - 1) / 2) * height for i in range(len(scored))]
        bars = axis.barh(positions, [row[name] for row in scored], height, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    axis.set_yticks(range(len(scored)), [f"{row['candidate']}{' (chosen)' if row['candidate'] == winner else ''}"
                                         for row in scored])
    axis.invert_yaxis()
    axis.set_xlim(0, 1.12)
    axis.set_xlabel("score on test (0–1)")
    axis.set_title("Candidates on the test split")
    axis.legend(title="metric", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=len(shown), fontsize=8)
    lines += [figures.save(figure, "candidates", "candidates on test"), ""]

    lines += _winner_plots(selection, summary.get("data", {}).get("labels"), figures)
    return lines


def _describe(kind: Optional[str], candidate: dict) -> str:
    return candidate.get("description") or KIND_DESCRIPTIONS.get(kind or "", kind or "unknown")


def _load_predictions(row: dict):
    import numpy as np

    paths = [row.get("test_proba"), row.get("test_labels")]
    if not all(path and Path(path).is_file() for path in paths):
        return None
    return np.load(paths[0]), np.load(paths[1])


def _winner_plots(selection: dict, labels: Optional[list], figures: _Figures) -> list[str]:
    import numpy as np
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    from finetune.serve.score import decide

    rows = {row["candidate"]: row for row in selection["table"] if "error" not in row}
    winner = selection["winner"]
    loaded = _load_predictions(rows.get(winner, {}))
    if loaded is None:
        return []
    proba, y_true = loaded
    labels = labels or [str(i) for i in range(proba.shape[1])]
    lines = [f"### Chosen model on test: {winner}", ""]

    # The labels the endpoint answers: the shipped rule, not argmax.
    predicted = decide(proba, labels, rows[winner].get("decision"))
    matrix = confusion_matrix(y_true, predicted, labels=list(range(len(labels))))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, (axis,) = figures.new(4.8 + 0.3 * len(labels), 4.2 + 0.3 * len(labels))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, f"{count}\n{100 * share[i, j]:.0f}%", ha="center", va="center",
                  color="white" if share[i, j] > 0.6 else "black")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"Confusion matrix: {winner} at {describe(rows[winner].get('decision'))} (n={len(y_true)})")
    figure.colorbar(image, ax=axis, label="share of true class")
    lines += [figures.save(figure, "confusion_matrix", "confusion matrix"), ""]

    if len(np.unique(y_true)) < 2:
        return lines  # ROC is undefined with one class present
    figure, (axis,) = figures.new(5.6, 5)
    if proba.shape[1] == 2:
        # Binary: every candidate on one plot, the chosen one drawn heavier.
        for name, row in rows.items():
            predictions = (proba, y_true) if name == winner else _load_predictions(row)
            if predictions is None:
                continue
            curve_proba, curve_y = predictions
            fpr, tpr, _ = roc_curve(curve_y, curve_proba[:, 1])
            axis.plot(fpr, tpr, linewidth=2.5 if name == winner else 1.2,
                      label=f"{name} (AUC {roc_auc_score(curve_y, curve_proba[:, 1]):.3f})")
        title = f"ROC on test (positive class: {labels[1]})"
    else:
        for index, label in enumerate(labels):
            if 0 < (y_true == index).sum() < len(y_true):
                fpr, tpr, _ = roc_curve(y_true == index, proba[:, index])
                axis.plot(fpr, tpr, label=f"{label} vs rest (AUC {roc_auc_score(y_true == index, proba[:, index]):.3f})")
        title = f"ROC on test, one class vs rest: {winner}"
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    lines += [figures.save(figure, "roc", "ROC curves"), ""]
    return lines


def _registry_section(summary: dict) -> list[str]:
    registry = summary.get("registry")
    if not registry:
        return []
    if registry.get("version") is None:
        return ["## Registry", "", f"Nothing registered: {registry.get('reason', registry.get('decision'))}", ""]
    facts = [("model", f"{registry.get('name')} version {registry.get('version')}"
              + (" (same artifacts were already registered)" if registry.get("existing") else "")),
             ("content sha256", registry.get("content_sha256")), ("git commit", registry.get("git_commit")),
             ("artifact", registry.get("source"))]
    return ["## Registry", ""] + [f"- **{key}**: `{value}`" for key, value in facts if value] + [""]


def _rollout_section(summary: dict) -> list[str]:
    rollout = summary.get("rollout")
    if not rollout:
        return []
    model = rollout.get("model") or {}
    smoke = rollout.get("smoke_test") or {}
    traffic = ", ".join(f"{name} {percent}%" for name, percent in (rollout.get("traffic") or {}).items())
    facts = [("status", rollout.get("status")), ("endpoint", f"{rollout.get('endpoint')} ({rollout.get('kind', '')})"),
             ("deployment", rollout.get("deployment")),
             ("model", f"{model.get('name')} version {model.get('version')}" if model else None),
             ("traffic now", traffic or None), ("scoring URI", rollout.get("scoring_uri")),
             ("smoke test latency", f"{smoke['latency_ms']:.1f} ms" if smoke.get("latency_ms") is not None else None),
             ("old deployments deleted", ", ".join(rollout.get("deleted") or []) or None),
             ("serve again", f"`{rollout['serve_command']}`" if rollout.get("serve_command") else None)]
    lines = ["## Endpoint", ""] + [f"- **{key}**: {value}" for key, value in facts if value]
    lines += [f"- **warning**: {warning}" for warning in rollout.get("warnings") or []]
    predictions = (smoke.get("response") or {}).get("predictions") if isinstance(smoke.get("response"), dict) else None
    if predictions:
        lines += ["", "Smoke test predictions:", "",
                  _table(["#", "label", "probabilities"],
                         [[i, p.get("label"), ", ".join(f"{k} {v:.3f}" for k, v in (p.get("probabilities") or {}).items())]
                          for i, p in enumerate(predictions)])]
    steps = rollout.get("steps") or []
    if steps:
        lines += ["", "Traffic ramp:", "",
                  _table(["traffic to new (%)", "requests", "errors", "seconds"],
                         [[s.get("percent"), s.get("requests"), s.get("errors"), s.get("seconds")] for s in steps])]
    lines.append("")

    timings = rollout.get("timings") or {}
    if timings.get("total_s") is not None:
        phases = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items() if k.endswith("_s") and k != "total_s")
        lines[-1:-1] = [f"Rollout took {timings['total_s']:.1f} s ({phases}).", ""]
    return lines


def write_report(run_dir: Path, summary: dict) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/figures/*.png``); returns the report's path.

    Sets ``summary["figures"]`` to the list of PNG paths written, for summary.json.
    """
    run_dir = Path(run_dir)
    figures = _Figures(run_dir)
    lines = [*_run_section(summary), "", *_data_section(summary, figures), *_sweep_section(summary, figures),
             *_learning_section(summary, figures), *_training_section(summary), *_selection_section(summary, figures),
             *_registry_section(summary), *_rollout_section(summary)]
    path = run_dir / "report.md"
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    path.write_text(text, encoding="utf-8")
    write_html(text, run_dir, run_dir / "report.html")
    summary["figures"] = [str(p) for p in figures.paths]
    return path


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head><body>
{body}
</body></html>
"""


def write_html(markdown_text: str, run_dir: Path, path: Path) -> Path:
    """The report as one self-contained HTML page: the Markdown rendered, every figure inlined as base64."""
    import base64
    import html
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline(match):
        image = run_dir / html.unescape(match.group(1))
        if not image.is_file():
            return match.group(0)
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{encoded}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    title = next((line[2:] for line in markdown_text.splitlines() if line.startswith("# ")), "report")
    path.write_text(HTML_PAGE.format(title=html.escape(title), body=body), encoding="utf-8")
    return path
