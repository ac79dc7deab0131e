"""ResRL token weights (docs/algorithm.md §3-6): a public API a verl or NeMo RL trainer can call.

For each prompt group, the penultimate-layer representations of the CORRECT (positive) responses span
a low-rank subspace; each token of an INCORRECT (negative) response is penalised in proportion to how
far it lies outside that subspace. Tokens shared with correct answers get the floor weight ``xi``,
genuinely wrong ones the full weight 1.

Building blocks (pure functions, no distributed state; ``nemo_resrl.distributed`` composes the same
blocks across ranks so both paths give identical weights):

    normalize_hidden         h [N, d] -> x [N, d]       non-parametric LayerNorm in float32 (§3)
    group_sample_seed        (seed, step, group id) -> int   one seed per group and step
    sample_row_indices       pool size, M_max, seed -> sorted indices [M] (uniform, no replacement)
    group_skip_reason        docs/algorithm.md §4.5 degenerate-group rules -> None or a reason string
    fit_positive_subspace    x+ [M, d] -> (mu [d], V_k [d, k])            (subspace.py)
    residual_energy          x- [T, d], (mu, V_k) -> R [T]                 (subspace.py)
    quantile_gate            R [n] (ALL negative tokens of a group) -> w [n] in [xi, 1]
                             (= quantile_bounds over the whole group, then gate per token)
    token_advantages         A [B], w [B, T] -> A~ [B, T]

and one batch-level entry point, ``compute_resrl_weights``, for a single process holding whole groups.

Sampling order: a group's positive pool is ordered by (response id, token position), so the sample
does not depend on how the batch rows are ordered or split across ranks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nemo_resrl.algorithms.grouping import index_groups
from nemo_resrl.algorithms.subspace import fit_positive_subspace, residual_energy
from nemo_resrl.common import require, require_finite, require_shape
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
    """Weights ``xi + (1 - xi) z``, ``z = clamp((R - q_lo) / (q_hi - q_lo), 0, 1)`` (§5): [n] -> [n]."""
    r = residuals.float()
    span = q_hi - q_lo
    if float(span) < QUANTILE_SPAN_FLAT:
        z = torch.full_like(r, 0.5)
    else:
        z = ((r - q_lo) / span.clamp_min(QUANTILE_SPAN_FLOOR)).clamp(0.0, 1.0)
    return xi + (1.0 - xi) * z


def quantile_gate(residuals: torch.Tensor, alpha: float, beta: float, xi: float) -> torch.Tensor:
    """Token weights from ALL of one group's negative residuals [n] -> [n] in [xi, 1] (§5)."""
    require(residuals.dim() == 1 and residuals.numel() > 0, "quantile_gate needs a non-empty 1-D tensor")
    q_lo, q_hi = quantile_bounds(residuals, alpha, beta)
    return gate(residuals, q_lo, q_hi, xi)


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
    positive: the positive set (``positive_set``; None: A > 0).
    """

    group_ids: torch.Tensor
    response_ids: torch.Tensor
    advantages: torch.Tensor
    positive: torch.Tensor | None = None  # [B] bool; None: A > 0


@dataclass
class ResRLStats:
    """What happened to each group; ``skipped`` counts groups by reason (SKIP_*)."""

    num_groups: int = 0
    num_active: int = 0
    skipped: Counter = field(default_factory=Counter)
    num_negative_tokens: int = 0  # valid tokens of penalised responses (A < 0) in the batch
    num_weighted_tokens: int = 0  # of which got a ResRL weight (their group is active)
    subspace_ranks: list[int] = field(default_factory=list)
    svd_fallbacks: int = 0  # randomized SVD did not settle and fell back to exact SVD

    def as_metrics(self, prefix: str = "resrl/") -> dict[str, float]:
        m = {
            f"{prefix}groups": float(self.num_groups),
            f"{prefix}groups_active": float(self.num_active),
            f"{prefix}frac_negative_tokens_weighted": (
                self.num_weighted_tokens / self.num_negative_tokens if self.num_negative_tokens else 0.0
            ),
        }
        m[f"{prefix}svd_fallbacks"] = float(self.svd_fallbacks)
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


def compute_resrl_weights(
    hidden: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    cfg: ResRLConfig | None = None,
    *,
    step: int = 0,
    response_ids: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> ResRLWeights:
    """ResRL token weights for a batch that holds whole groups (single process).

    hidden:        [B, T, d] penultimate representations (output of decoder layer L-2) at the positions
                   whose logits predict each response token (same alignment as the log-probs).
    response_mask: [B, T] valid response tokens (bool or 0/1).
    group_ids:     [B] integer prompt-group id; must be unique per group within the step.
    advantages:    [B] outcome advantages.
    response_ids:  [B] ids fixing the positive pool's sampling order (default: batch position). Give
                   the same ids in any split of the batch to get the same sample.
    positive:      [B] bool, the positive set (``positive_set``); default A > 0 (docs/algorithm.md §2).
    """
    cfg = (cfg or ResRLConfig()).validate()
    require(hidden.dim() == 3, f"hidden must be [B, T, d], got shape {tuple(hidden.shape)}")
    b, t, d = hidden.shape
    require_shape(response_mask, (b, t), "response_mask")
    require_shape(advantages, (b,), "advantages")
    require_finite(advantages, "advantages")
    mask = response_mask.bool()
    require_finite(hidden, "hidden states (valid response tokens)", mask[..., None].expand_as(hidden))
    if response_ids is None:
        response_ids = torch.arange(b)
    require_shape(response_ids, (b,), "response_ids")
    require(torch.unique(response_ids).numel() == b, "response_ids must be unique within the batch")
    groups = index_groups(group_ids)

    weights = torch.ones(b, t, dtype=torch.float32, device=hidden.device)
    stats = ResRLStats(num_groups=groups.num_groups)
    is_pos = advantages > 0 if positive is None else positive.bool()
    stats.num_negative_tokens = int(mask[~is_pos & (advantages < 0)].sum())
    for g in range(groups.num_groups):
        members = groups.members(g)
        members = members[torch.argsort(response_ids[members])]
        pos = members[is_pos[members]]
        neg = members[~is_pos[members]]
        n_pos_tok = int(mask[pos].sum())
        n_neg_tok = int(mask[neg].sum())
        reason = group_skip_reason(pos.numel(), neg.numel(), n_pos_tok, n_neg_tok, d, cfg)
        if reason is not None:
            stats.skipped[reason] += 1
            continue
        gid = int(groups.unique[g])
        pool = hidden[pos][mask[pos]]  # [n_pos_tok, d], ordered by (response id, position)
        rows = sample_row_indices(n_pos_tok, cfg.max_rows, group_sample_seed(cfg.seed, step, gid))
        sub = fit_positive_subspace(
            normalize_hidden(pool[rows], cfg.ln_eps),
            cfg.rank,
            method=cfg.svd_method,
            max_iter=cfg.svd_max_iter,
            oversample=cfg.svd_oversample,
            tol=cfg.svd_tol,
            seed=group_sample_seed(cfg.seed + 1, step, gid),
        )
        neg_mask = torch.zeros(b, t, dtype=torch.bool, device=hidden.device)
        neg_mask[neg] = mask[neg]
        x_neg = normalize_hidden(hidden[neg_mask], cfg.ln_eps)
        r = residual_energy(x_neg, sub, cfg.residual_chunk_tokens)
        weights[neg_mask] = quantile_gate(r, cfg.alpha, cfg.beta, cfg.xi)
        stats.num_active += 1
        stats.num_weighted_tokens += int(mask[neg[advantages[neg] < 0]].sum())
        stats.subspace_ranks.append(sub.rank)
        stats.svd_fallbacks += int(not sub.converged)
    return ResRLWeights(weights=weights, stats=stats)


def resrl_token_advantages(
    hidden: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    advantages: torch.Tensor,
    cfg: ResRLConfig | None = None,
    *,
    step: int = 0,
    response_ids: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ResRLStats]:
    """Convenience: ``compute_resrl_weights`` then ``token_advantages``; returns (A~ [B, T], stats).

    A~ is zero at masked positions.
    """
    cfg = (cfg or ResRLConfig()).validate()
    res = compute_resrl_weights(
        hidden,
        response_mask,
        group_ids,
        advantages,
        cfg,
        step=step,
        response_ids=response_ids,
        positive=positive,
    )
    adv = token_advantages(advantages, res.weights, cfg.lambda_pos, positive)
    return adv * response_mask.to(adv.dtype), res.stats
