"""Run an exported AML tree (``<run_dir>/aml``) the way Azure ML runs it, on this machine.

    python scripts/aml_emulate.py <run_dir>/aml [<other_run_dir>/aml ...] [--work DIR]

Several trees run one after the other in one emulated workspace (one registry, the same endpoints).

The emulator lives with the tests that use it (tests/amlemu/emulator.py, which documents what it emulates).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The emulator is the service side: it runs from the repository (the tests' stand-in and the project), while the
# jobs it starts see neither (their PYTHONPATH is rebuilt for each job).
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from amlemu.emulator import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
