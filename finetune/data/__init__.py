"""The data stage: load a source, clean the text, label it, split it, and record hashes.

``prepare(dataset, out_dir)`` turns one :class:`~finetune.config.schema.DatasetConfig` into the files described
in docs/contracts.md ("Prepared data") and returns a :class:`PreparedData`. One module per step:
:mod:`.sources` (reading and downloading, and the plan check of a source), :mod:`.labels` (and
:mod:`.multilabel` for label sets), :mod:`.split`, :mod:`.prepared` (the folder) and :mod:`.targets`
(reading its splits back as class ids or multi-hot rows).

Only the standard library (and the config schema) is imported at module level: the plan check imports
this package and must stay fast; numpy, pyarrow and tqdm load inside the functions that use them.
"""

from __future__ import annotations

from finetune.config.schema import DatasetConfig
from finetune.data.ner_prepare import prepare_ner
from finetune.data.prepared import PreparedData, read_split
from finetune.data.prepared import prepare as prepare_classes
from finetune.data.sources import is_ner
from finetune.data.targets import read_multi_label_split, read_targets


def prepare(dataset: DatasetConfig, out_dir) -> PreparedData:
    """The prepared folder of ``dataset``: NER sentences (:mod:`.ner_prepare`) or labelled texts (:mod:`.prepared`)."""
    return prepare_ner(dataset, out_dir) if is_ner(dataset) else prepare_classes(dataset, out_dir)


__all__ = ["PreparedData", "prepare", "read_multi_label_split", "read_split", "read_targets"]
