"""The ResRL pass's device memory and fit time on one rank of the pipeline stage that owns layer L-2
(``nemo_resrl.distributed.resrl_pass``), from what the rank holds (``PassSizes``).

``pass_bytes(sizes, dims)`` is the peak of the storages the pass creates beside the forward pass itself:
the maximum over the moments of the pass (the rows kept for the fit slots, their exchange, each fit
batch with its LayerNorm and its workspace, the subspace exchange, each micro-batch's residuals, the
gating). It is tested byte for byte against what the pass allocates on CPU (``tests/plan/test_resrl.py``,
DP=2 and TP=2). ``worst_case_sizes(cfg, ...)`` gives the sizes the planner assumes for a preset: every
group active with ``max_rows`` sampled rows, every response ``max_tokens`` long, half of them negative.
Index tensors moved to the device count (int64 per selected row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemo_resrl.algorithms.subspace import fit_workspace_bytes
from nemo_resrl.distributed.resrl_pass import PassSizes, assign_slots

FP32, I64 = 4, 8


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
                base + c * d * FP32 + c * FP32 + c * d * FP32 + c * k * FP32 + c * d * FP32,  # x, out, xc, proj, r
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
        n_tot * I64 + n_tot * I64 + n_tot * I64 + n_tot * FP32,  # by group: order, labels[order], its argsort
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


def pass_bytes(sizes: PassSizes, dims: PassDims) -> int:
    """Peak bytes the ResRL pass allocates on this rank (module docstring); 0 when it fits nothing."""
    if not dims.active_groups or not (sizes.rows_sent or sizes.rows_received or sizes.negatives_max):
        if not dims.active_groups:
            return 0
    d, k, p = dims.d, dims.k, dims.act_bytes
    sent = sizes.rows_sent * d * p
    received = sizes.rows_received * d * p
    moments = [sent + n * (d * p + I64) for n in sizes.kept_per_micro_batch]
    if dims.dp > 1:
        moments.append(sent + received)
    index = sizes.rows_received * I64
    owned = len(sizes.owned_group_rows) * (d * FP32 + d * k * FP32 + I64)
    for batch in fit_batches(sizes.owned_group_rows, dims.fit_batch_groups):
        x = len(batch) * batch[0] * d * FP32
        base = received + index + owned + x
        moments += [base + _layernorm(m, dims) for m in batch]
        moments.append(
            base + fit_workspace_bytes(len(batch), batch[0], d, dims.rank, dims.oversample, dims.iterations)
        )
    s_sent, s_recv, n_own = sizes.subspaces_sent, sizes.subspaces_received, len(sizes.owned_group_rows)
    packed_sent = s_sent * dims.packed
    ranks = dims.active_groups * FP32
    moments.append(owned + packed_sent + s_sent * I64 + s_sent * d * k * FP32)
    moments.append(owned + packed_sent + ranks + n_own * I64 + n_own * FP32)
    received_subspaces = s_recv * dims.packed
    if dims.dp > 1:
        moments.append(packed_sent + ranks + received_subspaces)
    resid = sizes.negatives_max * FP32
    base = received_subspaces + ranks + resid
    moments += [base + _residual_moments(n, dims) for n in sizes.negatives_per_micro_batch]
    weights = dims.batch * dims.width * FP32
    moments.append(weights + base + _gating(sizes, dims))
    return max(moments)
