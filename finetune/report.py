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
        from matplotlib.ticker import MaxNLocator

        figure, (left, right) = figures.new(11, 4.2, ncols=2)
        for trial in curves:
            points = [(i + 1, v) for i, v in enumerate(trial["values"]) if v is not None]
            color, marker = STATUS_STYLE.get(trial.get("status"), ("black", "o"))
            steps, values = zip(*points)
            left.plot(steps, values, color=color, alpha=1.0 if trial["number"] == best else 0.45,
                      linewidth=2.5 if trial["number"] == best else 1)
            left.plot(steps[-1], values[-1], marker=marker, color=color, markersize=8, linestyle="none")
        for status in dict.fromkeys(t.get("status") for t in curves):
            color, marker = STATUS_STYLE.get(status, ("black", "o"))
            left.plot([], [], color=color, marker=marker, label=str(status).replace("_", " "))
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.set_xlabel("evaluation interval")
        left.set_ylabel(metric)
        left.set_title("Metric per trial over training (last point marked)")
        left.legend(title="trial status")
        for status, (color, marker) in STATUS_STYLE.items():
            chosen = [t for t in trials if t.get("status") == status and t.get("best_value") is not None]
            if chosen:
                right.scatter([t["number"] for t in chosen], [t["best_value"] for t in chosen], color=color,
                              marker=marker, s=50, label=status.replace("_", " "))
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_xlabel("trial number (order started)")
        right.set_ylabel(f"best {metric}")
        right.set_title("Best value per trial")
        right.legend(title="trial status")
        lines += [figures.save(figure, "sweep_trials", "sweep trials"), ""]
    return lines


def _learning_section(summary: dict, figures: _Figures) -> list[str]:
    result_file = next((c.get("result_file") for c in summary.get("candidates", {}).values()
                        if c.get("kind") == "hf" and c.get("result_file")), None)
    result_file = result_file or ((summary.get("sweep") or {}).get("best") or {}).get("result_file")
    if not result_file or not Path(result_file).is_file():
        return []
    evaluations = json.loads(Path(result_file).read_text()).get("evaluations") or []
    if not evaluations:
        return []
    metric = (summary.get("selection") or {}).get("metric", "auc_weighted")
    x_key = "epoch" if all(e.get("epoch") is not None for e in evaluations) else "step"
    figure, (left, right) = figures.new(11, 4.2, ncols=2)
    xs = [e[x_key] for e in evaluations]
    left.plot(xs, [e.get("val_loss") for e in evaluations], marker="o", label="validation loss")
    left.set_xlabel(x_key if x_key == "step" else "epoch")
    left.set_ylabel("cross-entropy loss (nats)")
    left.set_title("Validation loss")
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


def _rollout_section(summary: dict, figures: _Figures) -> list[str]:
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

    timings = {k[:-2]: v for k, v in (rollout.get("timings") or {}).items() if k.endswith("_s") and k != "total_s"}
    latencies = {"smoke test": smoke.get("latency_ms")} if smoke.get("latency_ms") is not None else {}
    latencies.update({f"ramp {s['percent']}%": 1000 * s["seconds"] / s["requests"] for s in steps
                      if s.get("requests") and s.get("seconds") is not None})
    if timings or latencies:
        figure, (left, right) = figures.new(11, 3.6, ncols=2)
        _bars(left, timings, "seconds", "Rollout phases", "%.1f s")
        _bars(right, latencies, "milliseconds per request", "Request latency (mean per step)", "%.0f ms")
        total = (rollout.get("timings") or {}).get("total_s")
        if total is not None:
            left.set_title(f"Rollout phases (total {total:.1f} s)")
        lines += [figures.save(figure, "endpoint", "endpoint rollout and latency"), ""]
    return lines


def _bars(axis, values: dict, unit: str, title: str, fmt: str) -> None:
    if not values:
        axis.set_axis_off()
        return
    bars = axis.barh(list(values), list(values.values()), color="tab:blue")
    axis.bar_label(bars, fmt=fmt, fontsize=8, padding=2)
    axis.invert_yaxis()
    axis.set_xlabel(unit)
    axis.set_title(title)
    axis.margins(x=0.2)


def write_report(run_dir: Path, summary: dict) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/figures/*.png``); returns the report's path.

    Sets ``summary["figures"]`` to the list of PNG paths written, for summary.json.
    """
    run_dir = Path(run_dir)
    figures = _Figures(run_dir)
    lines = [*_run_section(summary), "", *_data_section(summary, figures), *_sweep_section(summary, figures),
             *_learning_section(summary, figures), *_training_section(summary), *_selection_section(summary, figures),
             *_registry_section(summary), *_rollout_section(summary, figures)]
    path = run_dir / "report.md"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    summary["figures"] = [str(p) for p in figures.paths]
    return path
