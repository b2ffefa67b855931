"""Search spaces: YAML and Hydra's sweep grammar give the same distributions; every bad sweep config is
reported by the CLI as one line with exit code 2; sampled values follow AML's definitions."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest
from omegaconf import OmegaConf

from finetune.cli import hydra_args as hydra_cli
from finetune.cli import main as cli
from finetune.config.model_files import model_config_names
from finetune.errors import UserError
from finetune.plan.build import CHECKS, build_plan
from finetune.search.space import (
    distribution_from_override,
    latent_distribution,
    latent_of_value,
    value_from_latent,
)
from finetune.search.validation import check_search


def parse(line: str):
    return hydra_cli.parse_overrides([line])[0]


# (sweep grammar, the same distribution in YAML)
ROUND_TRIPS = [
    ("choice(8,16,32)", "{type: choice, values: [8, 16, 32]}"),
    ("8,16,32", "{type: choice, values: [8, 16, 32]}"),
    ("range(8,33,8)", "{type: choice, values: [8, 16, 24, 32]}"),
    ("range(0.1,0.4,0.1)", "{type: choice, values: [0.1, 0.2, 0.3]}"),
    ("choice(minilm-l6,bert-base-cased)", "{type: choice, values: [minilm-l6, bert-base-cased]}"),
    ("interval(0,0.3)", "{type: uniform, min: 0, max: 0.3}"),
    ("tag(log,interval(1e-5,1e-4))", "{type: loguniform, min: 1e-5, max: 1e-4}"),
    ("tag(int,interval(1,4))", "{type: quniform, min: 1, max: 4, q: 1}"),
    ('tag("q=0.05",interval(0,0.3))', "{type: quniform, min: 0, max: 0.3, q: 0.05}"),
    ('tag(log,"q=8",interval(8,64))', "{type: qloguniform, min: 8, max: 64, q: 8}"),
]


@pytest.mark.parametrize("sweep,yaml", ROUND_TRIPS, ids=[s for s, _ in ROUND_TRIPS])
def test_sweep_grammar_and_yaml_give_the_same_distribution(sweep, yaml):
    from_yaml = OmegaConf.to_container(OmegaConf.create(f"x: {yaml}"))["x"]
    assert distribution_from_override(parse(f"search.space.x={sweep}")) == from_yaml


def test_command_line_dimensions_reach_the_plan_as_yaml_would_write_them(tmp_path):
    args = [
        "search=bandit",
        "search.space.learning_rate=tag(log,interval(2e-5,8e-5))",
        "search.space.batch_size=choice(8,16)",
        f"output_root={tmp_path}",
    ]
    [(overrides, space)] = cli.expand(args, multirun=False)
    plan = build_plan(cli.compose(overrides, space), overrides, "t")
    assert plan.search.space == {
        "learning_rate": {"type": "loguniform", "min": 2e-5, "max": 8e-5},
        "batch_size": {"type": "choice", "values": [8, 16]},
    }


@pytest.mark.parametrize(
    "sweep,message",
    [
        ("glob(*)", "not a search dimension"),
        ("tag(log,choice(1,2))", "tags (log) apply to interval(...) only"),
        ("tag(cube,interval(1,2))", "unknown tag 'cube'"),
        ('tag("q=x",interval(1,2))', "q=x is not a number"),
    ],
)
def test_sweeps_that_are_no_distribution_are_refused_with_the_override_named(sweep, message):
    with pytest.raises(UserError, match=None) as error:
        distribution_from_override(parse(f"search.space.batch_size={sweep}"))
    assert message in str(error.value) and "search.space.batch_size=" in str(error.value)


# ------------------------------------------------------------------------------------------ validation

BAD_CONFIGS = [
    (["search.space.batch_size={type:choice,values:[]}"], "search.space.batch_size.values=[]: empty choice"),
    (["search.space.learning_rate=interval(0.1,0.01)"], "search.space.learning_rate.min=0.1: min >= max=0.01"),
    (["search.space.learning_rate=tag(log,interval(0,1e-4))"], "loguniform bounds must be > 0"),
    (
        ["search=grid", "search.space.learning_rate=interval(1e-5,1e-4)"],
        "grid sampling enumerates choice dimensions only",
    ),
    (["search=bayesian", "search.policy.type=median"], "bayesian sampling takes no early-termination policy"),
    (["search.policy.slack_amount=0.05"], "Bandit takes one of them"),
    (["search.policy.slack_factor=null"], "Bandit needs slack_factor (ratio) or slack_amount"),
    (["search.policy.slack_factor=-0.1"], "search.policy.slack_factor=-0.1: slack cannot be negative"),
    (["search=truncation", "search.policy.truncation_percentage=0"], "truncation_percentage=0: must be a whole"),
    (["search=truncation", "search.policy.truncation_percentage=100"], "truncation_percentage=100"),
    (["search.limits.max_total_trials=0"], "search.limits.max_total_trials=0: must be >= 1"),
    (["search.limits.trial_timeout=0"], "search.limits.trial_timeout=0: must be >= 1 (seconds)"),
    (["search.limits.max_concurrent_trials=8"], "max_concurrent_trials=8: more than max_total_trials=6"),
    (
        ["+search.space.dropout={type:uniform,min:0,max:0.5}"],
        "search.space.dropout: unknown hyperparameter; search one of learning_rate, batch_size, epochs",
    ),
    (
        ["search.space.learning_rate={type:beta,min:0,max:1}"],
        "search.space.learning_rate.type=beta: unknown distribution; use one of choice, randint, uniform",
    ),
    (
        ["search.primary_metric=val_f1"],
        "search.primary_metric=val_f1: training does not log it; use one of val_loss, val_accuracy",
    ),
    (["search.goal=up"], "search.goal=up: use maximize or minimize"),
    (["+search.space.model={type:choice,values:[minilm-l6,gpt-9]}"], "no model config named gpt-9"),
    (["search.space.batch_size=interval(8,64)"], "batch_size is a whole number"),
    (["+search.space.warmup_ratio={type:uniform,min:0,max:1.5}"], "can sample 1.5, but warmup_ratio must be in [0, 1)"),
    (
        ["~search.space.learning_rate", "+search.space.learning_rate={type:normal,mu:3e-5,sigma:1e-5}"],
        "normal is unbounded below, but learning_rate must be > 0",
    ),
]


@pytest.mark.parametrize("args,message", BAD_CONFIGS, ids=[m.split(":")[0][:60] for _, m in BAD_CONFIGS])
def test_bad_sweep_config_is_one_line_on_stderr_with_exit_code_2(args, message, capsys, tmp_path):
    argv = ["search=bandit", *args, "dry_run=true", f"output_root={tmp_path}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: invalid config") and err.count("\n") == 1


def test_a_space_without_a_sweep_is_a_problem(tmp_path):
    overrides = ["search=none", f"output_root={tmp_path}"]
    plan = build_plan(cli.compose(overrides, {}), overrides, "t")
    plan.search.space = {"learning_rate": {"type": "choice", "values": [1e-5, 2e-5]}}
    assert check_search(plan) == [
        "search.space=['learning_rate']: search.sampling=none runs no sweep; "
        "use search=bandit (or random, grid, bayesian) to search these"
    ]


def test_every_problem_is_reported_at_once(capsys, tmp_path):
    argv = [
        "search=bandit",
        "search.space.learning_rate=tag(log,interval(0,1e-4))",
        "search.policy.slack_amount=0.1",
        "search.goal=up",
        "search.limits.max_total_trials=0",
        "dry_run=true",
        f"output_root={tmp_path}",
    ]
    assert cli.main(argv) == 2
    assert "invalid config (4 problems)" in capsys.readouterr().err


def test_every_shipped_search_option_validates_and_check_search_is_a_plan_check(tmp_path):
    assert check_search in CHECKS
    for option in ("bandit", "random", "grid", "bayesian", "median", "truncation", "none"):
        overrides = [f"search={option}", f"output_root={tmp_path}"]
        plan = build_plan(cli.compose(overrides, {}), overrides, "t")
        assert check_search(plan) == []
        assert plan.stages[1] == ("train" if option == "none" else "search")


def test_every_training_hyperparameter_is_searchable_and_so_are_model_configs():
    from finetune.config.spec import Hyperparameters
    from finetune.search.space import SEARCHABLE

    assert set(SEARCHABLE) == {item.name for item in dataclasses.fields(Hyperparameters)} | {"model"}
    assert {"minilm-l6", "bert-base-cased"} <= set(model_config_names())


# -------------------------------------------------------------------------------------------- sampling


def test_q_distributions_round_as_aml_defines_them_and_whole_hyperparameters_are_ints():
    quniform = {"type": "quniform", "min": 8, "max": 64, "q": 8}
    assert value_from_latent("batch_size", quniform, 21.0) == 24
    assert isinstance(value_from_latent("batch_size", quniform, 21.0), int)
    assert value_from_latent("warmup_ratio", {"type": "quniform", "min": 0, "max": 0.3, "q": 0.1}, 0.26) == 0.3
    assert (
        value_from_latent("learning_rate", {"type": "qloguniform", "min": 1e-5, "max": 1e-4, "q": 1e-5}, 2.6e-5) == 3e-5
    )
    randint = latent_distribution({"type": "randint", "upper": 4})
    assert (randint.low, randint.high) == (0, 3)


def test_normal_family_is_the_normal_law_through_its_quantile():
    normal = {"type": "normal", "mu": 0.01, "sigma": 0.002}
    assert value_from_latent("weight_decay", normal, 0.5) == pytest.approx(0.01)
    rng = random.Random(0)
    draws = [value_from_latent("weight_decay", normal, rng.random()) for _ in range(4000)]
    assert statistics.fmean(draws) == pytest.approx(0.01, abs=2e-4)
    assert statistics.stdev(draws) == pytest.approx(0.002, rel=0.05)
    lognormal = {"type": "qlognormal", "mu": 3.0, "sigma": 0.5, "q": 1}
    assert value_from_latent("max_length", lognormal, 0.5) == 20  # round(e**3) = round(20.09)


@pytest.mark.parametrize(
    "dist, value",
    [
        ({"type": "choice", "values": [16, 32]}, 32),
        ({"type": "randint", "upper": 5}, 3),
        ({"type": "uniform", "min": 0.0, "max": 0.2}, 0.1),
        ({"type": "loguniform", "min": 1e-5, "max": 1e-4}, 1e-4),
        ({"type": "quniform", "min": 0.0, "max": 0.3, "q": 0.05}, 0.15),
        ({"type": "normal", "mu": 0.01, "sigma": 0.002}, 0.012),
        ({"type": "lognormal", "mu": -9.0, "sigma": 0.5}, 1.5e-4),
    ],
)
def test_a_value_the_distribution_can_draw_has_a_latent_that_maps_back_to_it(dist, value):
    latent = latent_of_value("weight_decay", dist, value)
    assert latent is not None
    assert value_from_latent("weight_decay", dist, latent) == pytest.approx(value)


@pytest.mark.parametrize(
    "dist, value",
    [
        ({"type": "choice", "values": [16, 32]}, 8),
        ({"type": "randint", "upper": 5}, 5),
        ({"type": "loguniform", "min": 1e-5, "max": 1e-4}, 2e-4),
        ({"type": "quniform", "min": 0.0, "max": 0.3, "q": 0.05}, 0.12),
        ({"type": "lognormal", "mu": -9.0, "sigma": 0.5}, 0.0),
    ],
)
def test_a_value_the_distribution_cannot_draw_has_no_latent(dist, value):
    assert latent_of_value("weight_decay", dist, value) is None
