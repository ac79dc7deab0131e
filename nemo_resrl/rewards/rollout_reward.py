"""The trainer's reward function: decode a rollout's responses and grade them.

A grader has ``grade(responses: list[str], references) -> RewardResult``; the reference of each response
is its prompt record (reasoning-gym: the scorer needs the task entry) or the record's gold answer (math).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemo_resrl.rewards.base import RewardResult


class RolloutReward:
    """``reward(rollout, records) -> RewardResult`` for ``len(rollout)`` responses; ``records[i]`` is the
    record of prompt ``i`` of the rollout. ``references``: ``"record"`` or ``"answer"``."""

    def __init__(self, grader: Any, tokenizer: Any, references: str = "record"):
        if references not in ("record", "answer"):
            raise ValueError(f"references must be 'record' or 'answer', got {references!r}")
        self.grader, self.tokenizer, self.references = grader, tokenizer, references

    def decode(self, responses: Sequence[Sequence[int]]) -> list[str]:
        """Response texts without special tokens (an EOS that ended the response is not part of it)."""
        return self.tokenizer.batch_decode([list(r) for r in responses], skip_special_tokens=True)

    def __call__(self, rollout: Any, records: Sequence[dict]) -> RewardResult:
        per_response = [records[int(p)] for p in rollout.prompt_index]
        refs = per_response if self.references == "record" else [r["answer"] for r in per_response]
        return self.grader.grade(self.decode(rollout.responses), refs)

    def close(self) -> None:
        self.grader.close()
