"""The prepared splits as AML data: versioned data assets tagged with content hashes, and the jobs' references.

``finetune.data.prepare`` runs locally (cheap) and writes ``train.csv``, ``val.csv``, ``test.csv`` and
``labels.json``. Each becomes a ``uri_file`` data asset; AutoML NLP reads MLTable folders instead, so
train and val are also written as MLTable folders (the ``MLTable`` file next to a copy of the split) and
registered as ``mltable`` assets. Every asset carries the sha256 of its content as the tag ``sha256``:
at submit time an existing version with the same hash is reused, so resubmitting the same data uploads
nothing and the jobs keep pointing at the same version (AML's pipeline cache then reuses finished steps).

A dry run registers nothing: the exported YAML points at the local files, which ``az ml job create``
uploads.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from finetune.data.ner import read_prepared
from finetune.data.sources import sha256_file
from finetune.registry.model_registry import content_hash

if TYPE_CHECKING:
    from finetune.data import PreparedData
    from finetune.plan.run_plan import RunPlan

SPLITS = ("train", "val", "test")
FILES = SPLITS + ("labels",)
# AutoML NLP trains on `train` and validates on `val`; the test split stays out of AutoML and is scored by
# the test step with the project's metric function, like every other candidate.
TABLES = ("train", "val")
HASH_TAG = "sha256"
MLTABLE = """\
# MLTable of one split for AutoML NLP: a UTF-8 CSV with a header row, columns text,label.
paths:
  - file: ./{file}
transformations:
  - read_delimited:
      delimiter: ','
      encoding: utf8
      header: all_files_same_headers
"""


@dataclass
class AssetSpec:
    key: str  # train, val, test, labels, train_mltable, val_mltable
    name: str
    type: str  # uri_file | mltable
    path: Path
    sha256: str
    description: str


@dataclass
class DataRefs:
    """What jobs read: per file key and per table key, a local path or ``azureml:<name>:<version>``."""

    files: Dict[str, str] = field(default_factory=dict)
    tables: Dict[str, str] = field(default_factory=dict)


def asset_name(plan: "RunPlan", key: str) -> str:
    return f"finetune-{plan.dataset.name}-{key.replace('_', '-')}"


# AutoML NER reads CoNLL only: "one token and its label per line, separated by a single space, an empty line
# between sentences", referenced by an MLTable's paths (https://learn.microsoft.com/azure/machine-learning/
# how-to-auto-train-nlp-models#named-entity-recognition-ner; Azure/azureml-examples
# cli/jobs/automl-standalone-jobs/cli-automl-text-ner-conll/training-mltable-folder/MLTable).
NER_MLTABLE = """\
# MLTable of one split for AutoML NLP NER: CoNLL text, "token label" a line, an empty line between sentences.
paths:
  - file: ./{file}
"""


def write_mltables(prepared: "PreparedData", folder: Path) -> Dict[str, Path]:
    """One MLTable folder per AutoML split under ``folder`` (replaced), holding the split's CSV (NER: its CoNLL)."""
    tables = {}
    for split in TABLES:
        target = Path(folder) / split
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        source = prepared.path(split)
        if prepared.task == "ner":
            name = f"{split}.txt"
            (target / name).write_text(conll_text(read_prepared(source)), encoding="utf-8")
            (target / "MLTable").write_text(NER_MLTABLE.format(file=name), encoding="utf-8")
        else:
            shutil.copy2(source, target / source.name)
            (target / "MLTable").write_text(MLTABLE.format(file=source.name), encoding="utf-8")
        tables[split] = target
    return tables


def conll_text(sentences) -> str:
    """Sentences as AutoML NER's CoNLL (tokens hold no whitespace: :func:`.automl.data_problems` checks it)."""
    return "".join("".join(f"{token} {tag}\n" for token, tag in zip(s.tokens, s.tags)) + "\n" for s in sentences)


def asset_specs(plan: "RunPlan", prepared: "PreparedData", tables: Dict[str, Path]) -> List[AssetSpec]:
    """The data assets of a prepared dataset, each with the hash that identifies its content."""
    source = f"{plan.dataset.name} ({prepared.source})"
    specs = [
        AssetSpec(
            split,
            asset_name(plan, split),
            "uri_file",
            prepared.path(split),
            prepared.splits[split]["sha256"],
            f"{split} split of {source}: text,label CSV",
        )
        for split in SPLITS
    ]
    specs.append(
        AssetSpec(
            "labels",
            asset_name(plan, "labels"),
            "uri_file",
            prepared.labels_path,
            sha256_file(prepared.labels_path),
            f"class names of {source}, in label-id order",
        )
    )
    specs += [
        AssetSpec(
            f"{split}_mltable",
            asset_name(plan, f"{split}_mltable"),
            "mltable",
            tables[split],
            content_hash(tables[split]),
            f"{split} split of {source} as an MLTable for AutoML NLP",
        )
        for split in TABLES
        if split in tables
    ]
    return specs


def data_entity(spec: AssetSpec, path: Optional[str] = None):
    """The Data entity of ``spec`` (version left to AML: the next number)."""
    from azure.ai.ml.entities import Data

    return Data(
        name=spec.name,
        path=path or str(spec.path),
        type=spec.type,
        description=spec.description,
        tags={HASH_TAG: spec.sha256},
    )


def refs(specs: List[AssetSpec], locations: Dict[str, str]) -> DataRefs:
    """DataRefs from ``key -> location`` (local paths or asset references)."""
    result = DataRefs()
    for spec in specs:
        if spec.key.endswith("_mltable"):
            result.tables[spec.key[: -len("_mltable")]] = locations[spec.key]
        else:
            result.files[spec.key] = locations[spec.key]
    return result


def local_refs(specs: List[AssetSpec], relative_to: Optional[Path] = None) -> DataRefs:
    """DataRefs to the local files (relative to ``relative_to`` when given: exported YAML)."""
    return refs(specs, {spec.key: _relative(spec.path, relative_to) for spec in specs})


def _relative(path: Path, base: Optional[Path]) -> str:
    import os

    return str(path) if base is None else os.path.relpath(path, base)


def register(ml_client, specs: List[AssetSpec], log=print) -> DataRefs:
    """Reuse the asset version whose ``sha256`` tag matches each spec, or create the next version."""
    locations = {}
    for spec in specs:
        existing = find_version(ml_client, spec)
        if existing is not None:
            log(f"data {spec.name}:{existing.version} reused (sha256 {spec.sha256[:12]})")
            asset = existing
        else:
            asset = ml_client.data.create_or_update(data_entity(spec))
            log(f"data {spec.name}:{asset.version} registered (sha256 {spec.sha256[:12]})")
        locations[spec.key] = f"azureml:{asset.name}:{asset.version}"
    return refs(specs, locations)


def find_version(ml_client, spec: AssetSpec):
    """The version of ``spec.name`` tagged with ``spec.sha256``, or None (also when the name is new)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        versions = list(ml_client.data.list(name=spec.name))
    except ResourceNotFoundError:
        return None
    matches = [asset for asset in versions if (asset.tags or {}).get(HASH_TAG) == spec.sha256]
    return min(matches, key=lambda asset: _version_key(asset.version)) if matches else None


def _version_key(version: str):
    return (0, int(version), "") if str(version).isdigit() else (1, 0, str(version))
