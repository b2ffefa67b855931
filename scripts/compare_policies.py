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
    parser.add_argument(
        "--evals-per-epoch",
        type=int,
        default=1,
        help="primary-metric reports per epoch, i.e. policy intervals (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed, the same for both sweeps")
    parser.add_argument("--model-path", help="a local model folder instead of the packaged MiniLM (smoke runs)")
    parser.add_argument("--output-root", default="outputs/compare_policies", help="where both runs are written")
    parser.add_argument(
        "--replay-delays",
        default="0,4",
        metavar="N,N",
        help="after the runs, replay the Bandit rule with these delay_evaluation values on the "
        "no-policy sweep's recorded curves (training is seeded, so a stopped trial's curve "
        "is the prefix of its no-policy curve); default 0,4",
    )
    parser.add_argument(
        "--policy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for the policy sweep only, e.g. search.policy.delay_evaluation=4 "
        "(repeatable); the no-policy sweep is unchanged, so a rerun in the same "
        "--output-root resumes it instead of training it again",
    )
    return parser.parse_args(argv)


def plan_for(args: argparse.Namespace, policy: str):
    from finetune.cli.main import compose
    from finetune.plan.build import build_plan

    overrides = [
        "search=bandit",
        f"search.policy.type={policy}",
        f"search.seed={args.seed}",
        f"search.limits.max_total_trials={args.trials}",
        "search.limits.max_concurrent_trials=1",
        f"dataset.sample={args.sample}",
        f"model.max_length={args.max_length}",
        f"model.epochs={args.epochs}",
        f"train.evals_per_epoch={args.evals_per_epoch}",
        f"output_root={Path(args.output_root).resolve()}",
        f"run_name=policy-{policy}",
    ]
    if args.model_path:
        overrides.append(f"model.path={Path(args.model_path).resolve()}")
    if policy != "none" and args.policy_set:
        overrides += args.policy_set
        overrides[overrides.index(f"run_name=policy-{policy}")] = f"run_name=policy-{policy}-" + "-".join(
            item.split(".")[-1].replace("=", "") for item in args.policy_set
        )
    return build_plan(compose(overrides, {}), overrides, f"policy-{policy}")


def summary_row(name: str, sweep: dict) -> dict:
    statuses = [t["status"] for t in sweep["trials"]]
    best = sweep["best"] or {}
    return {
        "policy": name,
        "trials": len(statuses),
        "early_terminated": statuses.count("early_terminated"),
        "failed": statuses.count("failed"),
        **sweep["compute"],
        "best_value": best.get("value"),
        "best_params": best.get("params"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from finetune.data import prepare
    from finetune.search import run_sweep

    plans = {"bandit": plan_for(args, "bandit"), "none": plan_for(args, "none")}
    metric = plans["bandit"].search.primary_metric
    data = prepare(plans["bandit"].dataset, Path(args.output_root) / "data")
    rows, sweeps = {}, {}
    for name, plan in plans.items():
        print(f"\n=== sweep with policy {name}: {args.trials} trials of {args.epochs:g} epoch(s) ===", flush=True)
        sweeps[name] = run_sweep(plan, data, Path(plan.run_dir) / "sweep").to_dict()
        rows[name] = summary_row(name, sweeps[name])

    print(
        f"\n{'policy':<8} {'trials':>6} {'stopped':>7} {'trial-epochs':>12} {'trial s':>8} {'wall s':>8}  best {metric}"
    )
    for row in rows.values():
        best = "-" if row["best_value"] is None else f"{row['best_value']:.4f}"
        print(
            f"{row['policy']:<8} {row['trials']:>6} {row['early_terminated']:>7} {row['trial_epochs']:>12.2f} "
            f"{row['trial_seconds']:>8.0f} {row['wall_seconds']:>8.0f}  {best}"
        )
    bandit, none = rows["bandit"], rows["none"]
    savings = {
        key: 1 - bandit[key] / none[key] if none[key] else None
        for key in ("trial_epochs", "trial_seconds", "wall_seconds")
    }
    print(
        "savings with bandit (1 - bandit/none): "
        + ", ".join(f"{key} {value:.1%}" for key, value in savings.items() if value is not None)
    )
    if bandit["best_value"] is not None and none["best_value"] is not None:
        print(
            f"best {metric}: bandit {bandit['best_value']:.4f} vs none {none['best_value']:.4f} "
            f"(difference {bandit['best_value'] - none['best_value']:+.4f})"
        )
    replays = replay_delays(plans["bandit"], sweeps["none"], args)
    report = Path(args.output_root) / "compare_policies.json"
    report.write_text(json.dumps({"args": vars(args), "runs": rows, "savings": savings, "replays": replays}, indent=2))
    print(f"written to {report}")
    return 0


def replay_delays(bandit_plan, none_sweep: dict, args: argparse.Namespace) -> list:
    """The Bandit rule (the one implementation the pruner uses) replayed over the recorded no-policy curves."""
    import dataclasses

    from finetune.search.policies import should_stop

    full_epochs = args.epochs * len(none_sweep["trials"])
    results = []
    print("\nreplay of the Bandit rule on the no-policy sweep's recorded curves:")
    for delay in (int(d) for d in args.replay_delays.split(",") if d.strip()):
        policy = dataclasses.replace(bandit_plan.search.policy, delay_evaluation=delay)
        seen, epochs, best, stopped = {}, 0.0, None, {}
        for trial in sorted(none_sweep["trials"], key=lambda t: t["number"]):
            number, values = trial["number"], trial["values"]
            seen[number] = []
            for value in values:
                seen[number].append(value)
                if should_stop(policy, bandit_plan.search.goal, seen, number):
                    stopped[number] = len(seen[number])
                    break
            epochs += min(args.epochs, len(seen[number]) / args.evals_per_epoch) if number in stopped else args.epochs
            best = max(best or -1.0, max(seen[number]))
        results.append(
            {
                "delay_evaluation": delay,
                "trial_epochs": epochs,
                "savings": 1 - epochs / full_epochs,
                "best_value": best,
                "stopped_at": stopped,
            }
        )
        print(
            f"  delay_evaluation={delay}: trial-epochs {epochs:.2f} (saves {1 - epochs / full_epochs:.1%}), "
            f"best {best:.4f}, stopped {stopped or 'none'}"
        )
    return results


if __name__ == "__main__":
    raise SystemExit(main())
