"""The processes a trainer starts die with it and never hold its run-dir lock.

Megatron's checkpoint writers are ``fork``-ed from the trainer (they share its memory: GBs) and a
multiprocessing manager is ``spawn``-ed for their results; the math grader keeps a pool of workers. A
``kill -9`` of the trainer would orphan all of them (re-parented to init, still running), and a forked
writer would keep the trainer's run-dir lock open, so that the restart is refused, naming a dead pid.

``install()`` (called by the run-dir lock when it is taken) registers, once per process, what every
child ``fork``-ed from then on does first: close the lock file descriptors it inherited (the lock stays
the trainer's alone), and, when the fork came from the main thread, ask to be killed when its parent
dies (``die_with_parent``). Children started with ``spawn`` inherit no descriptor; those the project
starts call ``die_with_parent`` themselves (the grader's pool initializer, megatron's results manager:
``nemo_resrl.compat.megatron_checkpoint``).
"""

from __future__ import annotations

import os
import threading

from nemo_resrl.common import die_with_parent

_lock_fds: set[int] = set()  # run-dir lock descriptors this process holds
_installed = False
_fork_from_main = [True]


def hold_lock_fd(fd: int) -> None:
    """Record a lock descriptor that forked children must close."""
    install()
    _lock_fds.add(fd)


def release_lock_fd(fd: int) -> None:
    _lock_fds.discard(fd)


def _before_fork() -> None:
    _fork_from_main[0] = threading.current_thread() is threading.main_thread()


def _in_child() -> None:
    for fd in list(_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    if _fork_from_main[0]:  # a child of a worker thread would die when that thread ends
        die_with_parent()


def install() -> None:
    """Register the fork hooks of the module docstring (once per process)."""
    global _installed
    if not _installed:
        os.register_at_fork(before=_before_fork, after_in_child=_in_child)
        _installed = True
