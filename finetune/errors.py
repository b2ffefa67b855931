"""Errors a user can cause. The CLI prints them as one line on stderr and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad override, missing file, no credentials, offline)."""

    exit_code = 2


class ConfigProblems(UserError):
    """Every validation problem of a plan, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    def __str__(self) -> str:
        count = len(self.problems)
        return f"invalid config ({count} problem{'s' if count > 1 else ''}): " + "; ".join(self.problems)
