"""Search spaces in Azure ML's vocabulary: one distribution dict per hyperparameter (docs/contracts.md).

The same dict comes from a YAML file (``search.space.learning_rate: {type: loguniform, min: 1e-5,
max: 1e-4}``) and from the command line in Hydra's sweep grammar
(``search.space.learning_rate='tag(log,interval(1e-5,1e-4))'``), so the AML launcher, the local sampler
and the plan printout all read one format. Bounds are real values; AML's natural-log bounds for
loguniform are the AML launcher's business.

Sweep grammar -> distribution (parsed with Hydra's own override objects, never with regexes):

- ``choice(a,b,c)`` or ``a,b,c`` -> ``{type: choice, values: [a, b, c]}``
- ``range(8,33,8)`` -> ``{type: choice, values: [8, 16, 24, 32]}`` (stop excluded, as in Python)
- ``interval(a,b)`` -> uniform; ``tag(log,interval(a,b))`` -> loguniform;
  ``tag(int,interval(a,b))`` -> quniform with q=1; ``tag("q=0.05",interval(a,b))`` -> quniform with that q;
  ``log`` combines with ``int``/``q=`` into qloguniform.

The normal family has no sweep form (an interval has no mean); give it as a dict override, with Hydra's
``+`` for a dimension the search file lacks: ``'+search.space.weight_decay={type:normal,mu:0.01,sigma:0.002}'``.

This module is imported while a plan is validated, so it loads only the standard library (and the training
contract, :mod:`finetune.config.spec`, which declares what is searchable and its legal values); optuna is imported
inside the functions that sample.
"""

from __future__ import annotations

import math
from numbers import Real
from statistics import NormalDist
from typing import Any, Dict, List, Mapping, Tuple

from finetune.config.spec import Hyperparameters, is_integer, legal_range, searchable
from finetune.errors import UserError

# Keys of each distribution, in AML's vocabulary.
DISTRIBUTIONS: Dict[str, Tuple[str, ...]] = {
    "choice": ("values",),
    "randint": ("upper",),
    "uniform": ("min", "max"),
    "loguniform": ("min", "max"),
    "quniform": ("min", "max", "q"),
    "qloguniform": ("min", "max", "q"),
    "normal": ("mu", "sigma"),
    "lognormal": ("mu", "sigma"),
    "qnormal": ("mu", "sigma", "q"),
    "qlognormal": ("mu", "sigma", "q"),
}

# What a sweep may search: the hyperparameters of the training contract, and `model`, a choice of model config
# names (conf/model/<name>.yaml).
SEARCHABLE = searchable() + ("model",)


# ------------------------------------------------------------------------------------ sweep grammar


def distribution_from_override(override) -> dict:
    """The distribution dict of a ``search.space.<name>=<sweep>`` override (a Hydra ``Override``).

    Only the sweep's shape is translated here; whether the values make sense for the hyperparameter is
    checked with every other problem by :func:`space_problems`.
    """
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = override.value()
    where = override.input_line
    if isinstance(sweep, ChoiceSweep):
        _no_tags(sweep, where)
        return {"type": "choice", "values": list(sweep.list)}
    if isinstance(sweep, RangeSweep):
        _no_tags(sweep, where)
        # Counted rather than accumulated: Hydra's own float range() yields 0.30000000000000004 and can
        # overshoot the stop (range(0.1,0.4,0.1) ends with 0.4).
        count = max(0, math.ceil(round((sweep.stop - sweep.start) / sweep.step, 9)))
        return {"type": "choice", "values": [_tidy(sweep.start + i * sweep.step) for i in range(count)]}
    if isinstance(sweep, IntervalSweep):
        log, q = False, None
        for tag in sorted(sweep.tags):
            if tag == "log":
                log = True
            elif tag == "int":
                q = 1
            elif tag.startswith("q="):
                q = _number(tag[2:], where)
            else:
                raise UserError(
                    f"{where}: unknown tag '{tag}'; use log, int or \"q=<step>\" (e.g. tag(log,interval(1e-5,1e-4)))"
                )
        kind = ("q" if q is not None else "") + ("loguniform" if log else "uniform")
        dist = {"type": kind, "min": sweep.start, "max": sweep.end}
        if q is not None:
            dist["q"] = q
        return dist
    raise UserError(
        f"{where}: {type(sweep).__name__.lower()} is not a search dimension; use choice(...), "
        'range(...) or [tag(log|int|"q=<step>",)]interval(min,max)'
    )


def _no_tags(sweep, where: str) -> None:
    if sweep.tags:
        raise UserError(
            f"{where}: tags ({', '.join(sorted(sweep.tags))}) apply to interval(...) only; "
            "drop them or use tag(...,interval(min,max))"
        )


def _number(text: str, where: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f'{where}: q={text} is not a number; write the step as "q=8" or "q=0.05"') from None
    return int(value) if value.is_integer() else value


