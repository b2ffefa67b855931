"""The process around :func:`finetune.train.entry.train` when it runs as ``python -m finetune.train`` (locally, as a
sweep trial, as the AML command job): its flags (:func:`finetune.config.spec.parse_args`), one training run per
output dir at a time, a user's mistake as one line with exit code 2, and the one-line summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

from finetune.config.spec import parse_args
from finetune.errors import UserError
from finetune.system import locks
from finetune.train.entry import train
from finetune.train.learning_check import below_baseline_line


@contextlib.contextmanager
def _owned(output_dir: str):
    """One process trains into an output dir at a time: a second one would resume from checkpoints the first
    is still writing, and the first deletes them when it ends. Under DDP the first process holds it for all."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with locks.hold(
        Path(output_dir) / ".train.lock",
        wait=False,
        owner="python -m finetune.train",
        busy=lambda holder: (
            f"--output-dir {output_dir} is in use by {holder}, another training run; "
            "wait for it to finish or choose another output dir"
        ),
    ):
        yield


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        with _owned(args.output_dir):
            result = train(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    _report(result, Path(args.output_dir) / "result.json")
    return 1 if result["status"] == "failed" else 0


def _report(result: dict, result_file: Path) -> None:
    print(
        f"{result['status']} after {result['steps']} steps ({result.get('epochs_run')} epochs) in "
        f"{result['duration_s']:.0f} s; metrics in {result_file}",
        file=sys.stderr,
    )
    below = below_baseline_line(result.get("learning_check"))
    if below and result["status"] != "failed":
        print(below, file=sys.stderr)
