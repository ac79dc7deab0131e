"""Stopping a run early (preemption, time limits; ``docs/slurm.md``).

SIGUSR1, SIGTERM, or the file named by ``NEMO_RESRL_STOP_FILE`` appearing, ask the run to stop. The
run finishes its current step, saves a checkpoint of it (whatever ``checkpoint.every`` is), writes the
metrics, ``<run dir>/preempted.json`` and "preempted at step N, checkpoint saved: ..." and raises
``Preempted``: the process exits with status 75 (``PREEMPTED_EXIT``); the next run resumes from that
checkpoint. The request is polled once per step and all-reduced (MAX) over the world, so every rank
stops after the same step. A second SIGTERM kills the process at once (the default action).
``NEMO_RESRL_STOP_SIGNALS`` (default ``USR1,TERM``; empty: none) names the signals handled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

# no torch at import: ``nemo-resrl train`` arms the stop signals before its heavy imports (torch takes
# about a second), so a SIGUSR1 / SIGTERM at start-up is a stop request, not a kill

STOP_FILE_ENV = "NEMO_RESRL_STOP_FILE"  # a file whose appearance asks the run to stop (slurm/common.sh)
STOP_SIGNALS_ENV = "NEMO_RESRL_STOP_SIGNALS"  # the signals that ask the run to stop (default USR1,TERM)
PREEMPTED_FILE = "preempted.json"  # in the run dir: written when the run stopped early, removed at start
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to continue
# why a run stops, in increasing priority (the all-reduce keeps the highest)
STOP_REASONS = ("", "stop file", "SIGUSR1", "SIGTERM")


class Preempted(SystemExit):
    """The run stopped early on request; the checkpoint of ``step`` is saved. A ``SystemExit`` with
    status 75: ``nemo-resrl train`` exits with it unless the caller catches it."""

    def __init__(self, step: int, reason: str, checkpoint: str | None):
        super().__init__(PREEMPTED_EXIT)
        self.step, self.reason, self.checkpoint = step, reason, checkpoint

    def __str__(self) -> str:
        return f"preempted at step {self.step} ({self.reason}), checkpoint: {self.checkpoint}"


class StopRequest:
    """Stop requests for the step loop: the signals in ``signals`` (handled from ``install`` to
    ``restore``, main thread only) and the appearance of ``stop_file``. ``poll`` is collective."""

    def __init__(self, stop_file: str | None = None, signals: Sequence[str] = ("USR1", "TERM")):
        self.stop_file = Path(stop_file) if stop_file else None
        self.signals = [getattr(signal, f"SIG{name.strip().upper().removeprefix('SIG')}") for name in signals]
        self.reason = ""  # the signal received, if any
        self._previous: dict[int, object] = {}

    @classmethod
    def from_env(cls) -> StopRequest:
        names = os.environ.get(STOP_SIGNALS_ENV, "USR1,TERM")
        return cls(os.environ.get(STOP_FILE_ENV) or None, [n for n in names.split(",") if n.strip()])

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; the stop file still works
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def held(self):
        """Inside, the signals are blocked in this thread: processes started here inherit the blocked mask
        (fork and exec keep it). For the first checkpoint save, which spawns megatron's long-lived
        write-results manager: Slurm signals every process of a job step, and a manager killed by SIGTERM
        would fail the very save the stop asked for. A signal that arrives meanwhile stays pending and is
        handled when the block ends (or at once by another thread): the stop then comes after this step,
        it is never lost."""
        if not self._previous:
            yield
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set(self._previous))
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason == name == "SIGTERM":  # asked twice: die as an unhandled SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        if STOP_REASONS.index(name) > STOP_REASONS.index(self.reason):
            self.reason = name

    def local_reason(self) -> str:
        if self.reason:
            return self.reason
        if self.stop_file is not None and self.stop_file.exists():
            return "stop file"
        return ""

    def poll(self) -> str:
        """The reason to stop now ("" for none), the same on every rank (MAX over the world)."""
        import torch
        import torch.distributed as dist

        code = STOP_REASONS.index(self.local_reason())
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = "cpu"
            if "nccl" in str(dist.get_backend()).lower():
                device = torch.device("cuda", torch.cuda.current_device())
            t = torch.tensor([code], dtype=torch.int64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            code = int(t.item())
        return STOP_REASONS[code]
