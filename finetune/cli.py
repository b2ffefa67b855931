"""``python -m finetune``: compose Hydra config groups into run plans and hand each to its launcher.

Hydra composes the config (its compose API, its override grammar, its multirun expansion); this module
owns the process boundary so that user mistakes end as one line on stderr with exit code 2, and so
that ``search.space.<name>=choice(...)``-style overrides become search dimensions instead of Hydra
multirun sweeps. Only the standard library and the config modules load before a plan runs: ``--help``
and ``dry_run=true`` stay fast.
"""
from __future__ import annotations

import datetime as _dt
import sys
from importlib import resources
from typing import List, Optional, Sequence

from finetune.errors import UserError

SPACE_PREFIX = "search.space."

EXAMPLES = """\
examples:
  python -m finetune                                   # full local pipeline with the defaults below
  python -m finetune search=none dataset.sample=600    # one quick fine-tuning run
  python -m finetune dry_run=true                      # validate and print the plan, run nothing
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
        "usage: python -m finetune [-m|--multirun] [KEY=VALUE ...]",
        "",
        "Fine-tune a transformer text classifier from composed configs: data -> sweep -> AutoML ->",
        "test -> register -> deploy. Local compute runs every stage here; AML compute submits a pipeline.",
        "",
        "config groups (GROUP=OPTION; default marked *):",
    ]
    for group, options in group_options().items():
        shown = ", ".join(f"{o}*" if defaults.get(group) == o else o for o in options)
        lines.append(f"  {group:<10} {shown}")
    lines += [
        "",
        "any key can be set: model.learning_rate=3e-5 dataset.sample=500 search.limits.max_total_trials=8",
        "-m/--multirun: comma lists become one plan each (-m model=a,b); search.space.* sweeps stay dimensions.",
        "outputs: <output_root>/<run_name>/ holds plan.yaml, summary.json, report.md, the model and the splits.",
        "",
        EXAMPLES,
    ]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    """Hydra/OmegaConf messages span several lines and chain causes; keep what names the problem."""
    parts = []
    while error is not None:
        text = " ".join(str(error).split())
        # OmegaConf appends a block of "full_key: ... object_type=..." diagnostics; the key is enough.
        for noise in (" full_key:", " object_type=", " Config search path:"):
            text = text.split(noise)[0]
        if text and text not in parts:
            parts.append(text)
        error = error.__cause__
    return ": ".join(parts)


def parse_overrides(args: Sequence[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(args))
    except OverrideParseException as error:
        raise UserError(f"cannot parse override: {_one_line(error)}") from None


def expand(args: Sequence[str], multirun: bool) -> List[tuple[list[str], dict]]:
    """Split command-line overrides into one (hydra overrides, search dimensions) pair per plan."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    plain, space = [], {}
    for override in parse_overrides(args):
        key = override.key_or_group
        if key.startswith(SPACE_PREFIX) and override.is_sweep_override():
            from finetune.search.space import distribution_from_override

            space[key[len(SPACE_PREFIX):]] = distribution_from_override(override)
        elif key.startswith(SPACE_PREFIX) and isinstance(override.value(), dict):
            # A dimension written out as a dict replaces the shipped one instead of merging into it,
            # so changing its distribution type does not leave stale keys behind.
            space[key[len(SPACE_PREFIX):]] = dict(override.value())
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


def compose(overrides: list[str], space: dict):
    """Compose the primary config with Hydra; `auto` group choices are resolved against the compute."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from finetune import config

    config.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("finetune.conf", version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
            resolved = _resolve_auto_choices(cfg, overrides)
            if resolved:
                cfg = hydra_compose("config", overrides=overrides + resolved)
        with open_dict(cfg):  # new dimensions are new keys in a struct config
            for name, distribution in space.items():
                OmegaConf.update(cfg, f"search.space.{name}", distribution, merge=False)
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(_one_line(error)) from None
    finally:
        GlobalHydra.instance().clear()


AUTO_CHOICES = {
    # group: (choice on local compute, choice on AML compute)
    "automl": ("local", "text_classification"),
    "endpoint": ("local", "managed"),
}


def _resolve_auto_choices(cfg, overrides: list[str]) -> list[str]:
    """`automl=auto`/`endpoint=auto` follow the compute target, so `compute=a100` alone is enough."""
    on_aml = cfg.compute.target == "azureml"
    extra = []
    for group, (local_choice, aml_choice) in AUTO_CHOICES.items():
        if cfg[group].kind == "auto":
            choice = aml_choice if on_aml else local_choice
            if group == "automl" and on_aml and cfg.compute.gpus_per_node == 0:
                choice = "none"  # AML AutoML NLP runs only on GPU nodes
            extra.append(f"{group}={choice}")
    return extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(help_text())
        return 0
    multirun = any(a in ("-m", "--multirun") for a in args)
    args = [a for a in args if a not in ("-m", "--multirun")]
    unknown = [a for a in args if a.startswith("-")]
    try:
        if unknown:
            raise UserError(f"unknown option {unknown[0]}: use KEY=VALUE overrides (see --help)")
        from finetune.plan import build_plan

        jobs = expand(args, multirun)
        started = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        # Build and validate every plan before running any, so a typo in job 3 costs nothing.
        plans = [
            build_plan(compose(overrides, space), overrides, started, index=i if multirun else None)
            for i, (overrides, space) in enumerate(jobs)
        ]
        from finetune.launch import run_plan
        from finetune.launch.azureml.checks import distinct_targets

        plans = distinct_targets(plans)
        for plan in plans:
            run_plan(plan)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
