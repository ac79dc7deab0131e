"""Verifiable rewards: math answers (math-verify, in a process pool with timeouts) and reasoning-gym tasks.

base       RewardResult (rewards [N], correct [N], counts per reason), reasons, last-\\boxed extraction
math       MathGrader: last \\boxed{} vs gold with math-verify; timeouts and worker deaths score 0, counted
synthetic  build_synthetic_prompts (reasoning-gym, seeded) and SyntheticGrader (the task's own scorer)

``REWARD_FNS`` maps a config name to a factory that builds a grader from its config keywords; every grader
has ``grade(responses, references) -> RewardResult`` and ``close()``. math-verify and reasoning-gym are
imported only when a grader uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nemo_resrl.common.registry import Registry
from nemo_resrl.rewards.base import REASONS, RewardResult, extract_last_boxed
from nemo_resrl.rewards.math import MathGrader, grade_math
from nemo_resrl.rewards.synthetic import SyntheticGrader, build_synthetic_prompts, extract_final_answer

REWARD_FNS: Registry[Callable[..., Any]] = Registry("reward function")


@REWARD_FNS.register("math")
def make_math_grader(workers: int = 2, timeout_s: float = 5.0, **kwargs: Any) -> MathGrader:
    """``math``: grade(responses, gold answers) with math-verify (see ``nemo_resrl.rewards.math``)."""
    return MathGrader(workers=workers, timeout_s=timeout_s, **kwargs)


@REWARD_FNS.register("reasoning_gym")
def make_synthetic_grader(binary: bool = True, threshold: float = 1.0) -> SyntheticGrader:
    """``reasoning_gym``: grade(responses, prompt records) with each task's own scorer."""
    return SyntheticGrader(binary=binary, threshold=threshold)


__all__ = [
    "REASONS",
    "REWARD_FNS",
    "MathGrader",
    "RewardResult",
    "SyntheticGrader",
    "build_synthetic_prompts",
    "extract_final_answer",
    "extract_last_boxed",
    "grade_math",
    "make_math_grader",
    "make_synthetic_grader",
]
