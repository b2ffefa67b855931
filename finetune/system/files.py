"""Writing files safely: JSON that a reader never sees half of (summary.json, result.json, progress and endpoint
state are read while, or after, another process writes them, and a kill can land mid-write), and model files
shared rather than copied."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional


def write_json_atomic(path: Path | str, data: Any, mode: Optional[int] = None, **dumps) -> None:
    """Write ``data`` to a sibling temporary file and rename it over ``path`` (atomic on one filesystem).

    ``mode`` creates the file with those permissions (the endpoint state holds a key: owner only).
    """
    path = Path(path)
    partial = path.with_name(path.name + ".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, **dumps))
    os.replace(partial, path)


def link_or_copy(source: str, target: str) -> str:
    """A hard link (no second copy of the weights on disk; the deployment keeps its files when the
    registry's are deleted), a copy across file systems. Registered artifacts are never rewritten in
    place, so sharing their inodes is safe."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target
