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

from finetune.data.prepared import PreparedData, prepare, read_split
from finetune.data.targets import read_multi_label_split, read_targets

__all__ = ["PreparedData", "prepare", "read_multi_label_split", "read_split", "read_targets"]
