"""Token log-probs (and entropy) from vocab-parallel logits, in chunks, with a hand-written backward.

Each tensor-parallel rank holds the logits of its vocabulary shard ``[N, V / tp]`` (Megatron's
``parallel_output=True``). The log-softmax over the FULL vocabulary needs only three all-reduces per
chunk of rows (max, sum of exp, the target logit) and, for entropy, a fourth (``sum p * x``). Rows are
processed ``chunk_rows`` at a time in float32, so the largest float32 temporary is
``[chunk_rows, V / tp]``: never a full ``[N, V]`` float32 tensor, which for Qwen3's 151936-token
vocabulary and 32k tokens would be 19.9 GB. The backward recomputes the softmax per chunk from the
saved log-sum-exp instead of keeping it.

Gradients (per row, p = softmax(x), y = target):
    d logp_y / d x_j = 1[j = y] - p_j
    d H / d x_j      = -p_j (x_j - E_p[x])              with H = lse - E_p[x]
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_resrl.common import require


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _log_sum_exp(x: torch.Tensor, group) -> torch.Tensor:
    """Log-sum-exp over the full (sharded) vocabulary: x [n, V/tp] -> [n]."""
    m = x.max(dim=-1).values
    _all_reduce(m, dist.ReduceOp.MAX, group)
    s = (x - m[:, None]).exp_().sum(dim=-1)  # one [n, V/tp] temporary, exp in place
    _all_reduce(s, dist.ReduceOp.SUM, group)
    return m + torch.log(s)


def _local_targets(labels: torch.Tensor, vocab_start: int, v_local: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets as column indices of this shard, and whether each target lies in the shard at all."""
    local = labels - vocab_start
    return local, (local >= 0) & (local < v_local)


def _target_logit(x: torch.Tensor, labels: torch.Tensor, vocab_start: int, group) -> torch.Tensor:
    local, inside = _local_targets(labels, vocab_start, x.shape[-1])
    picked = x.gather(-1, local.clamp(0, x.shape[-1] - 1)[:, None]).squeeze(-1)
    picked = torch.where(inside, picked, torch.zeros_like(picked))
    return _all_reduce(picked, dist.ReduceOp.SUM, group)


def _chunk(
    logits: torch.Tensor, a: int, b: int, compute: torch.dtype, scale: float, valid: int
) -> torch.Tensor:
    """Rows a..b of the logits in the compute dtype, times ``scale`` (1 / temperature), with the columns
    from ``valid`` on (the vocabulary padding) at the dtype's lowest value: probability 0, and p * x = 0."""
    x = logits[a:b].to(compute, copy=True)
    if scale != 1.0:
        x.mul_(scale)
    if valid < x.shape[-1]:
        x[:, valid:] = torch.finfo(compute).min
    return x


class _VocabParallelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, vocab_start, group, chunk_rows, with_entropy, scale, valid):
        n = logits.shape[0]
        compute = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.empty(n, dtype=compute, device=logits.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else None
        mean_x = torch.empty_like(logp) if with_entropy else None
        for a in range(0, n, chunk_rows):
            x = _chunk(logits, a, a + chunk_rows, compute, scale, valid)
            chunk_lse = _log_sum_exp(x, group)
            lse[a : a + chunk_rows] = chunk_lse
            target = _target_logit(x, labels[a : a + chunk_rows], vocab_start, group)
            logp[a : a + chunk_rows] = target - chunk_lse
            if with_entropy:
                ex = (x - chunk_lse[:, None]).exp_().mul_(x).sum(dim=-1)
                _all_reduce(ex, dist.ReduceOp.SUM, group)
                mean_x[a : a + chunk_rows] = ex
                ent[a : a + chunk_rows] = chunk_lse - ex
        ctx.save_for_backward(logits, labels, lse, mean_x if with_entropy else lse.new_empty(0))
        ctx.vocab_start, ctx.chunk_rows, ctx.with_entropy = vocab_start, chunk_rows, with_entropy
        ctx.scale, ctx.valid = scale, valid
        if with_entropy:
            return logp, ent
        return logp, torch.empty(0, device=logits.device)

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        logits, labels, lse, mean_x = ctx.saved_tensors
        grad = torch.empty_like(logits)
        n, v_local = logits.shape
        use_ent = ctx.with_entropy and grad_ent is not None and grad_ent.numel() > 0
        for a in range(0, n, ctx.chunk_rows):
            x = _chunk(logits, a, a + ctx.chunk_rows, lse.dtype, ctx.scale, ctx.valid)
            p = (x - lse[a : a + ctx.chunk_rows, None]).exp_()
            g_lp = grad_logp[a : a + ctx.chunk_rows, None] if grad_logp is not None else 0.0
            g = -p * g_lp
            if grad_logp is not None:
                local, inside = _local_targets(labels[a : a + ctx.chunk_rows], ctx.vocab_start, v_local)
                rows = torch.nonzero(inside).flatten()
                g[rows, local[rows]] += grad_logp[a : a + ctx.chunk_rows][rows]
            if use_ent:
                g -= grad_ent[a : a + ctx.chunk_rows, None] * p * (x - mean_x[a : a + ctx.chunk_rows, None])
            if ctx.scale != 1.0:
                g.mul_(ctx.scale)  # d/d logits = scale x d/dx
            grad[a : a + ctx.chunk_rows] = g.to(logits.dtype)
        return grad, None, None, None, None, None, None, None


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_start: int = 0,
    group: dist.ProcessGroup | None = None,
    chunk_rows: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) and optionally entropy per row, from this rank's vocabulary shard, of softmax(logits /
    temperature) over the first ``vocab_size`` ids (the rest: the model's vocabulary padding).

    logits: [N, V_local] (any float dtype, kept as it is: bf16 logits are saved for backward in bf16)
    holding vocabulary ids ``[vocab_start, vocab_start + V_local)``; labels: [N] global token ids; group:
    the tensor-parallel group (None: the whole vocabulary is here). The temperature and the padding are
    applied per float32 chunk. Returns (logp [N], entropy [N] or None) in float32 (float64 for float64
    logits), differentiable w.r.t. ``logits``.
    """
    require(logits.dim() == 2, f"logits must be [N, V_local], got {tuple(logits.shape)}")
    require(
        labels.shape == logits.shape[:1], f"labels must be [{logits.shape[0]}], got {tuple(labels.shape)}"
    )
    require(chunk_rows >= 1, f"chunk_rows must be >= 1, got {chunk_rows}")
    require(not labels.is_floating_point(), f"labels must be integer token ids, got {labels.dtype}")
    require(temperature > 0, f"temperature must be > 0, got {temperature}")
    v_local = logits.shape[-1]
    valid = v_local if vocab_size is None else max(0, min(v_local, vocab_size - vocab_start))
    logp, ent = _VocabParallelLogProbs.apply(
        logits, labels, vocab_start, group, chunk_rows, with_entropy, 1.0 / temperature, valid
    )
    return logp, (ent if with_entropy else None)
