"""One context manager per phase of a step: it tells the progress display which phase runs and adds the
phase's wall time to ``time/<name>_s`` (verl's ``marked_timer`` is the idea). Where CUDA is in use it also
records the phase's allocator peak, ``memory/<name>_peak_gib`` (what ``nemo-resrl plan`` predicts per
phase; the allocator's counters are host-side, so this adds no synchronisation).

    phases = Phases(on_phase=progress.phase)
    with phases("generate"):
        ...
    phases.metrics()  # {"time/generate_s": 1.23, ...}, in the order the phases first ran
    phases.peak_metrics()  # {"memory/generate_peak_gib": 41.2, ...} on CUDA, else {}
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

GIB = 2**30


def _cuda():
    """torch.cuda when this process has initialised CUDA, else None (never initialises it, nor imports
    torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class Phases:
    """Timings of a step's phases; ``on_phase(label)`` is called as each starts (progress bar)."""

    def __init__(self, on_phase: Callable[[str], None] | None = None) -> None:
        self.on_phase = on_phase or (lambda label: None)
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []  # phase labels in the order they started (tests check the step's order)
        self.peak_bytes: dict[str, int] = {}  # CUDA only: the allocator's peak during each phase

    @contextlib.contextmanager
    def __call__(self, name: str, label: str | None = None) -> Iterator[None]:
        """Time the block as phase ``name`` (repeats add up); show ``label`` (default ``name``)."""
        shown = label or name
        self.order.append(shown)
        self.on_phase(shown)
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if cuda is not None:
                self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), cuda.max_memory_allocated())

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}

    def peak_metrics(self) -> dict[str, float]:
        """Each phase's allocator peak in GiB (CUDA; empty elsewhere): combine with ``max`` over ranks."""
        return {f"memory/{k}_peak_gib": v / GIB for k, v in self.peak_bytes.items()}
