"""The data stage of NER (``dataset.task=ner``): CoNLL / JSONL files -> IOB2 sentences -> split -> prepared folder.

The prepared folder holds ``train.jsonl``/``val.jsonl``/``test.jsonl`` (``{"tokens", "tags"}`` a line, IOB2),
``labels.json`` (the model's tag list, :func:`finetune.data.ner.tag_names`) and ``data.json``, whose ``ner``
section is what reading repaired or skipped per file (:class:`finetune.data.ner.NerReadStats`) and whose class
counts are entities per type. Published splits (``dataset.split_files``) are kept; otherwise sentences are split
by iterative stratification over the entity types they hold (:func:`finetune.data.split.assign_multi_label_splits`),
so a rare type lands in train, val and test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict

from finetune.config.schema import DatasetConfig
from finetune.data.ner import entity_types, read_ner_file, tag_names, write_jsonl
from finetune.data.prepared import SPLITS, PreparedData, _raw_sha256, _write_folder, split_file
from finetune.data.sources import local_source
from finetune.data.split import assign_multi_label_splits, assign_predefined_splits, check_unseen_labels
from finetune.errors import UserError

NER = "ner"


def prepare_ner(dataset: DatasetConfig, out_dir: Path | str) -> PreparedData:
    out_dir = Path(out_dir).expanduser().resolve()
    if dataset.sample is not None and dataset.sample < 1:
        raise UserError(f"dataset.sample={dataset.sample}: must be a positive number of sentences (or null for all)")
    sentences, published, stats = [], [], {}
    with local_source(dataset) as raw:
        for split, path, _ in raw.files:
            read, file_stats = read_ner_file(path)
            sentences += read
            published += [SPLITS.index(split)] * len(read) if split else []
            stats[path.name] = file_stats.to_dict()
        raw_sha256 = _raw_sha256(raw.files)
        description = raw.description
    types = entity_types(tag for sentence in sentences for tag in sentence.tags)
    if published:
        method, assignment = "predefined", assign_predefined_splits(published, dataset)
    else:
        type_ids = {kind: index for index, kind in enumerate(types)}
        present = [sorted({type_ids[tag[2:]] for tag in s.tags if tag.startswith("B-")}) for s in sentences]
        method, assignment = "iterative_stratification", assign_multi_label_splits(present, types, dataset)
    files: Dict[str, bytes] = {}
    splits: Dict[str, dict] = {}
    for position, name in enumerate(SPLITS):
        members = [sentences[i] for i in sorted(assignment) if assignment[i] == position]
        if not members:
            raise UserError(f"{description}: the {name} split has no sentences; give it some (or use more data)")
        content = write_jsonl(members)
        files[split_file(NER, name)] = content
        counts = {kind: 0 for kind in types}
        for sentence in members:
            for tag in sentence.tags:
                if tag.startswith("B-"):
                    counts[tag[2:]] += 1
        splits[name] = {
            "rows": len(members),
            "tokens": sum(len(s.tokens) for s in members),
            "sha256": hashlib.sha256(content).hexdigest(),
            "class_counts": counts,
        }
    check_unseen_labels({name: splits[name]["class_counts"] for name in SPLITS}, dataset, method)
    labels = tag_names(t for t in types if splits["train"]["class_counts"][t])
    prepared = PreparedData(
        train_path=out_dir / split_file(NER, "train"),
        val_path=out_dir / split_file(NER, "val"),
        test_path=out_dir / split_file(NER, "test"),
        labels_path=out_dir / "labels.json",
        labels=labels,
        source=description,
        raw_sha256=raw_sha256,
        rows_raw=len(sentences),
        rows_labelled=len(assignment),
        splits=splits,
        task=NER,
        split=method,
        ner=stats,
    )
    files["labels.json"] = (json.dumps(labels) + "\n").encode("utf-8")
    files["data.json"] = (json.dumps(prepared.to_dict(), indent=2) + "\n").encode("utf-8")
    _write_folder(out_dir, files)
    return prepared
