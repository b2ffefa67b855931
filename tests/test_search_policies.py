"""AML's early-termination rules: recorded curves -> which trials stop, at which interval.

Each expected outcome below is worked out by hand from AML's documented rule (quoted in
finetune/search/policies.py), not from the implementation. Every scenario is replayed twice with the
same curves and the same report order: through the pure function ``should_stop`` and through optuna
(a study whose pruner is ``AmlPolicyPruner``, trials reporting and asking ``should_prune`` as training
does). Both must give the expected outcome. Values are binary fractions so that ties are exact.
"""

from __future__ import annotations

import math

import optuna
import pytest

from finetune.config.schema import PolicyConfig
from finetune.search.policies import applies_at, should_stop
from finetune.search.pruners import build_pruner

NAN = math.nan


def bandit(**kw):
    return PolicyConfig(type="bandit", **kw)


def median(**kw):
    return PolicyConfig(type="median", **kw)


def truncation(**kw):
    return PolicyConfig(type="truncation", **kw)


# (id, policy, goal, order, curves, {trial: interval at which it is stopped})
SCENARIOS = [
    # ref at interval 1 is t0's 0.8 -> limit 0.8/1.1 = 0.727: t1 (0.7) and t3 (0.6) stop at 1; t2 (0.78) lives.
    (
        "bandit-factor",
        bandit(slack_factor=0.1),
        "maximize",
        "sequential",
        {"t0": [0.8, 0.85, 0.9], "t1": [0.7, 0.8, 0.92], "t2": [0.78, 0.86, 0.88], "t3": [0.6, 0.95]},
        {"t1": 1, "t3": 1},
    ),
    # Applies at 4 and 6 only (multiples of 2 that are >= 3). Interval 4: ref 0.75 -> limit 0.5: t1 (0.375)
    # stops, t2 (0.5, equal to the limit) lives; interval 6: ref 1.0 -> limit 0.75: t2 (0.625) stops.
    # t3 never reaches interval 4. t4's best of 4 is its first value (1.0): the rule uses the best so far;
    # after t4, ref at 4 is 1.0 and t5 (0.75 = the limit) lives.
    (
        "bandit-amount-interval-delay",
        bandit(slack_amount=0.25, evaluation_interval=2, delay_evaluation=3),
        "maximize",
        "sequential",
        {
            "t0": [0.5, 0.5, 0.5, 0.75, 0.75, 1.0],
            "t1": [0.0, 0.0, 0.0, 0.375, 0.5, 0.5],
            "t2": [0.0, 0.0, 0.0, 0.5, 0.625, 0.625],
            "t3": [0.0, 0.0, 0.0],
            "t4": [1.0, 0.0, 0.0, 0.0],
            "t5": [0.0, 0.0, 0.0, 0.75],
        },
        {"t1": 4, "t2": 6},
    ),
    # Minimize: limit ref * (1 + 0.5). Interval 1: ref 1.0 -> 1.5: t2 (2.0) stops. Interval 2: ref 0.5 ->
    # 0.75: t1 (0.75) lives on the limit, t3 (0.8) stops.
    (
        "bandit-minimize",
        bandit(slack_factor=0.5),
        "minimize",
        "sequential",
        {"t0": [1.0, 0.5], "t1": [1.0, 0.75], "t2": [2.0, 0.8], "t3": [0.9, 0.8]},
        {"t2": 1, "t3": 2},
    ),
    # evaluation_interval 3: t1 reports twice only, so it is never judged however bad it is.
    (
        "bandit-shorter-than-interval",
        bandit(slack_factor=0.1, evaluation_interval=3),
        "maximize",
        "sequential",
        {"t0": [0.9, 0.9, 0.9], "t1": [0.1, 0.1]},
        {},
    ),
    # A NaN report is the worst value: t1 stops at 1 (ref 0.8), though it would have reached 0.9.
    ("bandit-nan", bandit(slack_factor=0.1), "maximize", "sequential", {"t0": [0.8, 0.8], "t1": [NAN, 0.9]}, {"t1": 1}),
    # Interleaved (all trials running), in key order at each interval: t2 reports after t1 and stops at 1
    # (ref 1.0 -> limit 0.909). t0 is as weak, but it reports before t1 at every interval, so it never meets
    # a better run at the same interval and trains to the end: the outcome depends on timing, as on AML.
    (
        "bandit-lockstep",
        bandit(slack_factor=0.1),
        "maximize",
        "lockstep",
        {"t0": [0.5, 0.5, 0.5], "t1": [1.0, 1.0, 1.0], "t2": [0.5, 0.5, 0.5]},
        {"t2": 1},
    ),
    # Median of running averages. t1 at 2: median 0.625 = its best -> lives (a tie is not worse). t2 at 1:
    # averages 0.5, 0.625, 0.25 -> median 0.5 > 0.25 -> stops. t3 at 1: median of 0.5, 0.625, 0.25, 0.5625
    # = 0.53125 < 0.5625 -> lives; at 2 (t2 has one value): averages 0.625, 0.625, 0.5625 -> 0.625 > 0.5625.
    (
        "median",
        median(),
        "maximize",
        "sequential",
        {"t0": [0.5, 0.75], "t1": [0.625, 0.625], "t2": [0.25, 1.0], "t3": [0.5625, 0.5625]},
        {"t2": 1, "t3": 2},
    ),
    # Minimize, delay 2, interleaved: at 2, t0 is alone with two values; t1: averages 0.75 (t0), 1.0 -> median
    # 0.875 < its best 1.0 -> stops; t2: averages 0.75, 1.0, 0.5 -> 0.75 > 0.5 -> lives.
    (
        "median-minimize-delay-lockstep",
        median(delay_evaluation=2),
        "minimize",
        "lockstep",
        {"t0": [1.0, 0.5, 0.25], "t1": [1.0, 1.0, 0.75], "t2": [0.5, 0.5]},
        {"t1": 2},
    ),
    # 25% of k runs = floor(k / 4): nothing is cut below 4 runs. t3 at 1: k 4, cut 1, it is the lowest.
    # t4 at 1: k 5, cut 1, four runs are no better than its 0.625 -> lives; at 2 (t3 left out): k 4, cut 1,
    # its 0.25 is the lowest value *at* interval 2 (t2's 0.5 counts, not its earlier 0.75) -> stops.
    (
        "truncation",
        truncation(truncation_percentage=25),
        "maximize",
        "sequential",
        {"t0": [0.5, 0.75], "t1": [0.625, 0.625], "t2": [0.75, 0.5], "t3": [0.25, 1.0], "t4": [0.625, 0.25]},
        {"t3": 1, "t4": 2},
    ),
    # Ties are never split: four equal runs are never cut at 50%; t4 (0.25) at 1: k 5, cut 2, lowest -> stops.
    (
        "truncation-ties",
        truncation(truncation_percentage=50),
        "maximize",
        "sequential",
        {"t0": [0.5, 0.5], "t1": [0.5, 0.5], "t2": [0.5, 0.5], "t3": [0.5, 0.5], "t4": [0.25]},
        {"t4": 1},
    ),
    # Interleaved; t1, t2, t3 finish at interval 2 before t4 reports there. Finished runs counted: k 4, cut 1,
    # t4 (0.375) is the lowest -> stops at 2.
    (
        "truncation-finished-counted",
        truncation(truncation_percentage=25),
        "maximize",
        "lockstep",
        {"t0": [0.5], "t1": [0.25, 0.5], "t2": [0.75, 0.75], "t3": [0.625, 0.625], "t4": [0.375, 0.375, 0.375]},
        {"t4": 2},
    ),
    # Same curves with exclude_finished_jobs: at 2, t4 is compared with itself only -> nothing is cut.
    (
        "truncation-finished-excluded",
        truncation(truncation_percentage=25, exclude_finished_jobs=True),
        "maximize",
        "lockstep",
        {"t0": [0.5], "t1": [0.25, 0.5], "t2": [0.75, 0.75], "t3": [0.625, 0.625], "t4": [0.375, 0.375, 0.375]},
        {},
    ),
    # Minimize, every second interval: at 2, k 4, cut 1, t3 has the highest loss -> stops.
    (
        "truncation-minimize-interval",
        truncation(truncation_percentage=25, evaluation_interval=2),
        "minimize",
        "sequential",
        {"t0": [1.0, 0.5], "t1": [1.0, 0.75], "t2": [1.0, 0.25], "t3": [0.25, 1.0]},
        {"t3": 2},
    ),
    ("none", PolicyConfig(type="none"), "maximize", "sequential", {"t0": [1.0], "t1": [0.0]}, {}),
]


