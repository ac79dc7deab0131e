"""ResRL token weights (docs/algorithm.md §3-6): a public API a verl or NeMo RL trainer can call.

For each prompt group, the penultimate-layer representations of the CORRECT (positive) responses span
a low-rank subspace; each token of an INCORRECT (negative) response is penalised in proportion to how
far it lies outside that subspace. Tokens shared with correct answers get the floor weight ``xi``,
genuinely wrong ones the full weight 1.

Building blocks (pure functions, no distributed state; ``nemo_resrl.models.resrl_pass`` composes the same
blocks across ranks so both paths give identical weights):

    normalize_hidden         h [N, d] -> x [N, d]       non-parametric LayerNorm in float32 (§3)
    group_sample_seed        (seed, step, group id) -> int   one seed per group and step
    sample_row_indices       pool size, M_max, seed -> sorted indices [M] (uniform, no replacement)
    group_skip_reason        docs/algorithm.md §4.5 degenerate-group rules -> None or a reason string
    fit_group_subspaces      rows [N, d] + each group's row indices -> SubspaceBatch (mu [G, d],
                             V_k [G, d, k]): LayerNorm, then batched fits (subspace.py)
    residual_energy          x- [T, d], (mu, V_k) -> R [T]                 (subspace.py)
    grouped_quantile_bounds  R [n] with each token's group -> (q_lo [G], q_hi [G]) over ALL negative
                             tokens of each group; ``gate`` then weighs each token: w in [xi, 1]
    token_advantages         A [B], w [B, T] -> A~ [B, T]

and one batch-level entry point, ``compute_resrl_weights``, for a single process holding whole groups.
Every tensor these make lives on the input's device; nothing but small per-response counts goes to
the host.

Sampling order: a group's positive pool is ordered by (response id, token position), so the sample
does not depend on how the batch rows are ordered or split across ranks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nemo_resrl.algorithms.grouping import index_groups
from nemo_resrl.algorithms.subspace import SubspaceBatch, fit_subspaces, residual_energy
from nemo_resrl.common import index_to_device, require, require_finite, require_shape
from nemo_resrl.config.algorithm import ResRLConfig

# Reasons a group gets no ResRL weights (all its weights stay 1), docs/algorithm.md §4.5.
SKIP_NO_POSITIVE = "no_positive_response"
SKIP_NO_NEGATIVE = "no_negative_response"
SKIP_FEW_POSITIVE_TOKENS = "too_few_positive_tokens"
SKIP_RANK = "rank_below_one"
SKIP_NO_NEGATIVE_TOKENS = "no_negative_tokens"
SKIP_REASONS = (
    SKIP_NO_POSITIVE,
    SKIP_NO_NEGATIVE,
    SKIP_FEW_POSITIVE_TOKENS,
    SKIP_RANK,
    SKIP_NO_NEGATIVE_TOKENS,
)

QUANTILE_SPAN_FLAT = 1e-5  # q_hi - q_lo below this: every weight gets z = 0.5 (docs/algorithm.md §5)
QUANTILE_SPAN_FLOOR = 1e-6  # denominator floor (docs/algorithm.md §5)


def normalize_hidden(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Non-parametric LayerNorm over the last dim, in float32 (docs/algorithm.md §3): [..., d] -> [..., d]."""
    return F.layer_norm(h.float(), (h.shape[-1],), eps=eps)


