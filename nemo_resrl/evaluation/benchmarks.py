"""Benchmark files: jsonl, one problem per line, ``{"problem": ..., "answer": ...}`` (keys configurable).

A row that cannot be used never stops the evaluation and is never dropped from the denominator: it is
kept as a problem that scores 0 on every metric, and counted by its issue in the report:

- ``invalid_json``: the line is not a JSON object;
- ``missing_problem``: no non-empty string under the problem key (nothing to sample from);
- ``missing_answer``: no non-empty answer under the answer key (nothing to grade against; not sampled).

A file where NO row has both fields is an error naming the file and the keys (most likely the keys are
wrong), as is a missing or empty file. Blank lines are ignored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nemo_resrl.data.jsonl import json_object_lines

ISSUES = ("invalid_json", "missing_problem", "missing_answer")


class BenchmarkError(ValueError):
    """A benchmark file that cannot be evaluated at all; the message names it."""


@dataclass
class Problem:
    """One row: its line number, the problem text and gold answer (None when unusable), its issue."""

    line: int
    problem: str | None
    answer: str | None
    issue: str | None = None


@dataclass
class Benchmark:
    name: str
    path: Path
    problems: list[Problem]
    issues: Counter = field(default_factory=Counter)


def _text(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)  # AIME answers are often stored as integers
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def load_benchmark(path: str | Path, name: str, problem_key: str, answer_key: str) -> Benchmark:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file {path} does not exist")
    problems: list[Problem] = []
    issues: Counter = Counter(dict.fromkeys(ISSUES, 0))
    for line_no, row, _ in json_object_lines(path):
        if row is None:
            p = Problem(line_no, None, None, "invalid_json")
        else:
            problem, answer = _text(row.get(problem_key)), _text(row.get(answer_key))
            issue = "missing_problem" if problem is None else "missing_answer" if answer is None else None
            p = Problem(line_no, problem, answer, issue)
        if p.issue:
            issues[p.issue] += 1
        problems.append(p)
    if not problems:
        raise BenchmarkError(f"benchmark file {path} has no rows")
    if all(p.issue for p in problems):
        raise BenchmarkError(
            f"no row of {path} has both a {problem_key!r} and an {answer_key!r} field "
            f"(set problem_key / answer_key to the file's keys): {dict(issues)}"
        )
    return Benchmark(name, path, problems, issues)