def _tidy(value: Any) -> Any:
    """Float steps leave residue (0.30000000000000004); keep the 12 significant digits meant."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


# --------------------------------------------------------------------------------------------- checks


def space_problems(space: Mapping[str, Any], sampling: str, model_names: List[str]) -> List[str]:
    """Every problem of a search space, one line each ("key=value: problem; fix")."""
    problems: List[str] = []
    for name, dist in space.items():
        key = f"search.space.{name}"
        if name not in SEARCHABLE:
            problems.append(f"{key}: unknown hyperparameter; search one of {', '.join(SEARCHABLE)}")
            continue
        if not isinstance(dist, Mapping) or "type" not in dist:
            problems.append(f"{key}={dist}: not a distribution; write e.g. {{type: choice, values: [16, 32]}}")
            continue
        kind = dist["type"]
        if kind not in DISTRIBUTIONS:
            problems.append(f"{key}.type={kind}: unknown distribution; use one of {', '.join(DISTRIBUTIONS)}")
            continue
        shape = _shape_problems(key, dist)
        if shape:
            problems += shape
            continue
        if sampling == "grid" and kind != "choice":
            problems.append(
                f"{key}={describe(dist)}: grid sampling enumerates choice dimensions only (as on AML); "
                "use choice(...) or sampling random/bayesian"
            )
        problems += _value_problems(name, key, dist, model_names)
    return problems


def _shape_problems(key: str, dist: Mapping[str, Any]) -> List[str]:
    kind, needed = dist["type"], DISTRIBUTIONS[dist["type"]]
    missing = [k for k in needed if k not in dist]
    extra = [k for k in dist if k not in needed and k != "type"]
    if missing or extra:
        return [
            f"{key}: {kind} takes {', '.join(needed)}"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + (f" (unexpected {', '.join(extra)})" if extra else "")
            + f"; write {{type: {kind}, {', '.join(f'{k}: ...' for k in needed)}}}"
        ]
    if kind == "choice":
        values = dist["values"]
        if not isinstance(values, (list, tuple)) or not values:
            return [f"{key}.values={values}: empty choice; list at least one value"]
        odd = [v for v in values if not isinstance(v, (str, bool, Real))]
        return (
            [f"{key}.values={list(values)}: {odd[0]} is not a number or a name; choose among plain values"]
            if odd
            else []
        )
    numbers = [k for k in needed if not isinstance(dist[k], Real) or isinstance(dist[k], bool)]
    if numbers:
        return [f"{key}.{k}={dist[k]}: must be a number" for k in numbers]
    problems = []
    if kind == "randint" and (dist["upper"] < 1 or not float(dist["upper"]).is_integer()):
        problems.append(f"{key}.upper={dist['upper']}: randint needs a whole upper >= 1 (values 0..upper-1)")
    if "min" in needed and dist["min"] >= dist["max"]:
        problems.append(f"{key}.min={dist['min']}: min >= max={dist['max']}; make min smaller than max")
    if kind in ("loguniform", "qloguniform") and min(dist["min"], dist["max"]) <= 0:
        problems.append(
            f"{key}.min={dist['min']}: {kind} bounds must be > 0 (real values, not logs); e.g. min: 1e-5, max: 1e-4"
        )
    if "sigma" in needed and dist["sigma"] <= 0:
        problems.append(f"{key}.sigma={dist['sigma']}: must be > 0")
    if "q" in needed and dist["q"] <= 0:
        problems.append(f"{key}.q={dist['q']}: must be > 0")
    return problems


def _value_problems(name: str, key: str, dist: Mapping[str, Any], model_names: List[str]) -> List[str]:
    """Values a trial would be started with must be legal for the hyperparameter (bounded distributions)."""
    kind = dist["type"]
    if name == "model":
        if kind != "choice":
            return [
                f"{key}={describe(dist)}: model is searched as a choice of model configs; "
                f"e.g. choice({','.join(model_names[:2])})"
            ]
        unknown = [v for v in dist["values"] if v not in model_names]
        return (
            [
                f"{key}.values={list(dist['values'])}: no model config named {', '.join(map(str, unknown))}; "
                f"use names of conf/model/*.yaml: {', '.join(model_names)}"
            ]
            if unknown
            else []
        )
    integer, rule = is_integer(Hyperparameters, name), legal_range(Hyperparameters, name)
    legal, legal_text = rule.contains, rule.describe()
    if kind == "choice":
        bad = [
            v
            for v in dist["values"]
            if isinstance(v, (str, bool)) or not legal(v) or (integer and not float(v).is_integer())
        ]
        return (
            [
                f"{key}.values={list(dist['values'])}: {bad[0]} is not a legal {name} (must be {legal_text}"
                f"{', whole' if integer else ''})"
            ]
            if bad
            else []
        )
    if integer and kind in ("uniform", "loguniform", "normal", "lognormal"):
        return [f"{key}={describe(dist)}: {name} is a whole number; use choice, randint or q{kind} with a whole q"]
    if integer and "q" in dist and not float(dist["q"]).is_integer():
        return [f"{key}.q={dist['q']}: {name} is a whole number; use a whole q"]
    if kind == "randint":
        low, high = 0, dist["upper"] - 1
    elif "min" in dist:
        low, high = dist["min"], dist["max"]
        if "q" in dist:  # q-rounding can land half a step outside the bounds
            low, high = round(low / dist["q"]) * dist["q"], round(high / dist["q"]) * dist["q"]
    elif kind in ("lognormal", "qlognormal"):
        low, high = 0.0 if kind == "qlognormal" else math.ulp(0.0), math.inf
    else:  # normal, qnormal: unbounded
        low, high = -math.inf, math.inf
    outside = [v for v in (low, high) if not legal(v)]
    if not outside:
        return []
    if math.isinf(outside[0]):
        return [
            f"{key}={describe(dist)}: {kind} is unbounded {'below' if outside[0] < 0 else 'above'}, but {name} "
            f"must be {legal_text}; use a bounded distribution (choice, uniform, loguniform)"
        ]
    return [
        f"{key}={describe(dist)}: can sample {outside[0]:g}, but {name} must be {legal_text}; narrow the distribution"
    ]


def describe(dist: Mapping[str, Any]) -> str:
    """`loguniform(min=1e-05, max=0.0001)`: a distribution on one line, for messages and tables."""
    args = ", ".join(f"{k}={dist[k]}" for k in DISTRIBUTIONS.get(dist.get("type"), ()) if k in dist)
    return f"{dist.get('type')}({args})"


# ------------------------------------------------------------------------------------------- sampling

# Quantiles are kept this far inside (0, 1): the inverse CDF is infinite at the ends (|z| stays below about 7).
_QUANTILE_EDGE = 1e-12


def latent_distribution(dist: Mapping[str, Any]):
    """The optuna distribution a sampler draws for `dist`; :func:`value_from_latent` maps the draw to a value.

    choice/randint/uniform/loguniform are drawn directly. The q-variants are drawn continuously and
    rounded as AML defines them (``round(x / q) * q``), and the normal family is drawn as a uniform
    quantile u in (0, 1) mapped through the inverse normal CDF, because optuna has no normal
    distribution: random sampling of u gives exactly the normal law, and TPE models u unchanged.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = dist["type"]
    if kind == "choice":
        return CategoricalDistribution(list(dist["values"]))
    if kind == "randint":
        return IntDistribution(0, int(dist["upper"]) - 1)
    if kind in ("uniform", "quniform"):
        return FloatDistribution(float(dist["min"]), float(dist["max"]))
    if kind in ("loguniform", "qloguniform"):
        return FloatDistribution(float(dist["min"]), float(dist["max"]), log=True)
    return FloatDistribution(_QUANTILE_EDGE, 1.0 - _QUANTILE_EDGE)


