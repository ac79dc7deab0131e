"""The ResRL pass's device memory and fit time on one rank of the pipeline stage that owns layer L-2
(``nemo_resrl.models.resrl_pass``), from what the rank holds (``PassSizes``).

``pass_bytes(sizes, dims)`` is the peak of the storages the pass creates beside the forward pass itself:
the maximum over the moments of the pass (the rows kept for the fit slots, their exchange, each fit
batch with its LayerNorm and its workspace, the subspace exchange, each micro-batch's residuals, the
gating; in the deferred layout the negatives' rows are kept from the first micro-batch to their
residuals). It is tested byte for byte against what the pass allocates on CPU (``tests/plan/test_resrl.py``,
DP=2 and TP=2). ``worst_case_sizes(cfg, ...)`` gives the sizes the planner assumes for a preset: every
group active with ``max_rows`` sampled rows, every response ``max_tokens`` long, half of them negative.
Index tensors moved to the device count (int64 per selected row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nemo_resrl.algorithms.subspace import fit_workspace_bytes, subspace_iterations
from nemo_resrl.config import RunConfig
from nemo_resrl.models.resrl_pass import PassSizes, defers_negatives, plan_groups, rank_sizes

FP32, I64 = 4, 8
# The fit's time model (docs/plan.md; measured on one H200, docs/benchmarks.md):
FIT_GEMM_EFFICIENCY = 0.5  # share of cluster.gpu_fp32_tflops the fit's batched float32 GEMMs reach
HOST_RITZ_S = 4e-3  # per group: the two q x q float64 eigendecompositions of the Rayleigh-Ritz step (host)
KERNEL_S = 1e-5  # per kernel launch; an orthonormalisation is 8 kernels, an iteration 2 of them + 2 GEMMs


@dataclass(frozen=True)
class PassDims:
    """The shapes that do not depend on the batch."""

    d: int  # hidden size
    rank: int
    oversample: int
    iterations: int
    fit_batch_groups: int
    residual_chunk_tokens: int
    act_bytes: int  # bytes per element of the layer's states (2 for bf16)
    dp: int
    batch: int  # B: this rank's sequences
    width: int  # T: the longest response
    active_groups: int  # of the whole step

    @property
    def k(self) -> int:
        return min(self.rank, self.d)

    @property
    def packed(self) -> int:
        """Bytes of one packed subspace (mean, basis, rank)."""
        return (self.d + self.d * self.k + 1) * FP32


def _layernorm(rows: int, dims: PassDims) -> int:
    """Gathering ``rows`` states and LayerNorm-ing them: the gathered rows, their float32 copy (unless
    they are float32 already), the output and LayerNorm's mean and rstd."""
    d, p = dims.d, dims.act_bytes
    return rows * (d * p + (d * FP32 if p != FP32 else 0) + d * FP32 + 2 * FP32)


def fit_batches(owned_rows: list[int], batch_groups: int) -> list[list[int]]:
    """The rows of each group of each fit batch (``fit_group_subspaces``: largest first)."""
    rows = sorted(owned_rows, reverse=True)
    return [rows[i : i + batch_groups] for i in range(0, len(rows), batch_groups)]


def _residual_moments(n: list[int], dims: PassDims) -> int:
    """Peak of ``residuals_of_rows`` for one micro-batch with ``n[g]`` negative tokens of each group."""
    d, k = dims.d, dims.k
    total = sum(n)
    peak = total * FP32 + total * I64  # the values and their slots, at the copy into the buffer
    for count in n:
        for c in [dims.residual_chunk_tokens] * (count // dims.residual_chunk_tokens) + [
            count % dims.residual_chunk_tokens
        ]:
            if not c:
                continue
            base = total * FP32  # the micro-batch's output
            peak = max(
                peak,
                base + c * I64 + _layernorm(c, dims),  # gathered and LayerNorm-ed
                base
                + c * d * FP32
                + c * FP32
                + c * d * FP32
                + c * k * FP32
                + c * d * FP32,  # x, out, xc, proj, r
                base + c * d * FP32 + c * FP32 + c * d * FP32 + c * FP32,  # x, out, r, its row sums
                base + c * FP32 + c * I64,  # the chunk's values into the output
            )
    return peak


