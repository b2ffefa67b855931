"""What a run's budget buys: the arithmetic of fitting trials, epochs, concurrency and time limits into it.

Pure arithmetic over measured figures, so tests can check every number exactly: the figures come from a
calibration on this machine (:mod:`finetune.plan.calibration`) or, on AML, from a per-SKU throughput table
(:mod:`finetune.launch.azureml.throughput`). A trial costs a fixed overhead (process start, imports, model load,
tokenisation, the learning check's baseline, saving) plus, per epoch, the training examples and the validation
examples of its evaluations. Stages outside training cost what a measured run spent on them
(:data:`LOCAL_STAGES`, docs/performance.md).

The fit prefers depth first, then breadth: a sweep when at least :data:`MIN_SWEEP_TRIALS` trials of the configured
``model.epochs`` fit, as many trials as fit; otherwise one training at the configured settings with the most
epochs (up to ``model.epochs``) that fit; more lanes when the machine has them. A
policy that stops trials early frees time the sweep then spends on more trials (up to ``budget.max_trials``):
the runner re-estimates from the trials so far and starts a trial only when it can finish before the sweep's
share of the budget ends (:func:`fits`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# The share of the budget the fit leaves unplanned: the stages' own jitter and a machine busier than at
# calibration. The runner's re-estimation absorbs the rest.
HEADROOM = 0.05
# CPU training time against threads: t threads take 1 / t**THREAD_EXPONENT of one thread's time. An assumption
# (a small model's matmuls do not split perfectly across cores), not a measurement: on a loaded shared VM two
# threads were not measurable apart from one. Lanes of one thread each scale linearly, so the fit prefers them.
THREAD_EXPONENT = 0.6
# A sweep compares trials: fewer than two is a single run with a sweep's overhead.
MIN_SWEEP_TRIALS = 2
# AutoML's share of a budget (its FLAML search; the one-liner it must beat comes first and is always kept).
AUTOML_SHARE = 0.1
MIN_AUTOML_S = 10
# A trial is killed past this multiple of its expected duration: a guard against a hung process, loose
# enough that a trial slowed by a busy machine still finishes with its model.
TRIAL_TIMEOUT_FACTOR = 2.0


@dataclass(frozen=True)
class Throughput:
    """Seconds one trial spends, by what it does, at ``threads`` CPU threads (or on one GPU)."""

    train_example_s: float  # forward + backward + optimizer step, per training example
    eval_example_s: float  # forward, per validation example
    trial_overhead_s: float  # everything a trial does besides its epochs
    threads: int = 1
    basis: str = ""  # where the figures come from, printed with the plan
    # 0 on a machine whose cores are all busy already: a second thread then finds no free core.
    thread_exponent: float = THREAD_EXPONENT

    def at_threads(self, threads: int) -> "Throughput":
        speedup = (max(1, threads) / self.threads) ** self.thread_exponent
        return dataclasses.replace(
            self,
            train_example_s=self.train_example_s / speedup,
            eval_example_s=self.eval_example_s / speedup,
            threads=max(1, threads),
        )


@dataclass(frozen=True)
class Workload:
    train_rows: int
    val_rows: int
    evals_per_epoch: int = 1


def epoch_seconds(speed: Throughput, work: Workload) -> float:
    return work.train_rows * speed.train_example_s + work.evals_per_epoch * work.val_rows * speed.eval_example_s


def trial_seconds(speed: Throughput, work: Workload, epochs: float) -> float:
    return speed.trial_overhead_s + epochs * epoch_seconds(speed, work)


@dataclass(frozen=True)
class StageCosts:
    """Seconds of the stages outside training (AutoML's search aside, which is its own time budget)."""

    data: float  # process start, plan, data preparation
    automl: float  # AutoML's fixed part: features, refitting, re-scoring the pick on fresh folds
    select: float
    register: float
    deploy: float
    report: float


# The default run's summary.json ``run.stage_seconds`` from a fresh venv on the idle 2-core dev VM
# (docs/performance.md; its start-up less the calibration it ran first): what a machine's first plan assumes;
# every budgeted run then keeps its own (finetune.plan.calibration.learn).
LOCAL_STAGES = StageCosts(data=10.0, automl=3.0, select=14.0, register=1.0, deploy=12.0, report=4.0)


@dataclass
class Estimate:
    """What the planner chose and what it expects: the plan carries it, the view prints it, the runner and the
    report compare the run with it."""

    budget_s: float
    trials: int  # expected trials (none stopped early)
    max_trials: int  # the most the sweep may start when a policy frees time
    epochs: float
    concurrency: int
    threads: int
    trial_s: float  # one trial's expected seconds
    trial_overhead_s: float  # of which the part that does not grow with epochs
    trial_timeout_s: int
    sweep_s: float  # the sweep's share of the budget: no trial starts that cannot end within it
    automl_s: Optional[int]  # AutoML's search budget (None: no AutoML stage)
    stages: Dict[str, float] = field(default_factory=dict)  # expected wall seconds per stage
    basis: str = ""
    reason: str = ""
    cost_usd: Optional[float] = None  # AML: the expected cost (the plan's bound is printed beside it)
    calibration_s: float = 0.0  # locally: the calibration this run measured before planning (in ``data``)
    sweep: bool = True  # False: one training at the configured settings (the plan's search is dropped)
    extra_trials: int = 0  # shorter trials the runner starts in what the planned ones leave
    extra_epochs: float = 0.0

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


@dataclass(frozen=True)
class Request:
    """Everything the fit reads: the budget, the measured speed, the data and the limits the config sets."""

    budget_s: float
    speed: Throughput  # at one thread (or one GPU)
    work: Workload
    stages: StageCosts
    max_epochs: float  # model.epochs: the fit never trains longer than configured
    max_trials: int  # budget.max_trials
    lanes: int  # cores (CPU, one thread a trial) or GPUs
    sweep: bool  # False: one training (search=none)
    automl_s: Optional[int]  # the configured AutoML search budget; None without AutoML
    deploy: bool = True
    policy: str = ""  # e.g. "Bandit from epoch 1", for the printed line
    # What the user set on the command line stays as set: the fit works around it.
    fixed_epochs: bool = False  # model.epochs
    fixed_lanes: Optional[int] = None  # search.limits.max_concurrent_trials
    fixed_automl: bool = False  # automl.time_budget_s


class BudgetTooSmall(ValueError):
    """The budget cannot produce a model; ``minimum_s`` is the smallest that can."""

    def __init__(self, minimum_s: float, detail: str):
        super().__init__(detail)
        self.minimum_s = minimum_s
        self.detail = detail


def automl_seconds(request: Request) -> Optional[int]:
    if request.automl_s is None:
        return None
    return int(min(request.automl_s, max(MIN_AUTOML_S, AUTOML_SHARE * request.budget_s)))


def stage_seconds(request: Request, automl_s: Optional[int]) -> Dict[str, float]:
    """Expected seconds of every stage but training, in pipeline order."""
    costs = request.stages
    stages = {"data": costs.data}
    if automl_s is not None:
        stages["automl"] = costs.automl + automl_s
    stages.update(select=costs.select, register=costs.register)
    if request.deploy:
        stages["deploy"] = costs.deploy
    stages["report"] = costs.report
    return stages


def minimum_parts(request: Request) -> tuple:
    """(one 1-epoch trial on every core, every other stage but AutoML's search): what any model costs."""
    others = sum(stage_seconds(dataclasses.replace(request, automl_s=None), None).values())
    if request.automl_s is not None:
        others += request.stages.automl
    return trial_seconds(request.speed.at_threads(request.lanes), request.work, min(1.0, request.max_epochs)), others


def minimum_seconds(request: Request) -> float:
    """The smallest budget that can produce a model. AutoML's search takes its share of whatever the budget
    is (:func:`automl_seconds`), so the smallest budget solves for it."""
    trial, others = minimum_parts(request)
    if request.automl_s is None:
        return (trial + others) / (1 - HEADROOM)
    least = (trial + others + min(request.automl_s, MIN_AUTOML_S)) / (1 - HEADROOM)
    if AUTOML_SHARE * least > MIN_AUTOML_S:
        least = (trial + others) / (1 - HEADROOM - AUTOML_SHARE)
        if AUTOML_SHARE * least > request.automl_s:
            least = (trial + others + request.automl_s) / (1 - HEADROOM)
    return least


def _options(request: Request) -> List[tuple]:
    """(epochs, trials, lanes, trial seconds, threads) of every plan that fits the sweep's share."""
    automl_s = automl_seconds(request)
    available = request.budget_s * (1 - HEADROOM) - sum(stage_seconds(request, automl_s).values())
    lane_choices = (
        [request.fixed_lanes] if request.fixed_lanes else sorted({1, request.lanes}) if request.sweep else [1]
    )
    top = math.ceil(request.max_epochs)
    options = []
    for lanes in lane_choices:
        threads = max(1, request.lanes // lanes)
        speed = request.speed.at_threads(threads)
        for epochs in [request.max_epochs] if request.fixed_epochs else range(top, 0, -1):
            epochs = min(float(epochs), request.max_epochs)
            seconds = trial_seconds(speed, request.work, epochs)
            per_lane = int(available // seconds) if available > 0 else 0
            trials = min(per_lane * lanes, request.max_trials if request.sweep else 1)
            if trials >= 1:
                options.append((epochs, trials, lanes, seconds, threads))
    return options


def fit(request: Request) -> Estimate:
    """The plan that fits ``request.budget_s``; :class:`BudgetTooSmall` when none produces a model."""
    options = _options(request)
    if not options:
        trial, others = minimum_parts(request)
        raise BudgetTooSmall(
            minimum_seconds(request),
            f"one 1-epoch trial ({trial:.0f} s) and the other stages ({others:.0f} s) do not fit",
        )
    # A sweep's trials train as long as configured: shorter ones would compare learning rates by where they
    # stand part-way through a schedule, and hand on a model trained less than the recipe asks.
    enough = (
        [o for o in options if o[1] >= MIN_SWEEP_TRIALS and o[0] >= request.max_epochs] if request.sweep else options
    )
    if not enough:
        # Too few full trials compare nothing, and a random sample of the space is a worse bet than the configured
        # settings (the recipe's): the budget buys one training of those, on every core.
        single = fit(dataclasses.replace(request, sweep=False))
        single.reason = reason_line(single, False, "", request.max_epochs, fewer=True) + _automl_note(single, request)
        return single
    # Depth first (epochs), then breadth (trials), then the plan whose waves of trials end sooner.
    epochs, trials, lanes, seconds, threads = max(enough, key=lambda o: (o[0], o[1], -math.ceil(o[1] / o[2]) * o[3]))
    automl_s = automl_seconds(request)
    others = stage_seconds(request, automl_s)
    waves = math.ceil(trials / lanes)
    # What the whole epochs leave of the share goes to every trial as a part of one more epoch (training stops
    # part-way through it), so the run fills its budget instead of ending a wave early.
    speed = request.speed.at_threads(threads)
    share = request.budget_s * (1 - HEADROOM) - sum(others.values())
    stretched = math.floor((share / waves - speed.trial_overhead_s) / epoch_seconds(speed, request.work) * 10) / 10
    if not request.fixed_epochs and min(stretched, request.max_epochs) > epochs:
        epochs = min(stretched, request.max_epochs)
        seconds = trial_seconds(speed, request.work, epochs)
    training = waves * seconds
    extra_trials, extra_epochs = 0, 0.0
    if request.sweep and trials < request.max_trials:
        # The runner starts shorter trials in what the planned waves leave (:func:`epochs_that_fit`), one a lane:
        # the estimate counts them, or it would print less than the run spends.
        epoch_s = epoch_seconds(speed, request.work)
        room = math.floor((share - training - speed.trial_overhead_s) / epoch_s * 10 + 1e-9) / 10
        if min(room, epochs) >= min(1.0, epochs):
            extra_trials, extra_epochs = min(lanes, request.max_trials - trials), min(room, epochs)
            training += speed.trial_overhead_s + extra_epochs * epoch_s
    spare = request.budget_s * (1 - HEADROOM) - sum(others.values()) - training
    # A training capped at the configured epochs can leave much of the budget unused (a sweep's runner spends
    # its own slack on more trials): AutoML's search gets it, unless its time is set on the command line.
    if not request.sweep and automl_s is not None and not request.fixed_automl and spare >= 1:
        automl_s += int(spare)
        others["automl"] += int(spare)
    stages = {"data": others.pop("data"), "search" if request.sweep else "train": training, **others}
    sweep_share = request.budget_s * (1 - HEADROOM) - sum(others.values()) - stages["data"]
    max_trials = request.max_trials if request.sweep else 1
    estimate = Estimate(
        budget_s=request.budget_s,
        trials=trials,
        max_trials=max(trials, max_trials),
        epochs=epochs,
        concurrency=lanes,
        threads=threads,
        trial_s=round(seconds, 1),
        trial_overhead_s=round(request.speed.trial_overhead_s, 1),
        trial_timeout_s=math.ceil(seconds * TRIAL_TIMEOUT_FACTOR),
        sweep_s=round(sweep_share, 1),
        automl_s=automl_s,
        stages={name: round(value, 1) for name, value in stages.items()},
        basis=request.speed.basis,
        sweep=request.sweep,
        extra_trials=extra_trials,
        extra_epochs=extra_epochs,
    )
    estimate.reason = reason_line(estimate, request.sweep, request.policy, request.max_epochs) + _automl_note(
        estimate, request
    )
    return estimate


def _automl_note(estimate: Estimate, request: Request) -> str:
    grown = estimate.automl_s is not None and estimate.automl_s > (automl_seconds(request) or 0)
    return f"; AutoML searches {estimate.automl_s} s, the time the training leaves" if grown else ""


def reason_line(estimate: Estimate, sweep: bool, policy: str, max_epochs: float, fewer: bool = False) -> str:
    """The plan in one line: what was chosen and why (``2 trials x 2 epochs, 2 at a time, ...``)."""
    epochs = f"{estimate.epochs:g} epoch{'s' if estimate.epochs != 1 else ''}"
    parts = [
        f"{estimate.trials} trial{'s' if estimate.trials != 1 else ''} x {epochs}"
        if sweep
        else f"one training of {epochs}"
    ]
    if sweep:
        threads = f"{estimate.threads} thread{'s' if estimate.threads != 1 else ''}"
        if not estimate.threads:  # a node or GPU per trial: threads are not the planner's
            parts.append(f"{estimate.concurrency} at a time")
        else:
            parts.append(
                f"{estimate.concurrency} at a time ({threads} each)"
                if estimate.concurrency > 1
                else f"one at a time on {threads}"
            )
        if estimate.extra_trials:
            parts.append(f"then {estimate.extra_trials} of {estimate.extra_epochs:g} epochs in what is left")
        if policy and estimate.max_trials > estimate.trials:
            parts.append(f"{policy} (a stopped trial's time goes to more trials, up to {estimate.max_trials})")
        elif policy:
            parts.append(policy)
    if fewer and not sweep:
        parts.append(
            f"at the configured settings: a sweep needs {MIN_SWEEP_TRIALS} trials of {max_epochs:g} epochs "
            "(a larger budget compares trials)"
        )
    elif fewer:
        parts.append(f"only {estimate.trials} trial fits: a larger budget compares trials")
    if not (fewer and sweep) and estimate.epochs < max_epochs:
        parts.append(f"{max_epochs:g} epochs would not fit")
    expected = f"expected {estimate.total_s / 60:.1f} min"
    parts.append(f"{expected} of {estimate.budget_s / 60:.3g}" if estimate.budget_s else expected)
    return ", ".join(parts)


def stages_line(estimate: Estimate) -> str:
    return ", ".join(f"{name} {_duration(seconds)}" for name, seconds in estimate.stages.items())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------------------- while it runs


def expected_trial_seconds(estimate: Estimate, epochs_run: float) -> float:
    """What ``estimate`` expects of a trial that ran ``epochs_run`` epochs (a policy may stop one early)."""
    per_epoch = (estimate.trial_s - estimate.trial_overhead_s) / estimate.epochs
    return estimate.trial_overhead_s + epochs_run * per_epoch


def speed_factor(observed: List[tuple]) -> float:
    """Actual over expected seconds of the trials so far (``(actual, expected)`` pairs; a running trial's
    actual is its projection from its progress): 1.0 with none."""
    expected = sum(e for _, e in observed)
    return sum(a for a, _ in observed) / expected if expected > 0 else 1.0


def training_speed_factor(estimate: Estimate, spent_s: float) -> float:
    """Actual over expected seconds of a single training's epochs (its fixed overhead aside): what the next
    plan scales the calibration by, as a sweep's :func:`speed_factor` does for its trials."""
    planned = estimate.trial_s - estimate.trial_overhead_s
    ran = spent_s - estimate.trial_overhead_s
    return round(ran / planned, 4) if planned > 0 and ran > 0 else 1.0


def epochs_that_fit(estimate: Estimate, left_s: float, factor: float) -> float:
    """The most epochs (in tenths, up to the plan's) a trial can run and still end within ``left_s``, its time
    scaled by ``factor`` (what the trials so far took against the plan); 0 when not even one epoch fits (a
    trial must reach its first evaluation for the policy and the selection to compare it)."""
    per_epoch = (estimate.trial_s - estimate.trial_overhead_s) / estimate.epochs
    room = left_s / factor - estimate.trial_overhead_s
    epochs = min(estimate.epochs, math.floor(room / per_epoch * 10 + 1e-9) / 10)
    return epochs if epochs >= min(1.0, estimate.epochs) else 0.0


def automl_search_left(estimate: Estimate, elapsed_s: float) -> Optional[int]:
    """AutoML's search seconds once training has ended ``elapsed_s`` into the run: what the budget (less its
    headroom) leaves after AutoML's fixed part and the stages still to come, at least :data:`MIN_AUTOML_S`.
    A sweep that could not fill its share (no further trial fitted) hands the rest to AutoML instead of ending
    the run early; one that overran takes it back from AutoML's planned search. None without AutoML."""
    if estimate.automl_s is None or "automl" not in estimate.stages:
        return None
    names = list(estimate.stages)
    still_to_come = sum(estimate.stages[name] for name in names[names.index("automl") + 1 :])
    fixed = estimate.stages["automl"] - estimate.automl_s
    left = estimate.budget_s * (1 - HEADROOM) - elapsed_s - fixed - still_to_come
    return max(MIN_AUTOML_S, int(left))


# ----------------------------------------------------------------------------------------------- after it


def spent(estimate: Estimate, stage_seconds: Dict[str, float]) -> dict:
    """summary.json's ``budget``: each stage's expected and spent seconds, the totals, the share of the budget
    spent and the estimate's error ((expected - spent) / spent; negative: the run took longer than printed)."""
    names = list(dict.fromkeys([*estimate.stages, *stage_seconds]))
    stages = {name: {"expected_s": estimate.stages.get(name), "spent_s": stage_seconds.get(name)} for name in names}
    spent_total = sum(stage_seconds.values())
    expected_total = estimate.total_s
    return {
        "budget_s": estimate.budget_s,
        "plan": estimate.reason,
        "sweep_share_s": estimate.sweep_s,
        "stages": stages,
        "expected_s": round(expected_total, 1),
        "spent_s": round(spent_total, 1),
        "spent_of_budget": round(spent_total / estimate.budget_s, 3) if estimate.budget_s else None,
        "estimate_error": round((expected_total - spent_total) / spent_total, 3) if spent_total else None,
    }


def spent_line(section: dict) -> str:
    error = section["estimate_error"]
    return (
        f"budget: spent {section['spent_s'] / 60:.1f} min of {section['budget_s'] / 60:g} "
        f"({section['spent_of_budget']:.0%}); the plan expected {section['expected_s'] / 60:.1f} min"
        + (f" ({error:+.0%})" if error is not None else "")
    )
