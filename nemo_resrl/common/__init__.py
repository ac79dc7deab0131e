"""Small helpers every layer uses: input checks that fail with a clear message, and this process's rank.

Nothing heavy is imported at module level (torch only inside the functions that take tensors), so the
config schema, the data module and the algorithm core can all depend on it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def require(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond``."""
    if not cond:
        raise ValueError(msg)


def require_finite(t: torch.Tensor, name: str, mask: torch.Tensor | None = None) -> None:
    """Raise if ``t`` (restricted to ``mask`` when given) holds NaN or +-inf, naming how many and where."""
    import torch

    vals = t if mask is None else t[mask.bool()]
    bad = ~torch.isfinite(vals)
    if bool(bad.any()):
        n = int(bad.sum())
        first = [int(i) for i in torch.nonzero(bad)[0].tolist()] if bad.dim() >= 1 else []
        raise ValueError(f"{name} has {n} non-finite value(s) (NaN or inf); first at index {first}")


def require_shape(t: torch.Tensor, shape: tuple, name: str) -> None:
    """``shape`` entries may be None (any size)."""
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    require(
        ok, f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, got {tuple(t.shape)}"
    )


def index_to_device(index: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host int64 index array as a tensor on ``device``: always a copy (a torch operator), so its bytes
    count on every device (``nemo_resrl.diagnostics.live_bytes``). To a GPU it goes from pinned memory
    without waiting: a copy from pageable memory would first wait for every kernel queued before it."""
    import numpy as np
    import torch

    host = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device, copy=True)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it exits (Linux
    ``PR_SET_PDEATHSIG``; elsewhere nothing): helper processes of a trainer must not outlive it (a
    ``kill -9`` of the trainer would orphan them, with their memory and open files). If the parent is
    already gone, exit now."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except OSError:
        return
    if parent == 1 or os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def global_rank() -> int:
    """This process's rank in the job: torch.distributed's once it is up, else the launcher's ``RANK``
    (torchrun sets it before any process group exists), else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    """Whether this process is rank 0 of the job (or the only process): the one that writes files."""
    return global_rank() == 0


def barrier() -> None:
    """A barrier over the whole job; nothing without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