def _gating(sizes: PassSizes, dims: PassDims) -> int:
    """Peak of the gating (``ResRLPass._finish``) above the weights, the residuals and the ranks."""
    n_tot = dims.dp * sizes.negatives_max
    gathered = n_tot * FP32 if dims.dp > 1 else 0
    labels = n_tot * I64
    groups = sizes.column_groups + 1
    n = sizes.negatives
    sort = max(
        n_tot * I64 + n_tot * FP32,  # argsort: indices and the sorted values
        4 * n_tot * I64,  # by group: the order, labels[order], its argsort's indices and sorted labels
        n_tot * I64 + n_tot * I64 + n_tot * I64,  # the composed order
    )
    bounds = n_tot * FP32 + 2 * groups * FP32 + 2 * (groups * I64 + groups * FP32) + groups * FP32 + groups
    quantiles = max(gathered + labels + sort, gathered + labels + bounds)
    lo_hi = 2 * groups * FP32
    gate = max(
        lo_hi + n * I64 + 2 * n * FP32,  # the indices of each token's group, its bounds
        2 * n * FP32 + 3 * n * FP32 + n,  # the bounds, span, R - q_lo, the clamped span, the flat mask
    )
    scatter = n * FP32 + n * I64
    return max(quantiles, gate, scatter)


def pass_moments(sizes: PassSizes, dims: PassDims) -> dict[str, int]:
    """Bytes the ResRL pass holds at each of its moments on this rank, by name (``pass_bytes``: their
    maximum). Names start with the part of the pass: kept, exchange, fit, subspaces, residuals, gating."""
    d, k, p = dims.d, dims.k, dims.act_bytes
    sent = sizes.rows_sent * d * p
    received = sizes.rows_received * d * p
    kept = sizes.negatives * d * p if sizes.deferred else 0  # the deferred layout's negative rows
    m = {
        f"kept rows, micro-batch {j}": sent + kept + n * (d * p + I64)
        for j, n in enumerate(sizes.kept_per_micro_batch)
    }
    for j, n in enumerate(sizes.deferred_per_micro_batch):
        m[f"kept negative rows, micro-batch {j}"] = sent + kept + n * (d * p + I64)
    if dims.dp > 1:
        m["exchange of the rows"] = sent + received + kept
    index = sizes.rows_received * I64
    owned = len(sizes.owned_group_rows) * (d * FP32 + d * k * FP32 + I64)
    for b, batch in enumerate(fit_batches(sizes.owned_group_rows, dims.fit_batch_groups)):
        base = received + index + owned + len(batch) * batch[0] * d * FP32
        m[f"fit batch {b}, LayerNorm"] = kept + base + max(_layernorm(rows, dims) for rows in batch)
        ws = fit_workspace_bytes(len(batch), batch[0], d, dims.rank, dims.oversample, dims.iterations)
        m[f"fit batch {b}, subspace iteration"] = kept + base + ws
    s_sent, s_recv, n_own = sizes.subspaces_sent, sizes.subspaces_received, len(sizes.owned_group_rows)
    packed_sent = s_sent * dims.packed
    ranks = dims.active_groups * FP32
    m["subspaces, packing"] = (
        kept
        + owned
        + packed_sent
        + max(s_sent * I64 + s_sent * d * k * FP32, ranks + n_own * I64 + n_own * FP32)
    )
    received_subspaces = s_recv * dims.packed
    if dims.dp > 1:
        m["subspaces, exchange"] = kept + packed_sent + ranks + received_subspaces
    base = received_subspaces + ranks + sizes.negatives_max * FP32
    for j, n in enumerate(sizes.negatives_per_micro_batch):  # deferred: one, after the pass
        m[f"residuals, micro-batch {j}"] = kept + base + _residual_moments(n, dims)
    m["gating"] = dims.batch * dims.width * FP32 + base + _gating(sizes, dims)
    return m


