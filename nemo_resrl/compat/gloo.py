"""gloo quirk on CPU tensors (torch 2.13): ``dist.scatter`` with NON-contiguous tensors in
``scatter_list`` silently delivers wrong data. megatron-bridge 0.3.1 scatters ``torch.chunk(w, tp,
dim=1)`` views when it imports row-parallel weights at TP > 1, so without this patch a TP=2 import is
silently wrong. On GPUs the ``.to("cuda")`` copy makes the tensors contiguous and hides the bug.
"""

from __future__ import annotations

import torch.distributed as dist


def install_contiguous_scatter() -> None:
    """Make ``dist.scatter`` copy non-contiguous ``scatter_list`` entries first. Idempotent."""
    if getattr(dist.scatter, "_nemo_resrl_contiguous", False):
        return
    original = dist.scatter

    def scatter(tensor, scatter_list=None, src=None, group=None, async_op=False, **kwargs):
        if scatter_list is not None:
            scatter_list = [t.contiguous() for t in scatter_list]
        return original(tensor, scatter_list, src=src, group=group, async_op=async_op, **kwargs)

    scatter._nemo_resrl_contiguous = True
    dist.scatter = scatter
