"""Are the labels useful? The fine-tuned model and the local AutoML candidate against TF-IDF + logistic regression.

For three datasets, on the splits the pipeline prepared:
  automotive  the bundled Automotive reviews (>= 4 stars positive, <= 2 negative; about 13 % negative)
  imbalanced  the same reviews with negatives sampled down to 4.5 % (dataset=file)
  stars       the bundled star ratings as five classes (dataset.label_column=star_rating)
each through `python -m finetune search=none endpoint=none` (the packaged MiniLM, the local AutoML
baseline, selection with the decision rule chosen on val), then the one-liner baseline on the same splits:
TF-IDF (word 1-2 + char 3-5 grams) + LogisticRegression, at argmax and at a threshold tuned on val for
binary data, class-balanced for multiclass. Prints test AUC_weighted, F1 macro and per-class recall.

    python scripts/bench_quality.py                        # all three, the shipped class-weight default
    python scripts/bench_quality.py --datasets imbalanced --class-weights none,balanced,auto --no-automl

Slow on a CPU (each fine-tuning run is minutes); results also go to <work>/bench_quality.json. Needs the
package installed (`pip install .`): the register stage pins its dependencies from the package metadata.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The one-liner and the metrics are imported in this process too: this checkout's, not an installed copy's.
sys.path.insert(0, str(REPO))
BUNDLED = REPO / "finetune" / "data_files" / "automotive_reviews.csv"
NEGATIVE_SHARE = 0.045


def imbalanced_csv(path: Path, seed: int = 0) -> Path:
    """The bundled reviews as text,label with negatives sampled down to NEGATIVE_SHARE of the rows."""
    with open(BUNDLED, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    positive = [(r["review_body"], "positive") for r in rows if float(r["star_rating"]) >= 4]
    negative = [(r["review_body"], "negative") for r in rows if float(r["star_rating"]) <= 2]
    keep = round(NEGATIVE_SHARE / (1 - NEGATIVE_SHARE) * len(positive))
    chosen = positive + random.Random(seed).sample(negative, keep)
    random.Random(seed).shuffle(chosen)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows(chosen)
    return path


def dataset_overrides(name: str, work: Path) -> list[str]:
    if name == "automotive":
        return []
    if name == "imbalanced":
        path = imbalanced_csv(work / "imbalanced.csv")
        return ["dataset=file", f"dataset.path={path}", "dataset.text_column=text", "dataset.label_column=label"]
    if name == "stars":
        return ["dataset.rating_column=null", "dataset.label_column=star_rating"]
    raise SystemExit(f"unknown dataset {name}; use automotive, imbalanced, stars")


def run_pipeline(run_dir: Path, overrides: list[str], log) -> dict:
    command = [sys.executable, "-m", "finetune", "search=none", "endpoint=none", f"output_root={run_dir.parent}",
               f"run_name={run_dir.name}", *overrides]
    print("$ " + " ".join(command), file=log, flush=True)
    started = time.time()
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed (exit {done.returncode}); see {log.name}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["bench_duration_s"] = round(time.time() - started)
    return summary


def one_liner(data_dir: Path, labels: list[str]) -> dict:
    """TF-IDF (word 1-2 + char 3-5) + LogisticRegression: argmax, plus val-tuned threshold (binary) or
    class-balanced weights (multiclass). Test metrics of each."""
    import numpy as np

    from finetune.data import read_split
    from finetune.selection.automl import balanced_baseline
    from finetune.selection.automl import one_liner as make_one_liner
    from finetune.selection.metrics import classification_metrics
    from finetune.selection.rules import choose_decision
    from finetune.serve.score import decide

    train, val, test = (read_split(data_dir / f"{split}.csv", labels) for split in ("train", "val", "test"))

    plain = make_one_liner().fit(train[0], train[1])
    proba = plain.predict_proba(test[0])
    np.save(data_dir.parent / "select" / "one_liner_test_proba.npy", proba)
    rows = {"TF-IDF+LR argmax": classification_metrics(test[1], proba, labels=labels)}
    if len(labels) == 2:
        rule = choose_decision(val[1], plain.predict_proba(val[0]), labels)
        rows[f"TF-IDF+LR val threshold ({rule.threshold:.2f})"] = classification_metrics(
            test[1], proba, decide(proba, labels, rule.to_dict()), labels=labels)
    else:
        balanced = balanced_baseline("single_label").fit(train[0], train[1])
        rows["TF-IDF+LR class-balanced"] = classification_metrics(test[1], balanced.predict_proba(test[0]),
                                                                  labels=labels)
    return rows


def rows_of(summary: dict, tag: str) -> dict:
    rows = {}
    finetuned = summary["selection"]["test"].get("finetuned")
    table = {row["candidate"]: row for row in summary["selection"]["table"]}
    if finetuned:
        from finetune.selection.decisions import DecisionRule
        from finetune.selection.rules import describe

        rows[f"fine-tuned{tag} argmax"] = table["finetuned"]["test_argmax"]
        rows[f"fine-tuned{tag} shipped rule ({describe(DecisionRule.from_dict(table['finetuned']['decision']))})"] = {
            **finetuned, "test_proba": table["finetuned"]["test_proba"]}
    automl = summary["selection"]["test"].get("automl")
    if automl:
        best = summary["candidates"]["automl"].get("best_estimator")
        rows[f"AutoML ({best}) shipped rule"] = {**automl, "test_proba": table["automl"]["test_proba"]}
    return rows


def auc_difference(y_true, proba, baseline_proba, resamples: int = 2000, seed: int = 0) -> tuple:
    """AUC_weighted(proba) - AUC_weighted(baseline) on the same test texts, with a 95 % paired bootstrap
    interval: with a dozen texts of a rare class, differences of a few hundredths are within chance."""
    import numpy as np

    from finetune.selection.metrics import classification_metrics

    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    def difference(rows):
        return (classification_metrics(y_true[rows], proba[rows])["auc_weighted"]
                - classification_metrics(y_true[rows], baseline_proba[rows])["auc_weighted"])
    draws = []
    while len(draws) < resamples:
        rows = rng.integers(0, len(y_true), len(y_true))
        if len(np.unique(y_true[rows])) == proba.shape[1]:  # AUC needs every class in the resample
            draws.append(difference(rows))
    low, high = np.percentile(draws, [2.5, 97.5])
    return difference(np.arange(len(y_true))), float(low), float(high)


def format_table(name: str, labels: list[str], rows: dict, data_dir: Path) -> str:
    """The table; a model with test probabilities also gets its AUC difference to the one-liner (TF-IDF+LR)."""
    import numpy as np

    header = f"| {name} | AUC_weighted | ΔAUC vs TF-IDF+LR [95 % CI] | F1 macro | recall " + "/".join(labels) + " |"
    lines = [header, "| --- | --- | --- | --- | --- |"]
    select = data_dir.parent / "select"
    y_true = np.load(select / "test_labels.npy")
    baseline = np.load(select / "one_liner_test_proba.npy")
    for model, metrics in rows.items():
        recall = "/".join(f"{metrics.get('recall.' + label, float('nan')):.2f}" for label in labels)
        delta = ""
        if metrics.get("test_proba"):
            value, low, high = auc_difference(y_true, np.load(metrics["test_proba"]), baseline)
            delta = f"{value:+.4f} [{low:+.3f}, {high:+.3f}]"
        lines.append(f"| {model} | {metrics['auc_weighted']:.4f} | {delta} | {metrics['f1_macro']:.4f} | {recall} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="automotive,imbalanced,stars")
    parser.add_argument("--class-weights", default="auto", help="comma-separated train.class_weights to compare")
    parser.add_argument("--no-automl", action="store_true", help="skip the AutoML candidate")
    parser.add_argument("--work", default=str(REPO / "outputs" / "bench_quality"))
    parser.add_argument("overrides", nargs="*", help="extra `python -m finetune` overrides, e.g. model.epochs=3")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "bench_quality.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    tables = []
    with open(work / "bench_quality.log", "a", encoding="utf-8") as log:
        for name in args.datasets.split(","):
            rows, labels = {}, None
            for index, mode in enumerate(args.class_weights.split(",")):
                automl = "automl=none" if args.no_automl or index > 0 else "automl=local"
                key = f"{name}-{mode}" + ("" if automl == "automl=local" else "-noautoml")
                summary = run_pipeline(work / key, [*dataset_overrides(name, work), f"train.class_weights={mode}",
                                                    automl, *args.overrides], log)
                labels = summary["data"]["labels"]
                tag = "" if len(args.class_weights.split(",")) == 1 else f" [class_weights={mode}]"
                rows.update(rows_of(summary, tag))
                results[key] = {"selection": summary["selection"]["test"], "duration_s": summary["bench_duration_s"],
                                "decisions": {r["candidate"]: r.get("decision") for r in summary["selection"]["table"]}}
            rows.update(one_liner(work / key / "data", labels))
            results[f"{name}-one-liner"] = rows
            tables.append(format_table(name, labels, rows, work / key / "data"))
            print(tables[-1] + "\n", flush=True)
            results_path.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
