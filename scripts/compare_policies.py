"""Does AML's Bandit policy save compute here? The same sweep with and without it, side by side.

Both sweeps sample the same trials (random sampling, same seed, one trial at a time, so the sampler is
called identically), train the packaged MiniLM on the bundled Automotive reviews, and differ only in
search.policy: bandit (conf/search/bandit.yaml) vs none. Printed: trials stopped early, total
trial-epochs, trial and wall seconds, best val metric, and the savings ratio (1 - bandit/none).

The defaults are sized for roughly 15-20 minutes on 2 CPU cores; --sample, --trials and --max-length
trade fidelity for time. A smoke run with a small model:

    python scripts/compare_policies.py --model-path DIR --sample 200 --trials 2 --epochs 1 --max-length 32
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=1500, help="reviews drawn from the bundled data (default 1500)")
    parser.add_argument("--trials", type=int, default=6, help="trials per sweep (default 6)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per review (default 64)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per trial (default 2)")
    parser.add_argument("--evals-per-epoch", type=int, default=1,
                        help="primary-metric reports per epoch, i.e. policy intervals (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed, the same for both sweeps")
    parser.add_argument("--model-path", help="a local model folder instead of the packaged MiniLM (smoke runs)")
    parser.add_argument("--output-root", default="outputs/compare_policies", help="where both runs are written")
    return parser.parse_args(argv)


def plan_for(args: argparse.Namespace, policy: str):
    from finetune.cli import compose
    from finetune.plan import build_plan

    overrides = [
        "search=bandit", f"search.policy.type={policy}", f"search.seed={args.seed}",
        f"search.limits.max_total_trials={args.trials}", "search.limits.max_concurrent_trials=1",
        f"dataset.sample={args.sample}", f"model.max_length={args.max_length}", f"model.epochs={args.epochs}",
        f"train.evals_per_epoch={args.evals_per_epoch}", f"output_root={Path(args.output_root).resolve()}",
        f"run_name=policy-{policy}",
    ]
    if args.model_path:
        overrides.append(f"model.path={Path(args.model_path).resolve()}")
    return build_plan(compose(overrides, {}), overrides, f"policy-{policy}")


def summary_row(name: str, sweep: dict) -> dict:
    statuses = [t["status"] for t in sweep["trials"]]
    best = sweep["best"] or {}
    return {"policy": name, "trials": len(statuses), "early_terminated": statuses.count("early_terminated"),
            "failed": statuses.count("failed"), **sweep["compute"], "best_value": best.get("value"),
            "best_params": best.get("params")}


def main(argv=None) -> int:
    args = parse_args(argv)
    from finetune.data import prepare
    from finetune.search import run_sweep

    plans = {"bandit": plan_for(args, "bandit"), "none": plan_for(args, "none")}
    metric = plans["bandit"].search.primary_metric
    data = prepare(plans["bandit"].dataset, Path(args.output_root) / "data")
    rows = {}
    for name, plan in plans.items():
        print(f"\n=== sweep with policy {name}: {args.trials} trials of {args.epochs:g} epoch(s) ===", flush=True)
        rows[name] = summary_row(name, run_sweep(plan, data, Path(plan.run_dir) / "sweep"))

    print(f"\n{'policy':<8} {'trials':>6} {'stopped':>7} {'trial-epochs':>12} {'trial s':>8} {'wall s':>8}  best {metric}")
    for row in rows.values():
        best = "-" if row["best_value"] is None else f"{row['best_value']:.4f}"
        print(f"{row['policy']:<8} {row['trials']:>6} {row['early_terminated']:>7} {row['trial_epochs']:>12.2f} "
              f"{row['trial_seconds']:>8.0f} {row['wall_seconds']:>8.0f}  {best}")
    bandit, none = rows["bandit"], rows["none"]
    savings = {key: 1 - bandit[key] / none[key] if none[key] else None
               for key in ("trial_epochs", "trial_seconds", "wall_seconds")}
    print("savings with bandit (1 - bandit/none): " + ", ".join(
        f"{key} {value:.1%}" for key, value in savings.items() if value is not None))
    if bandit["best_value"] is not None and none["best_value"] is not None:
        print(f"best {metric}: bandit {bandit['best_value']:.4f} vs none {none['best_value']:.4f} "
              f"(difference {bandit['best_value'] - none['best_value']:+.4f})")
    report = Path(args.output_root) / "compare_policies.json"
    report.write_text(json.dumps({"args": vars(args), "runs": rows, "savings": savings}, indent=2))
    print(f"written to {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
