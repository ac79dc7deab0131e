"""Group bookkeeping shared by the advantage estimators, ResRL and the dynamic-sampling filter.

A *group* is the set of responses sampled for one prompt; ``group_ids`` (shape ``[B]``, integer) gives
each response's group. Ids need not be contiguous or sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_resrl.common import require


@dataclass(frozen=True)
class GroupIndex:
    """``unique[g]`` is the id of group ``g``; ``inverse[b]`` is the group (0..G-1) of response ``b``;
    ``counts[g]`` is the number of responses of group ``g``."""

    unique: torch.Tensor  # [G]
    inverse: torch.Tensor  # [B]
    counts: torch.Tensor  # [G]

    @property
    def num_groups(self) -> int:
        return int(self.unique.numel())

    def members(self, g: int) -> torch.Tensor:
        """Batch indices (ascending) of group ``g``."""
        return torch.nonzero(self.inverse == g).flatten()


def index_groups(group_ids: torch.Tensor) -> GroupIndex:
    require(group_ids.dim() == 1, f"group_ids must be 1-D [B], got shape {tuple(group_ids.shape)}")
    require(group_ids.numel() > 0, "group_ids is empty: a batch needs at least one response")
    require(
        not torch.is_floating_point(group_ids) and not torch.is_complex(group_ids),
        f"group_ids must be an integer tensor, got {group_ids.dtype}",
    )
    unique, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return GroupIndex(unique=unique, inverse=inverse, counts=counts)


def group_sum(values: torch.Tensor, index: GroupIndex) -> torch.Tensor:
    """Per-group sums of ``values`` [B] -> [G] (same dtype)."""
    out = torch.zeros(index.num_groups, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index.inverse, values)


def group_minmax(values: torch.Tensor, index: GroupIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (min, max) of ``values`` [B] -> ([G], [G])."""
    g = index.num_groups
    lo = torch.full((g,), float("inf"), dtype=values.dtype, device=values.device)
    hi = torch.full((g,), float("-inf"), dtype=values.dtype, device=values.device)
    lo = lo.scatter_reduce(0, index.inverse, values, reduce="amin")
    hi = hi.scatter_reduce(0, index.inverse, values, reduce="amax")
    return lo, hi
