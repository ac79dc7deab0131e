"""megatron-core 0.16's dist-checkpoint writer keeps its write results in a queue served by a
multiprocessing manager it ``spawn``-s on the first save (``filesystem_async._get_write_results_queue``)
and keeps for the process's life. A ``kill -9`` of the trainer orphans that manager (measured: a
277 MB process left running). ``results_queue_dies_with_trainer()`` creates the queue first, from a
manager whose process asks to be killed with its parent (``nemo_resrl.common.die_with_parent``);
megatron then uses it as its own."""

from __future__ import annotations

from nemo_resrl.common import die_with_parent


def results_queue_dies_with_trainer() -> None:
    """Idempotent; a no-op once megatron has its queue."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    from torch import multiprocessing as mp

    if getattr(fa, "_results_queue", "absent") is not None:  # made already, or another megatron layout
        return
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=die_with_parent)
    fa._results_queue = manager.Queue()
    fa._nemo_resrl_manager = manager  # kept alive with the module
