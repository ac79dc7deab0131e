"""Collectives over process groups for variable-sized tensors (gloo and NCCL alike).

All functions are collective over ``group`` (None: the default group, i.e. every rank) and keep
tensors on the input's device
(NCCL needs CUDA tensors). Row tensors are ``[n, w]`` with the same ``w`` and dtype on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    """Size of ``group`` (None: the default group); 1 without torch.distributed."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def all_gather_rows(rows: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's ``[n_r, w]`` rows, in group-rank order (sizes may differ)."""
    world = group_size(group)
    if world == 1:
        return [rows]
    n = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    width = rows.shape[1:]
    padded = rows.new_zeros((max(sizes), *width))
    padded[: rows.shape[0]] = rows
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [o[:s] for o, s in zip(out, sizes)]


def exchange_rows(rows: torch.Tensor, dest: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Send row ``i`` of ``rows`` [n, w] to group rank ``dest[i]``; returns (received rows, source rank
    of each), received in source-rank order, each source's rows in their original order."""
    world = group_size(group)
    if world == 1:
        return rows, torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    order = torch.argsort(dest, stable=True)
    rows, dest = rows[order], dest[order]
    send = torch.bincount(dest, minlength=world).to(torch.int64)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    send_l, recv_l = send.tolist(), recv.tolist()
    width = int(torch.tensor(rows.shape[1:]).prod()) if rows.dim() > 1 else 1
    out = rows.new_empty((sum(recv_l), *rows.shape[1:]))
    dist.all_to_all_single(
        out.view(-1),
        rows.contiguous().view(-1),
        output_split_sizes=[c * width for c in recv_l],
        input_split_sizes=[c * width for c in send_l],
        group=group,
    )
    src = torch.repeat_interleave(torch.arange(world, device=rows.device), recv.to(rows.device))
    return out, src


def group_global_rank(group, group_rank: int) -> int:
    """The global rank of ``group_rank`` within ``group``."""
    if group is None:
        return group_rank
    return dist.get_process_group_ranks(group)[group_rank]
