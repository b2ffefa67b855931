"""Hydra's own command-line surface for ``python -m finetune``: its flags, its ``hydra.*`` keys, ``+key`` checks.

The CLI composes with Hydra's compose API rather than ``@hydra.main`` (which would own logging, the output
folder and the working directory), so the flags people know from ``@hydra.main`` apps are implemented here:
``--cfg job|hydra|all``, ``--info``, ``-cd/--config-dir``, ``-cn/--config-name``, ``--version``, ``-m``.
Of the ``hydra.*`` keys, the ones with a meaning here are honoured (``hydra.run.dir`` is the run directory,
``hydra.sweep.dir`` the multirun's output root, ``hydra.searchpath`` more config folders); every other one,
and every ``+key`` that names nothing in the schema, is refused with the closest real key, because an
override that is accepted and ignored is worse than an error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from finetune import __version__
from finetune.errors import UserError

FLAGS_HELP = """\
Hydra flags:
  --cfg job|hydra|all    print the composed config (job: the run's keys; all: with Hydra's) and exit
  --info [searchpath|defaults|all]   print the config search path and the chosen group options, and exit
  -cd, --config-dir DIR  a config folder of your own, searched before the packaged one (groups, experiments,
                         a primary config for -cn)
  -cn, --config-name NAME  the primary config (default: config)
  -m, --multirun         comma lists become one plan each
  --version              print the finetune and Hydra versions
  hydra.run.dir=DIR      the run directory (hydra.sweep.dir=DIR with -m: where the jobs' directories go);
                         hydra.searchpath=[file://DIR] adds a config folder; other hydra.* keys are refused"""

CFG_PARTS = ("job", "hydra", "all")
INFO_PARTS = ("searchpath", "defaults", "all")
HONOURED_HYDRA_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.searchpath", "hydra.job.chdir")


@dataclass
class Invocation:
    """What the command line asked for, before any config is composed."""

    overrides: List[str] = field(default_factory=list)
    multirun: bool = False
    help: bool = False
    version: bool = False
    cfg: Optional[str] = None
    info: Optional[str] = None
    config_dir: Optional[str] = None
    config_name: str = "config"


@dataclass
class ConfigSource:
    """Where the primary config and its groups are looked up: the package, plus the user's folders."""

    config_name: str = "config"
    config_dir: Optional[str] = None
    searchpath: List[str] = field(default_factory=list)


KNOWN_FLAGS = (
    "-h",
    "--help",
    "-m",
    "--multirun",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "-cd",
    "--config-dir",
    "-cn",
    "--config-name",
    "--version",
)


def parse_argv(args: Sequence[str]) -> Invocation:
    """Split Hydra-style flags from KEY=VALUE overrides; an unknown flag names the closest known one."""
    invocation, queue = Invocation(), list(args)
    while queue:
        arg = queue.pop(0)
        if not arg.startswith("-"):
            invocation.overrides.append(arg)
            continue
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in ("-h", "--help"):
            invocation.help = True
        elif flag in ("-m", "--multirun"):
            invocation.multirun = True
        elif flag == "--version":
            invocation.version = True
        elif flag in ("--cfg", "-c"):
            invocation.cfg = inline or _value(queue, flag, CFG_PARTS)
            if invocation.cfg not in CFG_PARTS:
                raise UserError(f"{flag} {invocation.cfg}: use one of {', '.join(CFG_PARTS)}")
        elif flag in ("--info", "-i"):
            invocation.info = inline or (queue.pop(0) if queue and queue[0] in INFO_PARTS else "all")
            if invocation.info not in INFO_PARTS:
                raise UserError(f"{flag} {invocation.info}: use one of {', '.join(INFO_PARTS)}")
        elif flag in ("-cd", "--config-dir"):
            invocation.config_dir = inline or _value(queue, flag)
            if not Path(invocation.config_dir).expanduser().is_dir():
                raise UserError(f"{flag} {invocation.config_dir}: no such folder")
        elif flag in ("-cn", "--config-name"):
            name = inline or _value(queue, flag)
            invocation.config_name = name[:-5] if name.endswith(".yaml") else name
        else:
            close = difflib.get_close_matches(flag, KNOWN_FLAGS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"unknown option {flag}: {hint}use KEY=VALUE overrides (see --help)")
    return invocation


def _value(queue: list, flag: str, choices: Sequence[str] = ()) -> str:
    if not queue or queue[0].startswith("-") or "=" in queue[0] and not choices:
        shown = "|".join(choices) or "VALUE"
        raise UserError(f"{flag} needs a value: {flag} {shown}")
    return queue.pop(0)


def one_line(error: BaseException) -> str:
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
        raise UserError(f"cannot parse override: {one_line(error)}") from None


def config_source(invocation: Invocation) -> ConfigSource:
    directory = str(Path(invocation.config_dir).expanduser().resolve()) if invocation.config_dir else None
    return ConfigSource(config_name=invocation.config_name, config_dir=directory)


# ---------------------------------------------------------------------------------------- hydra.* keys


def apply_hydra_overrides(overrides: Sequence[str], multirun: bool, source: ConfigSource) -> List[str]:
    """The overrides with every ``hydra.*`` key turned into what it means here, or a UserError.

    ``hydra.run.dir=A/B`` becomes ``output_root=A run_name=B``; ``hydra.sweep.dir=D`` (with -m) becomes
    ``output_root=D``; ``hydra.searchpath=[...]`` adds folders to ``source``; ``hydra.job.chdir=false`` is
    what finetune always does (paths in the plan are absolute), so only ``true`` is refused. A directory given
    twice (``hydra.run.dir`` with ``output_root`` or ``run_name``) is refused: one of them would be ignored.
    """
    parsed = parse_overrides(overrides)
    _refuse_two_directories(parsed)
    kept = []
    for override in parsed:
        key = override.key_or_group
        if not key.startswith("hydra.") and key != "hydra":
            kept.append(override.input_line)
            continue
        value = override.value()
        if key == "hydra.run.dir" and not multirun:
            run_dir = Path(_path_value(key, value)).expanduser()
            kept += [f"output_root={run_dir.parent}", f"run_name={run_dir.name}"]
        elif key == "hydra.run.dir":
            raise UserError(
                "hydra.run.dir is one run's directory; with -m/--multirun set hydra.sweep.dir=DIR "
                "(each job gets its own folder under it)"
            )
        elif key == "hydra.sweep.dir" and multirun:
            kept.append(f"output_root={_path_value(key, value)}")
        elif key == "hydra.sweep.dir":
            raise UserError("hydra.sweep.dir applies with -m/--multirun; for one run set hydra.run.dir=DIR")
        elif key == "hydra.searchpath":
            entries = value if isinstance(value, list) else [value]
            source.searchpath += [str(entry) for entry in entries]
        elif key == "hydra.job.chdir" and value in (False, "false"):
            continue
        elif key == "hydra.job.chdir":
            raise UserError(
                "hydra.job.chdir=true: finetune never changes the working directory (every path in "
                "the plan is absolute); drop it, and use hydra.run.dir=DIR to choose the run directory"
            )
        else:
            close = difflib.get_close_matches(key, HONOURED_HYDRA_KEYS, n=1, cutoff=0.7)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"{override.input_line}: {hint}finetune composes with Hydra's compose API and uses only "
                f"{', '.join(HONOURED_HYDRA_KEYS[:3])} (see --help)"
            )
    return kept


# Each Hydra directory key and the finetune keys it sets (see apply_hydra_overrides).
DIRECTORY_KEYS = {"hydra.run.dir": ("output_root", "run_name"), "hydra.sweep.dir": ("output_root",)}


def _refuse_two_directories(parsed) -> None:
    lines = {override.key_or_group: override.input_line for override in parsed}
    for hydra_key, keys in DIRECTORY_KEYS.items():
        clashing = [lines[key] for key in keys if key in lines]
        if hydra_key in lines and clashing:
            raise UserError(
                f"{lines[hydra_key]} and {' '.join(clashing)} both choose the run directory; give "
                f"either {hydra_key}=DIR or {' and '.join(keys)}"
            )


def _path_value(key: str, value) -> str:
    text = str(value)
    if "${" in text:
        raise UserError(f"{key}={text}: interpolations are not resolved in {key}; give a plain path")
    return text


# ------------------------------------------------------------------------------------ --cfg and --info


def cfg_text(cfg, part: str) -> str:
    """The composed config as YAML: the run's keys (job), Hydra's node (hydra), or both (all)."""
    from omegaconf import OmegaConf

    job = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg
        if key != "hydra"
    }
    # Hydra's node refers to runtime values (hydra.job.num) that only exist inside @hydra.main: unresolved.
    hydra_node = {"hydra": OmegaConf.to_container(cfg.hydra, resolve=False)} if "hydra" in cfg else {}
    container = {"job": job, "hydra": hydra_node, "all": {**job, **hydra_node}}[part]
    return OmegaConf.to_yaml(container)


def info(cfg, part: str) -> str:
    """What Hydra's --info shows that matters here: where configs are looked up and which options were chosen."""
    hydra_node = cfg.hydra
    lines = []
    if part in ("searchpath", "all"):
        lines.append("Config search path (first match wins):")
        lines += [
            f"  {s.provider:<12} {s.schema}://{s.path}"
            for s in hydra_node.runtime.config_sources
            if s.provider != "hydra"
        ]
    if part in ("defaults", "all"):
        lines.append("Group options chosen:")
        lines += [
            f"  {group:<12} {choice}"
            for group, choice in hydra_node.runtime.choices.items()
            if not group.startswith("hydra/") and group != "hydra"
        ]
        lines.append(f"Overrides: {' '.join(hydra_node.overrides.task) or '(none)'}")
    return "\n".join(lines)


def version_line() -> str:
    import hydra

    return f"finetune {__version__} (Hydra {hydra.__version__})"
