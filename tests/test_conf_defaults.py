"""Shipped YAML sets only what differs from the schema (finetune/config/schema.py, finetune/config/spec.py): a value that repeats
a default is a second place to change when the default moves, and hides which settings an option is about."""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path

import yaml

from finetune.config.schema import Config

CONF = Path(str(resources.files("finetune.conf")))
# Groups another branch was rewriting when this rule came in (issue 26): trimmed when that branch lands.
NOT_YET_TRIMMED: set = set()


def _schema_default(path: tuple):
    """The schema's default at ``path``, or MISSING where the schema has none (a free-form dict's keys)."""
    node: typing.Any = Config
    default: typing.Any = dataclasses.MISSING
    for part in path:
        fields = {item.name: item for item in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return dataclasses.MISSING
        item = fields[part]
        factory = item.default_factory
        default = item.default if factory is dataclasses.MISSING else factory()
        node = typing.get_type_hints(node)[part]
    return default


def _values(data: dict, prefix: tuple):
    for key, value in data.items():
        if not prefix and key == "defaults":
            continue
        if isinstance(value, dict) and dataclasses.is_dataclass(_schema_default(prefix + (key,))):
            yield from _values(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _repeats(value, default) -> bool:
    if default is dataclasses.MISSING or dataclasses.is_dataclass(default):
        return False
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return float(value) == float(default)
    return value == default


def _package(path: Path) -> tuple:
    group = path.relative_to(CONF).parts
    return () if len(group) == 1 or "@package _global_" in path.read_text(encoding="utf-8") else (group[0],)


def test_shipped_yaml_sets_only_what_differs_from_the_schema():
    files = sorted(path for path in CONF.rglob("*.yaml") if path.relative_to(CONF).parts[0] not in NOT_YET_TRIMMED)
    setters: dict = {}
    for path in files:
        for key, _ in _values(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, _package(path)):
            setters.setdefault(key, set()).add(path)
    repeated = []
    for path in files:
        for key, value in _values(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, _package(path)):
            # `name` says which option a file is; a global overlay may reset a key another file sets.
            resets = "@package _global_" in path.read_text(encoding="utf-8") and setters[key] - {path}
            if key[-1] != "name" and not resets and _repeats(value, _schema_default(key)):
                repeated.append(f"{path.relative_to(CONF)}: {'.'.join(key)}: {value!r}")
    assert not repeated, "drop these values, the schema default is the same: " + "; ".join(repeated)


def test_the_check_sees_a_repeated_default_and_ignores_a_changed_one():
    assert _repeats(2.0, _schema_default(("model", "epochs"))) and not _repeats(3, _schema_default(("model", "epochs")))
    assert _repeats(None, _schema_default(("search", "limits", "timeout")))
    assert not _repeats({"type": "choice"}, _schema_default(("search", "space", "epochs")))
    assert list(_values({"search": {"limits": {"timeout": None}, "space": {"lr": {"min": 1}}}}, ())) == [
        (("search", "limits", "timeout"), None),
        (("search", "space"), {"lr": {"min": 1}}),
    ]
