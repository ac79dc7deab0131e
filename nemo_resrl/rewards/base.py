"""What every reward function returns, and the answer-extraction helpers the graders share.

A grader never raises on a bad response: it scores it 0 and counts WHY in ``RewardResult.counts``, so a
training run sees in its metrics when, say, 3% of the batch timed out in the verifier instead of crashing
or silently learning from a broken reward.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

import torch

# Reasons a response got the reward it got. "ok" means the verifier ran to the end (the answer may still
# be wrong: see ``correct``); every other reason scores 0.
OK = "ok"
NO_BOXED_ANSWER = "no_boxed_answer"  # math: the response has no complete \boxed{...}
NO_ANSWER = "no_answer"  # synthetic: no final answer could be extracted at all
PARSE_ERROR = "parse_error"  # the extracted answer does not parse
GOLD_PARSE_ERROR = "gold_parse_error"  # the reference answer does not parse: a data problem, not the model's
TIMEOUT = "timeout"  # the verifier ran past its time limit and was killed
CRASH = "crash"  # the verifier raised, or its worker process died

REASONS: tuple[str, ...] = (OK, NO_BOXED_ANSWER, NO_ANSWER, PARSE_ERROR, GOLD_PARSE_ERROR, TIMEOUT, CRASH)


@dataclass
class RewardResult:
    """Rewards of one batch of N responses.

    rewards: [N] float32 (binary graders: 1.0 correct, 0.0 otherwise).
    correct: [N] bool, what the advantage estimators and ResRL use to split positives from negatives.
    counts:  how many responses ended for each reason (``REASONS``); the values sum to N.
    """

    rewards: torch.Tensor
    correct: torch.Tensor
    counts: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        if self.rewards.dim() != 1 or self.correct.shape != self.rewards.shape:
            raise ValueError(
                f"rewards and correct must both be [N], got {tuple(self.rewards.shape)} "
                f"and {tuple(self.correct.shape)}"
            )
        if sum(self.counts.values()) != self.rewards.shape[0]:
            raise ValueError(f"counts {dict(self.counts)} do not sum to N={self.rewards.shape[0]}")

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat scalars for the logger: mean reward, accuracy, and ``count/<reason>`` for every reason
        (zeros included, so the logged keys do not change from step to step)."""
        n = len(self)
        out = {
            f"{prefix}mean": float(self.rewards.mean()) if n else 0.0,
            f"{prefix}accuracy": float(self.correct.float().mean()) if n else 0.0,
            f"{prefix}n": float(n),
        }
        for reason in sorted(set(REASONS) | set(self.counts)):
            out[f"{prefix}count/{reason}"] = float(self.counts.get(reason, 0))
        return out


def make_result(rewards: list[float], correct: list[bool], reasons: list[str]) -> RewardResult:
    """Packs per-response python lists into a ``RewardResult``."""
    counts = collections.Counter({r: 0 for r in REASONS})
    counts.update(reasons)
    return RewardResult(
        rewards=torch.tensor(rewards, dtype=torch.float32).reshape(-1),
        correct=torch.tensor(correct, dtype=torch.bool).reshape(-1),
        counts=counts,
    )


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_last_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, nested braces included.

    Escaped braces (``\{``, ``\}``) do not count when matching. If the last box never closes (a response
    cut off by the length limit) the answer is ``None``: an earlier box is not used, since the model had
    not finished. Returns the content without the outer braces, stripped of surrounding whitespace.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{ \} \\ ...)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
        i += 1
    return None
