"""The emulator's early-termination service (tests/amlemu/policies.py, written from Microsoft's documents) and the
project's rules (finetune.search.policies.should_stop) decide the same on the same metric streams.

The two are separate implementations of AML's documented semantics; a disagreement means one of them misreads
the documents. Streams are interleaved as concurrent trials report (ties, NaN reports, delays, intervals, both
goals, runs that end early), and every report is a decision point for both.
"""

from __future__ import annotations

import math
import random

import pytest

from amlemu.policies import TerminationService
from finetune.config.schema import PolicyConfig
from finetune.search.policies import should_stop


def random_policy(rng: random.Random) -> dict:
    kind = rng.choice(["bandit", "median", "truncation"])
    policy = {
        "type": kind,
        "evaluation_interval": rng.choice([1, 1, 2, 3]),
        "delay_evaluation": rng.choice([0, 0, 1, 3, 5]),
    }
    if kind == "bandit":
        key = rng.choice(["slack_factor", "slack_amount"])
        policy[key] = rng.choice([0.0, 0.05, 0.1, 0.2, 0.5])
    elif kind == "truncation":
        policy["truncation_percentage"] = rng.choice([1, 10, 20, 25, 34, 50, 75, 99])
        policy["exclude_finished_jobs"] = rng.random() < 0.5
    return policy


def random_streams(rng: random.Random) -> dict:
    """Per run, the values it would report; a coarse grid of values makes ties common."""
    streams = {}
    for run in range(rng.randint(1, 7)):
        length = rng.randint(1, 8)
        values = [round(rng.uniform(0.3, 0.9), 1) for _ in range(length)]
        if rng.random() < 0.1:
            values[rng.randrange(length)] = math.nan
        streams[f"run{run}"] = values
    return streams


def replay(policy: dict, goal: str, streams: dict, rng: random.Random) -> list:
    """Interleave the runs' reports (each run in its own order); return every decision on which the two differ."""
    service = TerminationService(policy, goal)
    config = PolicyConfig(**policy)
    pending = {run: list(values) for run, values in streams.items()}
    curves, ended, disagreements = {}, set(), []
    while pending:
        run = rng.choice(sorted(pending))
        value = pending[run].pop(0)
        curves.setdefault(run, []).append(value)
        emulator = service.on_report(run, value) is not None
        project = should_stop(config, goal, curves, run, finished=ended)
        if emulator != project:
            disagreements.append(
                {
                    "run": run,
                    "interval": len(curves[run]),
                    "emulator": emulator,
                    "project": project,
                    "curves": {r: list(c) for r, c in curves.items()},
                    "ended": sorted(ended),
                }
            )
        if emulator or not pending[run]:
            del pending[run]
            ended.add(run)
            service.end(run)
    return disagreements


def test_the_two_implementations_decide_the_same_on_random_streams():
    rng = random.Random(20261206)
    decided = 0
    for case in range(3000):
        policy, goal, streams = random_policy(rng), rng.choice(["maximize", "minimize"]), random_streams(rng)
        found = replay(policy, goal, streams, rng)
        assert not found, f"case {case}: {policy} {goal}: {found[0]}"
        decided += sum(len(values) for values in streams.values())
    assert decided > 10000


@pytest.mark.parametrize(
    "policy, goal, curves, run, stops",
    [
        # AML's worked Bandit example: best 0.8 at interval 10, slack_factor 0.2 -> runs below 0.8/1.2 = 0.667 stop.
        ({"type": "bandit", "slack_factor": 0.2}, "maximize", {"a": [0.8], "b": [0.66]}, "b", True),
        ({"type": "bandit", "slack_factor": 0.2}, "maximize", {"a": [0.8], "b": [0.67]}, "b", False),
        # slack_amount 0.2: below 0.6 stops, 0.6 itself is within the slack.
        ({"type": "bandit", "slack_amount": 0.2}, "maximize", {"a": [0.8], "b": [0.6]}, "b", False),
        ({"type": "bandit", "slack_amount": 0.2}, "minimize", {"a": [0.2], "b": [0.45]}, "b", True),
        # delay_evaluation 5: nothing is decided before the 5th report, whatever the values.
        (
            {"type": "bandit", "slack_amount": 0.0, "delay_evaluation": 5},
            "maximize",
            {"a": [0.9] * 5, "b": [0.1] * 4},
            "b",
            False,
        ),
        # evaluation_interval 2: the 3rd report is not an evaluation point.
        (
            {"type": "median", "evaluation_interval": 2},
            "maximize",
            {"a": [0.9] * 3, "b": [0.9] * 3, "c": [0.1] * 3},
            "c",
            False,
        ),
        # A lone run's best is never worse than its own running average (0.7 x 3 averages 0.6999999999999998 in binary).
        ({"type": "median"}, "minimize", {"a": [0.7, 0.7, 0.7]}, "a", False),
        # Median: c's best 0.5 is below the median running average (0.6) of a, b and c over intervals 1:2.
        ({"type": "median"}, "maximize", {"a": [0.6, 0.8], "b": [0.5, 0.7], "c": [0.5, 0.5]}, "c", True),
        # A young run is compared with older runs' first N reports only: a's later 0.99 does not count at interval 1.
        ({"type": "bandit", "slack_amount": 0.1}, "maximize", {"a": [0.5, 0.99], "b": [0.45]}, "b", False),
        # Truncation 20% of 5 runs at this interval: only the single lowest goes; ties are both kept.
        (
            {"type": "truncation", "truncation_percentage": 20},
            "maximize",
            {"a": [0.9], "b": [0.8], "c": [0.7], "d": [0.6], "e": [0.5]},
            "e",
            True,
        ),
        (
            {"type": "truncation", "truncation_percentage": 20},
            "maximize",
            {"a": [0.9], "b": [0.8], "c": [0.7], "d": [0.5], "e": [0.5]},
            "e",
            False,
        ),
    ],
)
def test_documented_examples(policy, goal, curves, run, stops):
    service = TerminationService(policy, goal)
    for name, values in curves.items():
        if name != run:
            for value in values:
                service.on_report(name, value)
    decisions = [service.on_report(run, value) for value in curves[run]]
    assert (decisions[-1] is not None) is stops, decisions
    assert should_stop(PolicyConfig(**policy), goal, curves, run) is stops
