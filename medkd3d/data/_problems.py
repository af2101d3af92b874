"""The problem record shared by discovery and validation, and the exception that lists problems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset.

    Attributes:
        subject: subject id (``"<dataset>"`` for problems of the dataset as a whole).
        file: the offending file, or ``None`` when the problem is not about one file.
        problem: what is wrong.
        hint: how to fix it.
    """

    subject: str
    file: str | None
    problem: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.subject}: {self.file}" if self.file else self.subject
        fix = f" (fix: {self.hint})" if self.hint else ""
        return f"{where}: {self.problem}{fix}"


class DataValidationError(ValueError):
    """Raised when a dataset has problems; ``problems`` holds every one of them, found in a single pass.

    Args:
        problems: the problems found.
        context: what was being checked, for the first line of the message.
    """

    def __init__(self, problems: Sequence[DataProblem], context: str = "dataset") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {context}:\n{lines}")
