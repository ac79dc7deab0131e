"""Grade functions for the MathGrader pool tests. They live in their own module so that the worker
processes can import them by name (a function defined in a test module would drag pytest in)."""

from __future__ import annotations

import os
import time

from nemo_resrl.rewards.math import grade_one


def slow_on_marker(pred: str, gold: str) -> tuple[str, bool]:
    """Hangs (60 s) on an answer ``SLEEP:<path>``, after writing its pid to <path>; grades others normally."""
    if pred.startswith("SLEEP:"):
        with open(pred[len("SLEEP:") :], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    return grade_one(pred, gold)


def dies_on_marker(pred: str, gold: str) -> tuple[str, bool]:
    """Kills its own worker process (as a segfault would) on the answer ``DIE``."""
    if pred == "DIE":
        os._exit(3)
    return grade_one(pred, gold)


def raises_on_marker(pred: str, gold: str) -> tuple[str, bool]:
    """Raises on the answer ``RAISE``; returns a malformed result on ``GARBAGE``."""
    if pred == "RAISE":
        raise RuntimeError("verifier bug")
    if pred == "GARBAGE":
        return ("yes", "maybe")  # type: ignore[return-value]
    return grade_one(pred, gold)
