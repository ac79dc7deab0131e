r"""Offline synthetic tasks from reasoning-gym: prompts with checkable answers, and their grader.

reasoning-gym generates problems procedurally (arithmetic, chain sums, GSM-style word problems, equations,
...) from a seed, with a scorer per task, so a training run needs no hub download and the same
(task, size, seed, kwargs) always gives the same prompts.

Final-answer extraction (``extract_final_answer``), first rule that finds something wins:
  1. the content of the LAST complete ``\boxed{...}`` (nested braces allowed);
  2. the content of the LAST ``<answer>...</answer>`` (reasoning-gym's own prompt convention);
  3. the rest of the line after the LAST "answer is" or "answer:" (case-insensitive; covers
     "The answer is 42." and "Answer: 138/583"), without surrounding ``$``, ``*``, spaces and a final
     full stop;
  4. the LAST number in the text (integer, decimal or fraction ``a/b``; thousands separators removed;
     a sign only where it cannot be an operator, so "8-3" ends in 3 and "is -3" in -3).
  Nothing found: reward 0, reason ``no_answer``, and the scorer is not called.

The extracted string is scored by the task's own ``score_answer`` (a float in [0, 1]; some tasks give
partial credit). A response is ``correct`` when its score is at least ``threshold`` (default 1.0). With
``binary=True`` (the default, what GRPO/ResRL expect) the reward is 1.0 for correct and 0.0 otherwise;
with ``binary=False`` it is the raw score. A scorer that raises scores 0 with reason ``crash``.
Scorers run in-process: reasoning-gym's scorers are plain string or number comparisons.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nemo_resrl.rewards.base import CRASH, NO_ANSWER, OK, RewardResult, extract_last_boxed, make_result

logger = logging.getLogger(__name__)

ScoreFn = Callable[..., float]  # score_answer(answer=..., entry=...) -> float

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE = re.compile(r"answer\s+is\s*:?|answer\s*:", re.IGNORECASE)
# A sign counts only where it cannot be a binary operator ("8-3" ends in 3, "is -3" in -3).
_NUMBER = re.compile(r"(?:(?<![\w).])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")


def import_reasoning_gym():
    """reasoning-gym, an optional dependency (the ``tasks`` extra, part of the CPU stack): GPU clusters
    train on math sets, and its pycosat dependency has no CPython 3.12 wheel (pip builds it from source)."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(
            "data.source=reasoning_gym / reward.name=reasoning_gym need the reasoning-gym package: "
            "pip install 'nemo_resrl[tasks]' (or reasoning-gym==0.1.25)"
        ) from e
    return reasoning_gym


def build_synthetic_prompts(task: str, size: int, seed: int, **task_kwargs: Any) -> list[dict[str, Any]]:
    """``size`` prompt records of one reasoning-gym task, the same for the same arguments.

    Each record is ``{"prompt": question, "answer": gold answer, "task": task, "entry": the reasoning-gym
    entry (question, answer, metadata)}``; the grader needs ``task`` and ``entry``. ``task_kwargs`` go to
    the task's config (e.g. ``min_terms=2`` for ``basic_arithmetic``).
    """
    reasoning_gym = import_reasoning_gym()
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **task_kwargs)
    records = []
    for idx in range(size):
        entry = copy.deepcopy(dataset[idx])
        records.append({"prompt": entry["question"], "answer": entry["answer"], "task": task, "entry": entry})
    return records


def _clean(answer: str) -> str:
    """Drops what wraps an answer in running text: spaces, a final full stop, ``$`` and markdown ``*``."""
    s = answer.strip().rstrip(".").strip()
    s = s.strip("*$").strip().rstrip(".").strip()
    return s


def extract_final_answer(text: str) -> str | None:
    """The model's final answer in ``text`` by the rule in the module docstring, or ``None``."""
    if not isinstance(text, str):
        return None
    boxed = extract_last_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        rest = text[phrases[-1].end() :].split("\n", 1)[0]
        cleaned = _clean(rest)
        if cleaned:
            return cleaned
    numbers = _NUMBER.findall(text)
    if numbers:
        return re.sub(r"\s+", "", numbers[-1]).replace(",", "")
    return None


class SyntheticGrader:
    """Scores responses to ``build_synthetic_prompts`` records with each task's own reasoning-gym scorer.

    scorers:   optional ``{task: score_answer}`` overrides; other tasks use
               ``reasoning_gym.get_score_answer_fn(task)`` (looked up once per task).
    binary:    reward 1.0 / 0.0 from ``correct`` (default), else the raw score.
    threshold: the score at or above which a response is correct.
    """

    def __init__(
        self,
        scorers: Mapping[str, ScoreFn] | None = None,
        *,
        binary: bool = True,
        threshold: float = 1.0,
    ) -> None:
        self._scorers: dict[str, ScoreFn] = dict(scorers or {})
        self.binary = binary
        self.threshold = float(threshold)

    def scorer(self, task: str) -> ScoreFn:
        """The ``score_answer(answer=..., entry=...)`` function of ``task``."""
        if task not in self._scorers:
            self._scorers[task] = import_reasoning_gym().get_score_answer_fn(task)
        return self._scorers[task]

    def close(self) -> None:
        """Nothing to stop (scoring is in-process); here so that every grader has ``close()``."""

    def __enter__(self) -> SyntheticGrader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grade(self, responses: Sequence[str], records: Sequence[Mapping[str, Any]]) -> RewardResult:
        """Grades responses[i] against records[i]; never raises for a bad response or a failing scorer."""
        if len(responses) != len(records):
            raise ValueError(f"{len(responses)} responses but {len(records)} records")
        rewards: list[float] = []
        correct: list[bool] = []
        reasons: list[str] = []
        for i, (response, record) in enumerate(zip(responses, records)):
            answer = extract_final_answer(response)
            if answer is None:
                rewards.append(0.0)
                correct.append(False)
                reasons.append(NO_ANSWER)
                continue
            try:
                score = float(self.scorer(record["task"])(answer=answer, entry=record["entry"]))
                if not math.isfinite(score):
                    raise ValueError(f"scorer returned {score}")
            except Exception as exc:  # a scorer bug must not take the batch down
                logger.warning(
                    "synthetic grader: scoring response %d (task %r) failed: %r", i, record.get("task"), exc
                )
                rewards.append(0.0)
                correct.append(False)
                reasons.append(CRASH)
                continue
            score = min(max(score, 0.0), 1.0)
            ok = score >= self.threshold
            rewards.append((1.0 if ok else 0.0) if self.binary else score)
            correct.append(ok)
            reasons.append(OK)
        return make_result(rewards, correct, reasons)
