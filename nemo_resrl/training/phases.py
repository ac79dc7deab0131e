"""One context manager per phase of a step: it tells the progress display which phase runs and adds the
phase's wall time to ``time/<name>_s`` (verl's ``marked_timer`` is the idea).

    phases = Phases(on_phase=progress.phase)
    with phases("generate"):
        ...
    phases.metrics()  # {"time/generate_s": 1.23, ...}, in the order the phases first ran
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Phases:
    """Timings of a step's phases; ``on_phase(label)`` is called as each starts (progress bar)."""

    def __init__(self, on_phase: Callable[[str], None] | None = None) -> None:
        self.on_phase = on_phase or (lambda label: None)
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []  # phase labels in the order they started (tests check the step's order)

    @contextlib.contextmanager
    def __call__(self, name: str, label: str | None = None) -> Iterator[None]:
        """Time the block as phase ``name`` (repeats add up); show ``label`` (default ``name``)."""
        shown = label or name
        self.order.append(shown)
        self.on_phase(shown)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}
