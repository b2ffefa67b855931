"""``python -m finetune``: compose Hydra config groups into run plans and hand each to its launcher.

Hydra composes the config (its compose API, its override grammar, its multirun expansion); this module
owns the process boundary so that user mistakes end as one line on stderr with exit code 2, and so
that ``search.space.<name>=choice(...)``-style overrides become search dimensions instead of Hydra
multirun sweeps. Before a plan runs only the plan-time modules load (no torch, transformers, MLflow, Azure
or optuna; ``tests/test_cli.py`` checks it): ``--help`` and ``dry_run=true`` stay fast.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import shlex
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence

from finetune import launch
from finetune.cli import hydra_args as hydra_cli
from finetune.cli.hydra_args import FLAGS_HELP, ConfigSource, one_line, parse_overrides
from finetune.config import schema as config
from finetune.config.schema import CHOICE_KEYS
from finetune.errors import UserError
from finetune.plan.build import build_plan
from finetune.plan.view import changed_keys, render
from finetune.search.space import distribution_from_override
from finetune.system.processes import interrupt_on_signals

SPACE_PREFIX = "search.space."

EXAMPLES = """\
examples:
  python -m finetune                                   # full local pipeline with the defaults (marked *)
  python -m finetune search=none dataset.sample=600    # one quick fine-tuning run
  python -m finetune dry_run=true                      # validate and print the plan, run nothing
  python -m finetune experiment=quick                  # a few minutes on a CPU (conf/experiment/quick.yaml)
  python -m finetune --cfg job model=bert-base-cased   # the composed config, as YAML
  python -m finetune dataset=file dataset.path=my.csv dataset.text_column=text dataset.label_column=label
  python -m finetune search=bandit search.space.learning_rate='tag(log,interval(1e-5,1e-4))'
  python -m finetune model=bert-base-cased search=bandit compute=a100   # submit to Azure ML
  python -m finetune -m model=bert-base-cased,distilbert-base-cased compute=a100 dry_run=true
"""


def group_options() -> dict[str, list[str]]:
    """Config groups and their options, read from the shipped YAML files (no Hydra import)."""
    conf = resources.files("finetune.conf")
    groups: dict[str, list[str]] = {}
    for entry in sorted(conf.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("_"):
            options = sorted(f.name[:-5] for f in entry.iterdir() if f.name.endswith(".yaml"))
            if options:
                groups[entry.name] = options
    return groups


def default_choices() -> dict[str, str]:
    import yaml

    primary = yaml.safe_load(resources.files("finetune.conf").joinpath("config.yaml").read_text())
    return {k: v for item in primary["defaults"] if isinstance(item, dict) for k, v in item.items()}


def help_text() -> str:
    defaults = default_choices()
    lines = [
        "usage: python -m finetune [-m] [--cfg job|all] [--info] [-cd DIR] [-cn NAME] [--version] [KEY=VALUE ...]",
        "",
        "Fine-tune a transformer text classifier from composed configs: data -> sweep -> AutoML ->",
        "test -> register -> deploy. Local compute runs every stage here; AML compute submits a pipeline.",
        "",
        "config groups (GROUP=OPTION; default marked *):",
    ]
    for group, options in group_options().items():
        if group == "experiment":
            continue
        shown = ", ".join(f"{o}*" if defaults.get(group) == o else o for o in options)
        lines.append(f"  {group:<10} {shown}")
    lines += ["", "experiments (experiment=NAME: an overlay of several groups and keys, from conf/experiment/):"]
    lines += [f"  {name:<14} {about}" for name, about in experiments().items()]
    lines += [
        "",
        "any key can be set: model.learning_rate=3e-5 dataset.sample=500 search.limits.max_total_trials=8",
        "plan_view=full prints every resolved key of the plan instead of the short view.",
        "-m/--multirun: comma lists become one plan each (-m model=a,b); search.space.* sweeps stay dimensions.",
        "outputs: <output_root>/<run_name>/ holds plan.yaml, summary.json, report.md, the model and the splits.",
        "",
        FLAGS_HELP,
        "",
        EXAMPLES,
    ]
    return "\n".join(lines)


def experiments() -> dict[str, str]:
    """Shipped experiment overlays and the first line of their opening comment (what each is for)."""
    folder = resources.files("finetune.conf").joinpath("experiment")
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            comments = [line[2:] for line in entry.read_text().splitlines() if line.startswith("# ")]
            found[entry.name[:-5]] = next((c for c in comments if not c.startswith("@package")), "")
    return found


def expand(args: Sequence[str], multirun: bool) -> List[tuple[list[str], dict]]:
    """Split command-line overrides into one (hydra overrides, search dimensions) pair per plan."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    plain, space = [], {}
    for override in parse_overrides(args):
        key = override.key_or_group
        if key.startswith(SPACE_PREFIX) and override.is_sweep_override():
            space[key[len(SPACE_PREFIX) :]] = distribution_from_override(override)
        elif key.startswith(SPACE_PREFIX) and isinstance(override.value(), dict):
            # A dimension written out as a dict replaces the shipped one instead of merging into it,
            # so changing its distribution type does not leave stale keys behind.
            space[key[len(SPACE_PREFIX) :]] = dict(override.value())
        else:
            plain.append(override)
    sweeps = [o for o in plain if o.is_sweep_override()]
    if sweeps and not multirun:
        keys = ", ".join(o.input_line for o in sweeps)
        raise UserError(
            f"{keys}: a comma list or sweep runs one plan per value only with -m/--multirun "
            "(quote it to pass a string, or use [a,b] for a list)"
        )
    if not multirun:
        return [([o.input_line for o in plain], space)]
    batches = BasicSweeper.split_arguments(plain, max_batch_size=None)
    return [(list(job), space) for batch in batches for job in batch]