def schedule(curves: dict, order: str) -> list:
    """Report events (trial, index): one trial after another, or interleaved interval by interval."""
    if order == "sequential":
        return [(t, i) for t, curve in curves.items() for i in range(len(curve))]
    longest = max(len(curve) for curve in curves.values())
    return [(t, i) for i in range(longest) for t, curve in curves.items() if i < len(curve)]


def replay_pure(policy, goal, curves, order) -> dict:
    reported = {t: [] for t in curves}
    finished, stopped = set(), {}
    for t, i in schedule(curves, order):
        if t in stopped:
            continue
        reported[t].append(curves[t][i])
        if should_stop(policy, goal, reported, t, finished):
            stopped[t] = i + 1
            finished.add(t)
        elif i == len(curves[t]) - 1:
            finished.add(t)
    return stopped


def replay_optuna(policy, goal, curves, order) -> dict:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=goal, pruner=build_pruner(policy, goal))
    trials, stopped = {}, {}
    for t, i in schedule(curves, order):
        if t in stopped:
            continue
        if t not in trials:
            trials[t] = study.ask()
        trial = trials[t]
        trial.report(curves[t][i], step=10 * (i + 1))  # steps are not intervals: only their order counts
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            stopped[t] = i + 1
        elif i == len(curves[t]) - 1:
            study.tell(trial, curves[t][i])
    return stopped


@pytest.mark.parametrize("name,policy,goal,order,curves,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_pure_rule_and_optuna_pruner_stop_the_trials_aml_would(name, policy, goal, order, curves, expected):
    assert replay_pure(policy, goal, curves, order) == expected
    assert replay_optuna(policy, goal, curves, order) == expected


@pytest.mark.parametrize(
    "interval_every,delay,applied",
    [
        (1, 0, [1, 2, 3, 4, 5, 6]),
        (1, 5, [5, 6]),
        (2, 3, [4, 6]),
        (5, 0, [5]),
        (3, 6, [6]),
    ],
)
def test_policy_applies_at_every_multiple_of_the_interval_from_the_delay_on(interval_every, delay, applied):
    policy = bandit(slack_factor=0.1, evaluation_interval=interval_every, delay_evaluation=delay)
    assert [n for n in range(1, 7) if applies_at(policy, n)] == applied


def test_only_runs_that_reached_the_interval_are_compared_and_only_up_to_it():
    """Interval N looks at each run's first N values: later values of a longer run do not count."""
    policy = bandit(slack_factor=0.1)
    curves = {"long": [0.5, 1.0], "new": [0.5]}
    assert not should_stop(policy, "maximize", curves, "new")  # ref at 1 is 0.5, not the long run's 1.0
    assert should_stop(policy, "maximize", {"long": [1.0, 1.0], "new": [0.5]}, "new")
