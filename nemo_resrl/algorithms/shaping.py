"""Reward shaping and batch filtering: docs/algorithm.md §7 (length-scaled reward) and DAPO (section 8)."""

from __future__ import annotations

import torch

from nemo_resrl.algorithms.grouping import group_minmax, index_groups
from nemo_resrl.common import require, require_finite, require_shape


def length_scaled_reward(
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    start: int = 3500,
    max_length: int = 4096,
    end_scale: float = 0.7,
) -> torch.Tensor:
    """The released ResRL code's length penalty on POSITIVE rewards; [B], [B] -> [B] (floating point:
    integer rewards come back as float32, never truncated).

    r if L <= start; r * (1 - (1 - s)(L - start) / (max_length - start)) if start < L <= max_length;
    r * s beyond. Non-positive rewards are unchanged.
    """
    require(0 < start < max_length, f"need 0 < start ({start}) < max_length ({max_length})")
    require(0 <= end_scale <= 1, f"end_scale must be in [0, 1], got {end_scale}")
    require(rewards.dim() == 1, f"rewards must be [B], got {tuple(rewards.shape)}")
    require_shape(lengths, (rewards.shape[0],), "lengths")
    require_finite(rewards, "rewards")
    require(bool((lengths >= 0).all()), "lengths must be >= 0")
    length = lengths.to(torch.float64)
    frac = ((length - start) / (max_length - start)).clamp(0.0, 1.0)
    scale = 1.0 - (1.0 - end_scale) * frac
    scaled = rewards.to(torch.float64) * scale
    out_dtype = rewards.dtype if torch.is_floating_point(rewards) else torch.float32
    return torch.where(rewards > 0, scaled, rewards.to(torch.float64)).to(out_dtype)


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment ``factor * min(-(L - (max_length - buffer)) / buffer, 0)``; [B] -> [B].

    Added to the task reward by the caller. 0 for L <= max_length - buffer, -factor at L = max_length,
    and -factor beyond (the DAPO paper's cap; generation never exceeds max_length anyway).
    """
    require(0 < buffer <= max_length, f"need 0 < buffer ({buffer}) <= max_length ({max_length})")
    require(factor >= 0, f"factor must be >= 0, got {factor}")
    exceed = lengths.to(torch.float32) - (max_length - buffer)
    return factor * torch.clamp(-exceed / buffer, min=-1.0, max=0.0)


def nonzero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """DAPO dynamic sampling: keep mask [B], True for responses whose group's rewards are not all equal
    (max - min > tol). Comparing max and min (not a float32 std) keeps exactly-equal groups out."""
    require_shape(group_ids, (rewards.shape[0],), "group_ids")
    require_finite(rewards, "rewards")
    idx = index_groups(group_ids)
    lo, hi = group_minmax(rewards.double(), idx)
    return ((hi - lo) > tol)[idx.inverse]
