"""Data-parallel collectives for the trainer (``DataParallelInterface``).

``SingleProcess``: one replica (no communication). ``TorchDataParallel``: the data-parallel group of
megatron's parallel state (every tensor / pipeline rank of a replica joins its own group, so the sums
are over replicas, not over model-parallel copies). On NCCL the sums travel on the GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class SingleProcess:
    """One data-parallel replica."""

    size = 1
    rank = 0

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]


class TorchDataParallel:
    """The data-parallel group of megatron-core's parallel state (initialised by the actor)."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as ps

        self.group = ps.get_data_parallel_group()
        self.size = ps.get_data_parallel_world_size()
        self.rank = ps.get_data_parallel_rank()
        nccl = "nccl" in str(dist.get_backend(self.group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return t.cpu().tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out
