"""Hyperparameter sweeps: search spaces in AML's vocabulary, AML's early-termination policies, the runner.

``run_sweep`` is loaded on first use: this package is imported while every plan is validated
(:mod:`finetune.search.validation`), and the runner's imports (optuna) are not needed for that.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "run_sweep":
        from finetune.search.runner import run_sweep

        return run_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