def pass_bytes(sizes: PassSizes, dims: PassDims) -> int:
    """Peak bytes the ResRL pass allocates on this rank (module docstring); 0 without an active group."""
    return max(pass_moments(sizes, dims).values()) if dims.active_groups else 0


def fit_flops(rows: int, d: int, rank: int, oversample: int, iterations: int) -> float:
    """Float32 FLOPs of one group's randomized fit of ``rows`` x ``d`` (the GEMMs: 2 per iteration and the
    Rayleigh-Ritz product; the float64 Cholesky QR of each block: its Gram matrix and its solve)."""
    k = min(rank, d)
    q = min(k + oversample, d)
    iterations = subspace_iterations(d, rank, oversample, iterations)
    gemm = (2 * iterations + 1) * 2 * rows * d * q
    ortho = (iterations * (rows + d) + d) * 3 * q * q
    return float(gemm + ortho)


def pass_seconds(sizes: PassSizes, dims: PassDims, fp32_tflops: float) -> float:
    """Estimated time of this rank's fits (batched GEMMs at ``FIT_GEMM_EFFICIENCY`` of the float32 peak,
    a host Rayleigh-Ritz step per group, kernel launches per batch) and of its negatives' residuals."""
    rate = fp32_tflops * 1e12 * FIT_GEMM_EFFICIENCY
    t = 0.0
    for batch in fit_batches(sizes.owned_group_rows, dims.fit_batch_groups):
        flops = len(batch) * fit_flops(batch[0], dims.d, dims.rank, dims.oversample, dims.iterations)
        its = subspace_iterations(dims.d, dims.rank, dims.oversample, dims.iterations)
        t += flops / rate + len(batch) * HOST_RITZ_S + (2 * its + 2) * 8 * KERNEL_S
    t += sizes.negatives * 4 * dims.d * dims.k / rate
    return t


def worst_case(cfg: RunConfig, d: int, act_bytes: int, dp: int, tp: int, micro_tokens: int):
    """The sizes of every rank of the L-2 stage for the step the planner assumes: every group active,
    its first response correct, every response ``rollout.sampling.max_tokens`` long, each data-parallel
    rank holding its own groups (the trainer's split), the layout the pass would take for it (deferred
    when the negatives' rows fit ``algorithm.resrl.deferred_rows_mib``). Returns [(PassSizes, PassDims)]
    per rank."""
    rc, s = cfg.algorithm.resrl, cfg.rollout.sampling
    groups, n, T = cfg.trainer.prompts_per_step, s.n, s.max_tokens
    holder = np.arange(groups) * dp // groups
    table = np.array(
        [[g, g * n + j, T, int(j == 0), int(j > 0), holder[g]] for g in range(groups) for j in range(n)],
        dtype=np.int64,
    )
    active = [g for g in plan_groups(table, d, rc, 0, dp * tp) if g.reason is None]
    mbs_responses = max(1, micro_tokens // max(T, 1))
    deferred = defers_negatives(active, dp, tp, d, act_bytes, rc.deferred_rows_mib)
    out = []
    for r in range(dp):
        for c in range(tp):
            sz = rank_sizes(active, dp, tp, r, c)
            sz.kept_per_micro_batch = [min(sz.rows_sent, micro_tokens)]
            sz.deferred = deferred
            if deferred:  # every negative row kept; their residuals in one call after the pass
                sz.deferred_per_micro_batch = [min(sz.negatives, micro_tokens)]
                per_group = [n for g in active if g.slot % tp == c and (n := g.neg_tokens_by_rank[r])]
            else:
                per_group = [min(T, sz.negatives)] * min(mbs_responses, math.ceil(sz.negatives / max(T, 1)))
            sz.negatives_per_micro_batch = [per_group]
            dims = PassDims(
                d=d,
                rank=rc.rank,
                oversample=rc.svd_oversample,
                iterations=rc.svd_iterations,
                fit_batch_groups=rc.fit_batch_groups,
                residual_chunk_tokens=rc.residual_chunk_tokens,
                act_bytes=act_bytes,
                dp=dp,
                batch=math.ceil(groups * n / dp),
                width=T,
                active_groups=len(active),
            )
            out.append((sz, dims))
    return out