def compose(overrides: list[str], space: dict, source=None):
    """Compose the primary config with Hydra into the typed Config; `auto` choices follow the compute."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_config(overrides, space, source))


def compose_config(overrides: list[str], space: dict, source=None, with_hydra: bool = False):
    """The composed DictConfig (with Hydra's own node when `with_hydra`, for --cfg all and --info).

    `source` (a :class:`finetune.cli.hydra_args.ConfigSource`) adds the user's config folders: with -cd holding
    the primary config it is the main folder and the package is searched after it, otherwise the package
    stays main and the folders are appended to its search path.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

    source = source or ConfigSource()
    # Hydra would answer an old key with "Key 'kind' not in 'AutomlConfig'", which does not say what to write.
    for override in parse_overrides(overrides):
        replacement = config.renamed(override.key_or_group)
        if replacement:
            raise UserError(
                f"{override.key_or_group} is now {replacement}: write "
                f"{override.input_line.replace(override.key_or_group, replacement, 1)}"
            )
    config.register()
    GlobalHydra.instance().clear()
    searchpath = [f"file://{path}" if "://" not in path else path for path in source.searchpath]
    primary_in_dir = source.config_dir and (Path(source.config_dir) / f"{source.config_name}.yaml").is_file()
    if primary_in_dir:
        searchpath.append("pkg://finetune.conf")
        initialize = initialize_config_dir(source.config_dir, version_base="1.3")
    else:
        if source.config_dir:
            searchpath.insert(0, f"file://{source.config_dir}")
        initialize = initialize_config_module("finetune.conf", version_base="1.3")
    extra = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    try:
        with initialize:
            cfg = hydra_compose(source.config_name, overrides=overrides + extra, return_hydra_config=with_hydra)
            resolved = _resolve_auto_choices(cfg, overrides)
            if resolved:
                cfg = hydra_compose(
                    source.config_name, overrides=overrides + resolved + extra, return_hydra_config=with_hydra
                )
        with open_dict(cfg):  # new dimensions are new keys in a struct config
            for name, distribution in space.items():
                OmegaConf.update(cfg, f"search.space.{name}", distribution, merge=False)
        # A key the schema lacks (from `+key=value` or a user's config file) would be dropped silently by the
        # typed plan; Hydra's own node is the only extra one, and only for --cfg all / --info.
        unknown = list(_unknown_keys(cfg, config.Config, skip=("hydra",) if with_hydra else ()))
        if unknown:
            raise UserError("; ".join(unknown))
        # Interpolations (`${key}`, `${oc.env:NAME}`) resolve when read: read them all here, where a dangling one
        # is the user's one-line mistake, not a traceback from whichever stage reads it first.
        for key in cfg:
            if key != "hydra" and OmegaConf.is_config(cfg[key]):
                OmegaConf.to_container(cfg[key], resolve=True)
        return cfg
    except InterpolationResolutionError as error:
        # OmegaConf words an unset ${oc.env:NAME} as `KeyError raised while resolving interpolation: "..."`.
        reason = one_line(error).split("while resolving interpolation: ")[-1].strip('"')
        raise UserError(f"{error.full_key}: {reason}") from None
    except (HydraException, OmegaConfBaseException) as error:
        old_key = _renamed_key_in(error)
        if old_key:
            raise UserError(f"{old_key} is now {config.renamed(old_key)}: rename it in your config file") from None
        raise UserError(one_line(error)) from None
    except ValueError as error:
        # Hydra reports some malformed overrides (`=3`: a group override without a group) as a bare ValueError.
        raise UserError(f"cannot apply the overrides {' '.join(overrides)}: {one_line(error)}") from None
    finally:
        GlobalHydra.instance().clear()


def _renamed_key_in(error: BaseException) -> Optional[str]:
    """The renamed key a config file of the user's still sets, when that is what ``error`` (or its cause) is about."""
    while error is not None:
        key = str(getattr(error, "full_key", "") or "")
        if config.renamed(key):
            return key
        # Hydra raises its composition error while handling OmegaConf's, which names the key.
        error = error.__cause__ or error.__context__
    return None


def _unknown_keys(cfg, schema, prefix: str = "", skip: tuple = ()):
    """`key: unknown setting (did you mean ...)` for every key of ``cfg`` that ``schema`` (a dataclass) lacks."""
    hints = typing.get_type_hints(schema)
    fields = {field.name: hints[field.name] for field in dataclasses.fields(schema)}
    for key in cfg.keys():
        if key in skip:
            continue
        replacement = config.renamed(f"{prefix}{key}")
        if key not in fields and replacement:
            yield f"{prefix}{key} is now {replacement}"
        elif key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            yield (
                f"{prefix}{key}: unknown setting"
                + (
                    f"; did you mean {prefix}{close[0]}?"
                    if close
                    else f"; {prefix.rstrip('.') or 'the config'} has {', '.join(fields)}"
                )
            )
        elif dataclasses.is_dataclass(fields[key]) and cfg[key] is not None:
            yield from _unknown_keys(cfg[key], fields[key], f"{prefix}{key}.")


def _resolve_auto_choices(cfg, overrides: list[str]) -> list[str]:
    """`automl=auto`/`endpoint=auto` are the launcher's choice, so `compute=a100` alone is enough."""
    choices = launch.launcher(launch.launcher_name(cfg.compute.target)).auto_choices(cfg)
    return [f"{group}={choice}" for group, choice in choices.items() if cfg[group][CHOICE_KEYS[group]] == "auto"]


def plans(invocation, source, jobs) -> list:
    """Every job's validated plan with the keys that differ from the shipped defaults, before any runs."""
    started = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    defaults = compose([], {})
    built = []
    for i, (overrides, space) in enumerate(jobs):
        cfg = compose(overrides, space, source)
        if cfg.plan_view not in config.PLAN_VIEWS:
            raise UserError(f"plan_view={cfg.plan_view}: use {' or '.join(config.PLAN_VIEWS)}")
        plan = build_plan(cfg, overrides, started, index=i if invocation.multirun else None)
        built.append((plan, changed_keys(cfg, defaults), cfg.plan_view))
    targeted = launch.separate([plan for plan, _, _ in built])
    return [(plan, changed, view) for plan, (_, changed, view) in zip(targeted, built)]


def resume_command(invocation, overrides: list[str], space_lines: list[str], run_name: str) -> str:
    """The command that continues an interrupted run: the same settings, pinned to that run's name."""
    flags = []
    if invocation.config_dir:
        flags += ["-cd", invocation.config_dir]
    if invocation.config_name != "config":
        flags += ["-cn", invocation.config_name]
    kept = [o for o in [*overrides, *space_lines] if not o.startswith("run_name=")]
    return shlex.join(["python", "-m", "finetune", *flags, *kept, f"run_name={run_name}"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    running, resume = None, None
    try:
        invocation = hydra_cli.parse_argv(args)
        if invocation.help:
            print(help_text())
            return 0
        if invocation.version:
            print(hydra_cli.version_line())
            return 0
        source = hydra_cli.config_source(invocation)
        overrides = hydra_cli.apply_hydra_overrides(invocation.overrides, invocation.multirun, source)
        jobs = expand(overrides, invocation.multirun)
        if invocation.cfg or invocation.info:
            for job_overrides, space in jobs:
                cfg = compose_config(job_overrides, space, source, with_hydra=True)
                print(
                    hydra_cli.cfg_text(cfg, invocation.cfg) if invocation.cfg else hydra_cli.info(cfg, invocation.info)
                )
            return 0
        # Build and validate every plan before running any, so a typo in job 3 costs nothing.
        space_lines = [o for o in overrides if o.lstrip("+").startswith(SPACE_PREFIX) and o not in jobs[0][0]]
        built = plans(invocation, source, jobs)
        interrupt_on_signals()  # a terminated run stops what it started, as after Ctrl-C
        for (plan, changed, view), (job_overrides, _) in zip(built, jobs):
            print(render(plan, changed, view), flush=True)
            running = plan
            resume = resume_command(invocation, job_overrides, space_lines, plan.name)
            # Through the module: tests replace launch.run_plan to see the plans without running them.
            launch.run_plan(plan)
            running = None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if running is not None and not running.dry_run:
            print(f"\ninterrupted; {running.run_dir} keeps what finished. Resume with:\n  {resume}", file=sys.stderr)
        else:
            print("error: interrupted", file=sys.stderr)
        return 130
    return 0
