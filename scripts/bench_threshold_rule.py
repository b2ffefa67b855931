"""Which binary decision threshold carries from a small val split to test? The smoothing share of
finetune.selection.rules (SMOOTHING_SHARE) measured on many random splits of an imbalanced set.

For each seed, the imbalanced benchmark set of scripts/bench_quality.py (4.5 % negatives) is split 80/10/10
(stratified), TF-IDF + logistic regression (C=4 unweighted and class-balanced, C=1 unweighted: its scores are
squeezed together) is fitted on train, the threshold is chosen on val with each share, and test F1 macro and
negative recall are recorded. Prints the mean test F1 macro per share and its paired difference to share 0 (the
single best cut on val, no averaging) with a standard error.

    python scripts/bench_threshold_rule.py                 # 50 seeds x 3 models, a few minutes on 2 cores
    python scripts/bench_threshold_rule.py --seeds 20 --shares 0,0.02,0.05
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_quality import imbalanced_csv  # sibling script: puts this checkout first on sys.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--shares", default="0,0.01,0.02,0.04", help="comma-separated SMOOTHING_SHARE to compare")
    args = parser.parse_args()
    import numpy as np
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    import finetune.selection.rules as decision
    from finetune.selection.metrics import classification_metrics
    from finetune.serve.score import decide

    labels = ["negative", "positive"]
    with tempfile.TemporaryDirectory() as tmp:
        data = pd.read_csv(imbalanced_csv(Path(tmp) / "imbalanced.csv"))
    y = (data["label"] == "positive").to_numpy(dtype=int)
    # Word n-grams only: fast enough for hundreds of fits; the rule, not the features, is under study.
    x = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit_transform(data["text"])
    shares = [float(share) for share in args.shares.split(",")]
    results = {share: [] for share in shares}
    for seed in range(args.seeds):
        train, rest = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
        val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
        for c, class_weight in ((4.0, None), (4.0, "balanced"), (1.0, None)):
            model = LogisticRegression(C=c, class_weight=class_weight, max_iter=2000).fit(x[train], y[train])
            proba_val, proba_test = model.predict_proba(x[val]), model.predict_proba(x[test])
            for share in shares:
                decision.SMOOTHING_SHARE = share
                rule = decision.choose_decision(y[val], proba_val, labels)
                metrics = classification_metrics(
                    y[test], proba_test, decide(proba_test, labels, rule.to_dict()), labels=labels
                )
                results[share].append((metrics["f1_macro"], metrics["recall.negative"]))
        print(f"seed {seed + 1}/{args.seeds}", end="\r", file=sys.stderr, flush=True)
    base = np.array([f1 for f1, _ in results[shares[0]]])
    print(f"{args.seeds} splits x 3 models; val has {len(val)} texts, {int((y[val] == 0).sum())} negatives\n")
    print(f"| SMOOTHING_SHARE | test F1 macro | vs share {shares[0]:g} (± s.e.) | negative recall |")
    print("| --- | --- | --- | --- |")
    for share, rows in results.items():
        f1 = np.array([f for f, _ in rows])
        difference = f1 - base
        print(
            f"| {share:g} | {f1.mean():.4f} | {difference.mean():+.4f} ± {difference.std() / np.sqrt(len(f1)):.4f} "
            f"| {np.mean([r for _, r in rows]):.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
