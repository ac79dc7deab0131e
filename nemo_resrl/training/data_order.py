"""Which prompts each step trains on: a seeded shuffle per epoch, indexed by the step, so the data
position is a function of the step alone (what resume needs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The record order of one pass over the data (seeded shuffle per epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_records(records: Sequence[dict], step: int, per_step: int, seed: int) -> list[dict]:
    """The prompts of ``step``: positions ``[step * per_step, (step + 1) * per_step)`` of the shuffled
    stream of epochs, so the data position is a function of the step (what resume needs)."""
    n = len(records)
    orders: dict[int, list[int]] = {}  # one shuffle per epoch this step touches, not one per record
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(records[orders[epoch][i]])
    return out