def group_sample_seed(seed: int, step: int, group_id: int) -> int:
    """A 63-bit seed for one group at one step, the same on every rank and platform."""
    digest = hashlib.blake2b(
        f"resrl:{int(seed)}:{int(step)}:{int(group_id)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_row_indices(pool_size: int, max_rows: int, seed: int) -> torch.Tensor:
    """``min(max_rows, pool_size)`` indices of ``range(pool_size)``, uniform without replacement, sorted."""
    require(pool_size >= 0 and max_rows >= 1, f"bad sampling sizes: pool {pool_size}, max_rows {max_rows}")
    if pool_size <= max_rows:
        return torch.arange(pool_size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(pool_size, generator=gen)[:max_rows].sort().values


def group_skip_reason(
    num_positive_responses: int,
    num_negative_responses: int,
    num_positive_tokens: int,
    num_negative_tokens: int,
    hidden_dim: int,
    cfg: ResRLConfig,
) -> str | None:
    """Why a group gets no ResRL weights (its weights stay 1), or None if it is active
    (docs/algorithm.md §4.5)."""
    if num_positive_responses == 0:
        return SKIP_NO_POSITIVE
    if num_negative_responses == 0:
        return SKIP_NO_NEGATIVE
    if num_positive_tokens < cfg.min_positive_tokens:
        return SKIP_FEW_POSITIVE_TOKENS
    m = min(cfg.max_rows, num_positive_tokens)
    if min(cfg.rank, m - 1, hidden_dim) < 1:
        return SKIP_RANK
    if num_negative_tokens == 0:
        return SKIP_NO_NEGATIVE_TOKENS
    return None


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile with linear interpolation (as ``torch.quantile``'s default), with no input-size limit."""
    require(values.dim() == 1 and values.numel() > 0, "linear_quantile needs a non-empty 1-D tensor")
    s = values.sort().values
    pos = q * (s.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, s.numel() - 1)
    frac = pos - lo
    return s[lo] + (s[hi] - s[lo]) * frac


def quantile_bounds(residuals: torch.Tensor, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_lo, q_hi): the alpha and beta quantiles of ALL of one group's negative residuals [n] (§5).

    Split from ``gate`` so that a group spread over ranks gathers only its residual scalars, computes
    the bounds once, and gates each rank's own tokens.
    """
    require(residuals.dim() == 1 and residuals.numel() > 0, "quantile bounds need a non-empty 1-D tensor")
    require_finite(residuals, "residual energies")
    r = residuals.float()
    return linear_quantile(r, alpha), linear_quantile(r, beta)


def gate(residuals: torch.Tensor, q_lo: torch.Tensor, q_hi: torch.Tensor, xi: float) -> torch.Tensor:
    """Weights ``xi + (1 - xi) z``, ``z = clamp((R - q_lo) / (q_hi - q_lo), 0, 1)``, z = 0.5 where the
    span is flat (§5): residuals [n] with bounds broadcastable to it -> [n] float32. No host sync."""
    span = q_hi - q_lo
    z = (residuals.float() - q_lo).div_(span.clamp_min(QUANTILE_SPAN_FLOOR)).clamp_(0.0, 1.0)
    z.masked_fill_(span < QUANTILE_SPAN_FLAT, 0.5)
    return z.mul_(1.0 - xi).add_(xi)


def quantile_gate(residuals: torch.Tensor, alpha: float, beta: float, xi: float) -> torch.Tensor:
    """Token weights from ALL of one group's negative residuals [n] -> [n] in [xi, 1] (§5)."""
    require(residuals.dim() == 1 and residuals.numel() > 0, "quantile_gate needs a non-empty 1-D tensor")
    q_lo, q_hi = quantile_bounds(residuals, alpha, beta)
    return gate(residuals, q_lo, q_hi, xi)


def grouped_quantile_bounds(
    values: torch.Tensor, group: torch.Tensor, counts: list[int], alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (q_lo [G], q_hi [G]) of ``values`` [n] (float32), ``group`` [n] int64 in 0..G-1 with
    ``counts[g]`` values each (host ints): one sort for all groups, linear interpolation as
    ``linear_quantile``; a group without values gets bounds 0. On values' device; the interpolation
    positions are computed on the host."""
    require(values.dim() == 1 and group.shape == values.shape, "values and group must be [n] each")
    require(sum(counts) == values.numel() and min(counts, default=0) >= 0, "counts must cover the values")
    require_finite(values, "residual energies")
    order = torch.argsort(values, stable=True)
    order = order.index_select(0, torch.argsort(group.index_select(0, order), stable=True))
    s = values.index_select(0, order)  # by group, then by value
    del order
    n = np.asarray(counts, dtype=np.int64)
    start = np.cumsum(n) - n
    last = max(s.numel() - 1, 0)
    out = []
    for q in (alpha, beta):
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        lo_v = s.index_select(0, index_to_device(np.minimum(start + lo, last), s.device))
        hi_v = s.index_select(0, index_to_device(np.minimum(start + hi, last), s.device))
        frac = torch.from_numpy(np.where(n > 0, pos - lo, 0.0).astype(np.float32)).to(s.device, copy=True)
        q_v = hi_v.sub_(lo_v).mul_(frac).add_(lo_v)  # lo + (hi - lo) frac
        out.append(q_v.masked_fill_(torch.from_numpy(n == 0).to(s.device, copy=True), 0.0))
        del lo_v, hi_v, frac
    return out[0], out[1]


def positive_set(advantages: torch.Tensor, correct: torch.Tensor | None, rule: str) -> torch.Tensor:
    """The positive responses [B] bool (docs/algorithm.md §2): ``advantage`` (A > 0, the paper's) or
    ``correct`` (the verifier's verdict, the released code's ``score > 0``)."""
    require(rule in ("advantage", "correct"), f"positive-set rule must be advantage or correct, got {rule!r}")
    if rule == "advantage":
        return advantages > 0
    require(correct is not None, "the correct positive-set rule needs the verifier's verdicts")
    require_shape(correct, tuple(advantages.shape), "correct")
    return correct.bool()


def token_advantages(
    advantages: torch.Tensor, weights: torch.Tensor, lambda_pos: float, positive: torch.Tensor | None = None
) -> torch.Tensor:
    """``A~ = lambda_pos * A`` for positive responses (``positive``; default A > 0), ``w * A`` for the rest
    (docs/algorithm.md §6). advantages [B], weights [B, T] -> [B, T] (same dtype as ``advantages``)."""
    require(weights.dim() == 2, f"weights must be [B, T], got {tuple(weights.shape)}")
    require_shape(advantages, (weights.shape[0],), "advantages")
    a = advantages[:, None].to(torch.float32)
    pos = (advantages > 0 if positive is None else positive.bool())[:, None]
    out = torch.where(pos, lambda_pos * a.expand_as(weights), weights.float() * a)
    return out.to(advantages.dtype)


@dataclass
class ResponseMeta:
    """Per-response metadata of one rank's share of a step, [B] each.

    group_ids: prompt group (unique per prompt within the step); response_ids: unique over the WHOLE
    step (all ranks), it fixes the positive pool's sampling order; advantages: outcome advantages;
    positive: the positive set (``positive_set`` under the run's ``algorithm.resrl.positive_set``).
    """

    group_ids: torch.Tensor
    response_ids: torch.Tensor
    advantages: torch.Tensor
    positive: torch.Tensor  # [B] bool


@dataclass
class ResRLStats:
    """What happened to each group; ``skipped`` counts groups by reason (SKIP_*)."""

    num_groups: int = 0
    num_active: int = 0
    skipped: Counter = field(default_factory=Counter)
    num_negative_tokens: int = 0  # valid tokens of penalised responses (A < 0) in the batch
    num_weighted_tokens: int = 0  # of which got a ResRL weight (their group is active)
    subspace_ranks: list[int] = field(default_factory=list)

    def as_metrics(self, prefix: str = "resrl/") -> dict[str, float]:
        m = {
            f"{prefix}groups": float(self.num_groups),
            f"{prefix}groups_active": float(self.num_active),
            f"{prefix}frac_negative_tokens_weighted": (
                self.num_weighted_tokens / self.num_negative_tokens if self.num_negative_tokens else 0.0
            ),
        }
        for reason in SKIP_REASONS:
            m[f"{prefix}groups_skipped/{reason}"] = float(self.skipped.get(reason, 0))
        if self.subspace_ranks:
            m[f"{prefix}subspace_rank_mean"] = sum(self.subspace_ranks) / len(self.subspace_ranks)
        return m


@dataclass
class ResRLWeights:
    """``weights`` [B, T] float32: the ResRL weight of each valid negative token of an active group,
    1 everywhere else (positive tokens, skipped groups, masked positions)."""

    weights: torch.Tensor
    stats: ResRLStats


def fit_group_subspaces(
    rows: torch.Tensor, index: list[torch.Tensor], seeds: list[int], cfg: ResRLConfig
) -> SubspaceBatch:
    """The positive subspace of each group from its rows: ``rows`` [N, d] (layer L-2 states, any float
    dtype), ``index[g]`` the rows of group g (int64 on rows' device, >= 2 each), ``seeds[g]`` its fit
    seed. Groups go ``cfg.fit_batch_groups`` at a time (largest first) through one float32
    [groups, M, d] buffer: each group's rows LayerNorm-ed into it, then ``fit_subspaces`` in place.
    Returns mean [G, d], basis [G, d, k] and rank [G] in the order of ``index``."""
    n_groups, d = len(index), rows.shape[1]
    k = min(cfg.rank, d)
    mean = torch.zeros(n_groups, d, dtype=torch.float32, device=rows.device)
    basis = torch.zeros(n_groups, d, k, dtype=torch.float32, device=rows.device)
    rank = torch.zeros(n_groups, dtype=torch.int64, device=rows.device)
    sizes = [int(i.numel()) for i in index]
    order = sorted(range(n_groups), key=lambda g: (-sizes[g], g))
    for start in range(0, n_groups, cfg.fit_batch_groups):
        batch = order[start : start + cfg.fit_batch_groups]
        x = torch.zeros(len(batch), sizes[batch[0]], d, dtype=torch.float32, device=rows.device)
        for i, g in enumerate(batch):
            x[i, : sizes[g]] = normalize_hidden(rows.index_select(0, index[g]), cfg.ln_eps)
        fit = fit_subspaces(
            x,
            [sizes[g] for g in batch],
            cfg.rank,
            method=cfg.svd_method,
            iterations=cfg.svd_iterations,
            oversample=cfg.svd_oversample,
            seeds=[seeds[g] for g in batch],
            overwrite_input=True,
        )
        del x
        where = torch.tensor(batch, dtype=torch.int64, device=rows.device)
        mean.index_copy_(0, where, fit.mean)
        basis.index_copy_(0, where, fit.basis)
        rank.index_copy_(0, where, fit.rank)
        del fit, where
    return SubspaceBatch(mean=mean, basis=basis, rank=rank)


def residuals_of_rows(
    states: torch.Tensor, index: np.ndarray, group: np.ndarray, subspaces: SubspaceBatch, cfg: ResRLConfig
) -> torch.Tensor:
    """Residual energies [n] float32 (on states' device) of the rows ``states[index]`` (states [N, d]
    layer L-2 outputs; index [n] int64 numpy), row i against the subspace of group ``group[i]`` (int64
    numpy [n]). Rows are gathered and LayerNorm-ed ``cfg.residual_chunk_tokens`` at a time."""
    out = torch.empty(len(index), dtype=torch.float32, device=states.device)
    for g in np.unique(group).tolist():
        pick = np.flatnonzero(group == g)
        sub = subspaces.group(g)
        for s in range(0, pick.size, cfg.residual_chunk_tokens):
            part = pick[s : s + cfg.residual_chunk_tokens]
            rows = index_to_device(index[part], states.device)
            x = normalize_hidden(states.index_select(0, rows), cfg.ln_eps)
            del rows
            r = residual_energy(x, sub, part.size)
            del x
            out.index_copy_(0, index_to_device(part, states.device), r)
            del r
    return out


def compute_resrl_weights(
    hidden: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    cfg: ResRLConfig | None = None,
    *,
    correct: torch.Tensor | None = None,
    step: int = 0,
    response_ids: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> ResRLWeights:
    """ResRL token weights for a batch that holds whole groups (single process, any device).

    hidden:        [B, T, d] penultimate representations (output of decoder layer L-2) at the positions
                   whose logits predict each response token (same alignment as the log-probs).
    response_mask: [B, T] valid response tokens (bool or 0/1).
    group_ids:     [B] integer prompt-group id; must be unique per group within the step.
    advantages:    [B] outcome advantages.
    correct:       [B] bool, the verifier's verdicts: the positive set under ``cfg.positive_set=correct``
                   (the default, the released recipe's); ``positive_set=advantage`` takes A > 0 instead.
    response_ids:  [B] ids fixing the positive pool's sampling order (default: batch position). Give
                   the same ids in any split of the batch to get the same sample.
    positive:      [B] bool, an explicit positive set (overrides ``cfg.positive_set``).
    Returns weights [B, T] float32 on ``hidden``'s device.
    """
    cfg = (cfg or ResRLConfig()).validate()
    require(hidden.dim() == 3, f"hidden must be [B, T, d], got shape {tuple(hidden.shape)}")
    b, t, d = hidden.shape
    dev = hidden.device
    require_shape(response_mask, (b, t), "response_mask")
    require_shape(advantages, (b,), "advantages")
    require_finite(advantages, "advantages")
    if positive is None:
        require(
            cfg.positive_set != "correct" or correct is not None,
            "positive_set=correct (the default) needs the verifier's verdicts: pass correct=[B] bool, or use "
            "ResRLConfig(positive_set='advantage') for the A > 0 rule",
        )
        positive = positive_set(advantages, correct, cfg.positive_set)
    require_shape(positive, (b,), "positive")
    if response_ids is None:
        response_ids = torch.arange(b)
    require_shape(response_ids, (b,), "response_ids")
    rid = response_ids.cpu()
    require(torch.unique(rid).numel() == b, "response_ids must be unique within the batch")
    # small per-response vectors on the host: the plan of which rows to fit and which to weigh
    mask_h = response_mask.bool().cpu()
    adv_h, pos_h, gid_h = advantages.cpu(), positive.bool().cpu(), group_ids.cpu()
    groups = index_groups(gid_h)
    stats = ResRLStats(num_groups=groups.num_groups)
    stats.num_negative_tokens = int(mask_h[~pos_h & (adv_h < 0)].sum())
    fit_index, fit_seeds, neg_b, neg_t, neg_group, neg_counts = [], [], [], [], [], []
    for g in range(groups.num_groups):
        members = groups.members(g)
        members = members[torch.argsort(rid[members])]
        pos, neg = members[pos_h[members]], members[~pos_h[members]]
        n_pos_tok, n_neg_tok = int(mask_h[pos].sum()), int(mask_h[neg].sum())
        reason = group_skip_reason(pos.numel(), neg.numel(), n_pos_tok, n_neg_tok, d, cfg)
        if reason is not None:
            stats.skipped[reason] += 1
            continue
        gid = int(groups.unique[g])
        pool_b, pool_t = mask_h[pos].nonzero().unbind(1)  # ordered by (response id, position)
        rows = sample_row_indices(n_pos_tok, cfg.max_rows, group_sample_seed(cfg.seed, step, gid))
        fit_index.append(pos[pool_b[rows]] * t + pool_t[rows])
        fit_seeds.append(group_sample_seed(cfg.seed + 1, step, gid))
        nb, nt = mask_h[neg].nonzero().unbind(1)
        neg_b.append(neg[nb])
        neg_t.append(nt)
        neg_group.append(torch.full((nb.numel(),), len(neg_counts), dtype=torch.int64))
        neg_counts.append(nb.numel())
        stats.num_active += 1
        stats.num_weighted_tokens += int(mask_h[neg[adv_h[neg] < 0]].sum())
    weights = torch.ones(b, t, dtype=torch.float32, device=dev)
    if not fit_index:
        return ResRLWeights(weights=weights, stats=stats)
    flat = hidden.reshape(b * t, d)
    subspaces = fit_group_subspaces(flat, [i.to(dev) for i in fit_index], fit_seeds, cfg)
    stats.subspace_ranks = subspaces.rank.tolist()
    nb, nt, ng = torch.cat(neg_b), torch.cat(neg_t), torch.cat(neg_group)
    resid = residuals_of_rows(flat, (nb * t + nt).numpy(), ng.numpy(), subspaces, cfg)
    q_lo, q_hi = grouped_quantile_bounds(resid, ng.to(dev), neg_counts, cfg.alpha, cfg.beta)
    ng_d = ng.to(dev)
    weights[nb.to(dev), nt.to(dev)] = gate(resid, q_lo[ng_d], q_hi[ng_d], cfg.xi)
    return ResRLWeights(weights=weights, stats=stats)


def resrl_token_advantages(
    hidden: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    cfg: ResRLConfig | None = None,
    *,
    correct: torch.Tensor | None = None,
    step: int = 0,
    response_ids: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ResRLStats]:
    """Convenience: ``compute_resrl_weights`` then ``token_advantages`` with the same positive set;
    returns (A~ [B, T] on hidden's device, stats). A~ is zero at masked positions."""
    cfg = (cfg or ResRLConfig()).validate()
    if positive is None and not (cfg.positive_set == "correct" and correct is None):
        positive = positive_set(advantages, correct, cfg.positive_set)
    res = compute_resrl_weights(
        hidden,
        response_mask,
        group_ids,
        advantages,
        cfg,
        correct=correct,
        step=step,
        response_ids=response_ids,
        positive=positive,
    )
    dev = res.weights.device
    adv = token_advantages(advantages.to(dev), res.weights, cfg.lambda_pos, positive.to(dev))
    return adv * response_mask.to(dev, adv.dtype), res.stats
