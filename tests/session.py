"""Run a command in its own session and kill whatever it left behind.

A trainer (especially a SIGKILLed one) can orphan the multiprocessing manager that megatron's
dist-checkpoint saving spawns; it would keep our output pipes open, and the test waiting, forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_in_own_session(
    cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``cmd`` from the repository root with stdout + stderr into ``log``; afterwards SIGKILL its
    process group. Returns (return code, the log's text)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return rc, log.read_text()