def value_from_latent(name: str, dist: Mapping[str, Any], latent: Any) -> Any:
    """The hyperparameter value of a latent draw (see :func:`latent_distribution`), typed for the CLI."""
    kind = dist["type"]
    value = latent
    if kind in ("normal", "lognormal", "qnormal", "qlognormal"):
        value = NormalDist(dist["mu"], dist["sigma"]).inv_cdf(latent)
        if "lognormal" in kind:
            value = math.exp(value)
    if kind.startswith("q"):
        value = _tidy(float(round(value / dist["q"]) * dist["q"]))
    if name != "model" and is_integer(Hyperparameters, name):
        return int(round(value))
    return value


def latent_of_value(name: str, dist: Mapping[str, Any], value: Any) -> Any:
    """The latent draw that :func:`value_from_latent` maps to `value`, or None when `dist` cannot yield `value`."""
    kind = dist["type"]
    if kind == "choice":
        return value if value in dist["values"] else None
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    if kind == "randint":
        return int(value) if float(value).is_integer() and 0 <= value < dist["upper"] else None
    if kind.startswith("q") and _tidy(float(round(value / dist["q"]) * dist["q"])) != _tidy(float(value)):
        return None
    if "min" in dist:
        return float(value) if dist["min"] <= value <= dist["max"] else None
    if "lognormal" in kind:
        if value <= 0:
            return None
        value = math.log(value)
    latent = NormalDist(dist["mu"], dist["sigma"]).cdf(value)
    return latent if _QUANTILE_EDGE <= latent <= 1.0 - _QUANTILE_EDGE else None


def grid_size(space: Mapping[str, Any]) -> int:
    """Points of a grid over choice dimensions (grid sampling allows nothing else)."""
    return math.prod(len(dist["values"]) for dist in space.values())
