"""Training checkpoints a restarted run can trust.

Each checkpoint is marked complete only after every process finished writing it (the marker is written last,
atomically); a restarted run with the same output dir resumes from the newest complete one (AML low-priority
nodes get evicted) and a half-written checkpoint is deleted, never loaded. ``resume.json``, written next to
them when training starts, holds what a restarted run must reuse: its batch size, learning rate and MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

COMPLETE_MARKER = "checkpoint.complete"
RESUME_FILE = "resume.json"


def newest_complete_checkpoint(checkpoint_dir: Path, delete_incomplete: bool = True) -> Optional[Path]:
    """The newest checkpoint every process finished writing; incomplete ones are removed.

    Complete means marked (the marker is written last, atomically) and holding the Trainer's state; a folder
    killed mid-write lacks the marker whatever its step number, so it can never be the one resumed.
    """
    if not checkpoint_dir.is_dir():
        return None
    complete = []
    for folder in checkpoint_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if not match or not folder.is_dir():
            continue
        if (folder / COMPLETE_MARKER).is_file() and (folder / "trainer_state.json").is_file():
            complete.append((int(match.group(1)), folder))
        elif delete_incomplete:
            shutil.rmtree(folder, ignore_errors=True)
    return max(complete, default=(0, None))[1]


def mark_complete(folder: Path, step: int) -> None:
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time()}))
    os.replace(tmp, folder / COMPLETE_MARKER)
