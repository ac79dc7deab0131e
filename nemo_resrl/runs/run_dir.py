"""A run directory belongs to one trainer at a time, and is never destroyed by default.

- ``RunDirLock``: an advisory lock (``flock`` on ``<run dir>/.lock``) held by rank 0 for the life of the
  run. It dies with the process (children forked from it close it and die with it too:
  ``runs/children.py``), so a stale lock from a dead trainer is taken over at once (and its holder
  named in the log); a live one refuses the second trainer with its host and pid. ``nemo-resrl convert``
  refuses to write into a locked run directory.
- ``claim_run_dir``: takes the lock, then refuses ``checkpoint.resume=false`` in a directory that already
  holds a run (metrics or checkpoints) unless ``checkpoint.start_over=true``, which moves the old run aside
  to ``<run dir>/previous-<time>/`` (nothing is deleted).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from nemo_resrl.runs import children

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
PREVIOUS_PREFIX = "previous-"


class RunDirError(RuntimeError):
    """A run directory this trainer may not use as asked; the message says why and what to do."""


def _holder_text(info: dict) -> str:
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')} (since {info.get('since', '?')})"


class RunDirLock:
    """The lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._f = None

    def acquire(self) -> RunDirLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:  # a file in the way, a read-only mount, no permission
            blocked = self.run_dir.exists() and not self.run_dir.is_dir()
            why = "a file is in the way" if blocked else e.strerror
            raise RunDirError(
                f"logging.run_dir {self.run_dir} cannot hold a run: {why} ({type(e).__name__}). Choose a "
                "writable directory"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                info = json.loads(f.read() or "{}")
            except ValueError:
                info = {}
            f.close()
            raise RunDirError(
                f"{self.run_dir} is in use by another trainer: {_holder_text(info)}. Wait for it or stop it, "
                "or choose another logging.run_dir"
            ) from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            log.info("took over the lock of %s from a trainer that is gone: %s", self.run_dir, previous)
        f.seek(0)
        f.truncate()
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        f.write(json.dumps(info))
        f.flush()
        self._f = f
        children.hold_lock_fd(f.fileno())  # a forked child closes it: the lock stays this process's
        return self

    def release(self) -> None:
        if self._f is not None:
            children.release_lock_fd(self._f.fileno())
            self._f.seek(0)
            self._f.truncate()
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """Who holds ``run_dir``'s lock now (host, pid, since), or None when nobody does."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(f.read() or "{}") or {"host": "?", "pid": "?"}
            except ValueError:
                return {"host": "?", "pid": "?"}
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def locked_run_dir_of(path: str | os.PathLike) -> tuple[Path, dict] | None:
    """The locked run directory ``path`` lies in (or is), with its holder; None if there is none."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        holder = lock_holder(d)
        if holder is not None:
            return d, holder
    return None


def existing_run(run_dir: Path) -> str | None:
    """What a previous run left in ``run_dir`` (metrics rows, checkpoints), or None if nothing."""
    from nemo_resrl.runs.checkpoints import CheckpointManager

    parts = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = sum(1 for line in metrics.read_text(errors="replace").splitlines() if line.strip())
        if rows:
            parts.append(f"{rows} metrics rows")
    ckpts = CheckpointManager(run_dir / "checkpoints").complete()
    if ckpts:
        parts.append(f"{len(ckpts)} checkpoints (latest: step {ckpts[-1][0]})")
    return ", ".join(parts) or None


def move_aside(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` but its lock and earlier moved-aside runs into
    ``run_dir/previous-<time>/``; returns that directory."""
    dest = run_dir / f"{PREVIOUS_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while dest.exists():
        dest = run_dir / f"{PREVIOUS_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        n += 1
    dest.mkdir()
    for p in run_dir.iterdir():
        if p.name != LOCK_FILE and p != dest and not p.name.startswith(PREVIOUS_PREFIX):
            p.rename(dest / p.name)
    return dest


def claim_run_dir(run_dir: str | os.PathLike, *, resume: bool, start_over: bool) -> RunDirLock:
    """Lock ``run_dir`` and make it ready for a run (module docstring); rank 0 only. Returns the lock,
    to be released when the run ends."""
    run_dir = Path(run_dir)
    lock = RunDirLock(run_dir).acquire()
    try:
        found = existing_run(run_dir)
        no_checkpoint = found is not None and not any((run_dir / "checkpoints").glob("step_*"))
        if found and start_over:
            dest = move_aside(run_dir)
            log.warning(
                "checkpoint.start_over: the previous run in %s (%s) was moved to %s", run_dir, found, dest
            )
        elif found and resume and no_checkpoint:  # nothing to resume: a fresh start must not drop its rows
            dest = move_aside(run_dir)
            log.warning(
                "%s holds a run with no checkpoint to resume from (%s): it was moved to %s, this run starts "
                "afresh",
                run_dir,
                found,
                dest,
            )
        elif found and not resume:
            raise RunDirError(
                f"{run_dir} already holds a run ({found}) and checkpoint.resume=false would overwrite it. "
                "Resume it (checkpoint.resume=true), choose another logging.run_dir, or set "
                f"checkpoint.start_over=true to move it aside into {run_dir}/{PREVIOUS_PREFIX}<time>/"
            )
    except BaseException:
        lock.release()
        raise
    return lock
