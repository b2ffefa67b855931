"""AML's early-termination service, as the emulator applies it to a sweep: written from Microsoft's documents,
independently of the project's :mod:`finetune.search.policies` (tests/test_aml_policies.py compares the two).

Sources (Microsoft Learn):
- "Hyperparameter tuning a model (v2)", section "Early termination"
  (https://learn.microsoft.com/azure/machine-learning/how-to-tune-hyperparameters#early-termination);
- the SDK v2 pages azure.ai.ml.sweep.BanditPolicy / MedianStoppingPolicy / TruncationSelectionPolicy and the
  v1 HyperDrive pages azureml.train.hyperdrive.* (their "Remarks" hold the worked examples).

What those pages say, and how it is read here:
- Interval: "each time the training script logs the primary metric counts as one interval"; the first report is
  interval 1. The service decides for a run when that run reports.
- evaluation_interval / delay_evaluation: "the policy applies every multiple of evaluation_interval that is
  greater than or equal to delay_evaluation". The SDK v2 default of 0 for evaluation_interval is the REST
  default "not set"; it is read as HyperDrive's default, 1.
- Comparison set: "When ranking a relatively young run, the policy uses the corresponding (and earlier)
  performance of older runs for comparison. Therefore, runs aren't terminated for having a lower performance
  because they have run for less time" (TruncationSelectionPolicy remarks). A run at interval N is compared with
  the runs that reported an N-th value, each seen through its first N reports.
- Bandit: "any training runs whose best metric at interval 10 is less than 0.66 (0.8/(1+slack_factor)) will be
  terminated", 0.8 being the best performing run's metric at interval 10; with slack_amount 0.2, "less than
  0.6 (0.8 - 0.2)". The pages give only the maximize case; for minimize the allowed region is read as the
  mirror (best * (1 + slack_factor), best + slack_amount).
- Median stopping: "a run will be canceled at interval N if its best primary metric reported up to interval N is
  worse than the median of the running averages for intervals 1:N across all runs".
- Truncation selection: "a run terminates at interval 5 if its performance at interval 5 is in the lowest 20% of
  performance of all runs at interval 5"; exclude_finished_jobs "specifies whether to exclude finished jobs when
  applying the policy". "Lowest 20%" of k runs is read as: at most 20% of the k runs perform no better than
  this one (it included), so equal performances share a fate.
- A NaN report ranks below every number (it is never the best, and always among the worst).
- Thresholds are compared as the documents state them, in decimal: 0.6 is "not less than 0.6 (0.8 - 0.2)" even
  though 0.8 - 0.2 is 0.6000000000000001 in binary floating point. A value within :data:`TIE` (relative) of a
  threshold or a median is a tie, and a tie is not worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

TIE = 1e-9  # metrics are reported with far fewer significant digits than a double carries


@dataclass
class Reports:
    """What the service knows of one sweep: each run's reported primary-metric values, and which runs ended."""

    goal: str  # "maximize" | "minimize" (AML's objective.goal, any case)
    values: Dict[str, List[float]] = field(default_factory=dict)
    ended: Set[str] = field(default_factory=set)

    def report(self, run: str, value: float) -> int:
        self.values.setdefault(run, []).append(float(value))
        return len(self.values[run])

    def score(self, value: float) -> float:
        """Larger is better, whatever the goal; NaN is worst."""
        if math.isnan(value):
            return -math.inf
        return value if self.goal.lower() == "maximize" else -value


def worse(score: float, threshold: float) -> bool:
    """``score`` below ``threshold`` (both larger-is-better), beyond floating-point noise."""
    return score < threshold and not math.isclose(score, threshold, rel_tol=TIE, abs_tol=TIE)


def _median(numbers: List[float]) -> float:
    ordered = sorted(numbers)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class TerminationService:
    """One sweep's ``early_termination`` block (the exported YAML's keys) applied as AML's service applies it."""

    def __init__(self, policy: Optional[dict], goal: str):
        policy = dict(policy or {})
        self.kind = str(policy.get("type", "none")).lower().replace("_policy", "")
        self.interval = int(policy.get("evaluation_interval") or 1)
        self.delay = int(policy.get("delay_evaluation") or 0)
        self.slack_factor = policy.get("slack_factor")
        self.slack_amount = policy.get("slack_amount")
        self.percentage = policy.get("truncation_percentage")
        self.exclude_finished = bool(policy.get("exclude_finished_jobs", False))
        self.reports = Reports(goal)

    def evaluated_at(self, interval: int) -> bool:
        return interval % self.interval == 0 and interval >= self.delay

    def on_report(self, run: str, value: float) -> Optional[str]:
        """Record one report of ``run``; the reason to cancel it now, or None."""
        interval = self.reports.report(run, value)
        if self.kind == "none" or not self.evaluated_at(interval):
            return None
        peers = {
            other: [self.reports.score(v) for v in reported[:interval]]
            for other, reported in self.reports.values.items()
            if len(reported) >= interval
        }
        decide = {
            "bandit": self._bandit,
            "median": self._median,
            "medianstopping": self._median,
            "truncation": self._truncation,
            "truncationselection": self._truncation,
        }[self.kind]
        return decide(run, interval, peers)

    def end(self, run: str) -> None:
        self.reports.ended.add(run)

    def _unscore(self, score: float) -> float:
        return score if self.reports.goal.lower() == "maximize" else -score

    def _bandit(self, run: str, interval: int, peers: Dict[str, List[float]]) -> Optional[str]:
        own = self._unscore(max(peers[run]))
        leader = self._unscore(max(max(scores) for scores in peers.values()))
        maximize = self.reports.goal.lower() == "maximize"
        if self.slack_factor is not None:
            allowed = leader / (1 + self.slack_factor) if maximize else leader * (1 + self.slack_factor)
        else:
            allowed = leader - self.slack_amount if maximize else leader + self.slack_amount
        outside = worse(own, allowed) if maximize else worse(-own, -allowed)
        return f"bandit at interval {interval}: best {own:.4g} outside the slack of {leader:.4g}" if outside else None

    def _median(self, run: str, interval: int, peers: Dict[str, List[float]]) -> Optional[str]:
        averages = [math.fsum(scores) / len(scores) for scores in peers.values()]  # exactly rounded: ties stay ties
        median = _median(averages)
        if worse(max(peers[run]), median):
            return (
                f"median stopping at interval {interval}: best {self._unscore(max(peers[run])):.4g} worse than "
                f"the median running average {self._unscore(median):.4g}"
            )
        return None

    def _truncation(self, run: str, interval: int, peers: Dict[str, List[float]]) -> Optional[str]:
        ranked = {
            other: scores[-1]
            for other, scores in peers.items()
            if other == run or not (self.exclude_finished and other in self.reports.ended)
        }
        own = ranked[run]
        no_better = sum(1 for score in ranked.values() if score <= own)
        if no_better * 100 <= self.percentage * len(ranked):
            return f"truncation at interval {interval}: among the lowest {self.percentage}% of {len(ranked)} runs"
        return None
