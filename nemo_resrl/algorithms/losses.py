"""Policy losses (SPEC section 6), registered by name, with ONE normalisation point: ``aggregate``.

A registered policy loss maps per-token tensors to per-token losses::

    loss_fn(logp, old_logp, advantages, mask, cfg) -> PolicyLossTerms      all tensors [B, T]

``aggregate`` turns per-token values into a scalar by dividing by GLOBAL counts that the caller passes
(valid tokens or sequences over all micro-batches and data-parallel ranks), so the loss of a batch is
exactly the sum of its micro-batches' losses, however it is split (NeMo RL's global normalisation).
``compute_policy_loss`` composes the surrogate, the optional KL and entropy terms and the metrics;
every metric it returns is additive over micro-batches in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nemo_resrl.algorithms.checks import require, require_finite
from nemo_resrl.algorithms.registry import Registry

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_TYPES = ("k1", "k2", "k3", "low_var_kl")


@dataclass
class PolicyLossConfig:
    """Settings of the policy loss.

    clip_low / clip_high: PPO ratio clip range [1 - clip_low, 1 + clip_high] (DAPO clip-higher: 0.28).
    dual_clip_c: dual-clip bound for negative advantages (None disables; must be > 1).
    log_ratio_clamp: |logp - old_logp| is clamped to this before exp (numerical safety, as verl).
    agg: token-mean | seq-mean-token-mean | seq-mean-token-sum.
    kl_coef / kl_type: optional KL to a reference policy (k1, k2, k3 = low_var_kl).
    entropy_coef: entropy bonus (subtracted from the loss).
    """

    name: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = 3.0
    log_ratio_clamp: float = 20.0
    agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_type: str = "k3"
    entropy_coef: float = 0.0

    def validate(self) -> PolicyLossConfig:
        require(
            self.name in POLICY_LOSSES,
            f"loss.name {self.name!r} unknown; registered: {POLICY_LOSSES.names()}",
        )
        require(0 <= self.clip_low < 1, f"loss.clip_low must be in [0, 1), got {self.clip_low}")
        require(self.clip_high >= 0, f"loss.clip_high must be >= 0, got {self.clip_high}")
        require(
            self.dual_clip_c is None or self.dual_clip_c > 1,
            f"loss.dual_clip_c must be > 1, got {self.dual_clip_c}",
        )
        require(self.log_ratio_clamp > 0, "loss.log_ratio_clamp must be > 0")
        require(self.agg in AGG_MODES, f"loss.agg must be one of {AGG_MODES}, got {self.agg!r}")
        require(self.kl_type in KL_TYPES, f"loss.kl_type must be one of {KL_TYPES}, got {self.kl_type!r}")
        require(self.kl_coef >= 0, f"loss.kl_coef must be >= 0, got {self.kl_coef}")
        require(self.entropy_coef >= 0, f"loss.entropy_coef must be >= 0, got {self.entropy_coef}")
        return self


@dataclass
class PolicyLossTerms:
    """Per-token outputs of a policy loss, all [B, T]."""

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor  # bool: the clipped branch was taken
    dual_clipped: torch.Tensor  # bool: the dual-clip bound was taken


PolicyLossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PolicyLossConfig], PolicyLossTerms
]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: PolicyLossConfig,
) -> PolicyLossTerms:
    """PPO clipped surrogate with clip-higher and dual clip (SPEC 6).

    ``l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))``; for A < 0, ``l = min(l, -A c)``.
    """
    log_ratio = (logp - old_logp).clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_branch = -advantages * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped_branch)
    clipped = clipped_branch > unclipped
    dual = torch.zeros_like(clipped)
    if cfg.dual_clip_c is not None:
        bound = -advantages * cfg.dual_clip_c
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
    valid = mask.bool()
    return PolicyLossTerms(loss=loss, ratio=ratio, clipped=clipped & valid, dual_clipped=dual & valid)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimators of Schulman's note: k1, k2, k3 (= low_var_kl, clamped to
    [-10, 10] as in verl). [B, T] -> [B, T]."""
    require(kind in KL_TYPES, f"kl type must be one of {KL_TYPES}, got {kind!r}")
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.square()
    log_r = -diff  # log(pi_ref / pi)
    return (torch.exp(log_r) - log_r - 1.0).clamp(-10.0, 10.0)


@dataclass(frozen=True)
class GlobalCounts:
    """Denominators of the loss: valid tokens and sequences with at least one valid token, summed over
    ALL micro-batches and data-parallel ranks of the optimizer step."""

    tokens: float
    sequences: float


def local_counts(mask: torch.Tensor) -> GlobalCounts:
    """Counts of one micro-batch [B, T]; sum these over micro-batches and ranks to get the global ones."""
    m = mask.bool()
    return GlobalCounts(tokens=float(m.sum()), sequences=float(m.any(dim=-1).sum()))


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, counts: GlobalCounts) -> torch.Tensor:
    """Scalar loss from per-token ``values`` [B, T]: THE normalisation point.

    token-mean:          sum_{i,t} v m / N_tokens
    seq-mean-token-mean: sum_i (sum_t v m / n_i) / N_seqs        (sequences with n_i > 0)
    seq-mean-token-sum:  sum_i sum_t v m / N_seqs
    A zero global denominator (no valid token anywhere) gives 0, never NaN.
    """
    require(values.shape == mask.shape, f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ")
    require(mode in AGG_MODES, f"aggregation mode must be one of {AGG_MODES}, got {mode!r}")
    m = mask.to(values.dtype)
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))  # keeps NaN out of padding
    if mode == "token-mean":
        total, denom = masked.sum(), counts.tokens
    elif mode == "seq-mean-token-mean":
        n = m.sum(dim=-1)
        total, denom = (masked.sum(dim=-1) / n.clamp_min(1.0)).sum(), counts.sequences
    else:
        total, denom = masked.sum(), counts.sequences
    if denom <= 0:
        return total * 0.0
    return total / denom


def compute_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: PolicyLossConfig,
    counts: GlobalCounts,
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch, normalised by the global ``counts``; returns (loss, metrics).

    loss = agg(surrogate) + kl_coef * agg(kl) - entropy_coef * agg(entropy). Metrics (detached scalars)
    are token-means over the global token count, so they add up over micro-batches as the loss does.
    """
    shape = logp.shape
    require(logp.dim() == 2, f"logp must be [B, T], got {tuple(shape)}")
    optional = (("ref_logp", ref_logp), ("entropy", entropy))
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask), *optional):
        if t is not None:
            require(t.shape == shape, f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    require(cfg.kl_coef == 0 or ref_logp is not None, "loss.kl_coef > 0 needs ref_logp")
    valid = mask.bool()
    require_finite(old_logp, "old_logp", valid)
    require_finite(advantages, "advantages", valid)
    require_finite(logp.detach(), "logp", valid)
    for name, t in optional:
        if t is not None:
            require_finite(t.detach(), name, valid)
    # Padding may hold anything (NaN included): zero it so neither the loss nor its gradient sees it.
    pad = ~valid
    logp, old_logp, advantages = (t.masked_fill(pad, 0.0) for t in (logp, old_logp, advantages))
    if ref_logp is not None:
        ref_logp = ref_logp.masked_fill(pad, 0.0)
    if entropy is not None:
        entropy = entropy.masked_fill(pad, 0.0)
    terms = POLICY_LOSSES.get(cfg.name)(logp, old_logp, advantages, mask, cfg)
    loss = aggregate(terms.loss, mask, cfg.agg, counts)
    metrics: dict[str, torch.Tensor] = {
        "pg_loss": loss.detach(),
        "pg_clipfrac": aggregate(terms.clipped.float(), mask, "token-mean", counts),
        "pg_dual_clipfrac": aggregate(terms.dual_clipped.float(), mask, "token-mean", counts),
        "ppo_kl": aggregate((old_logp - logp).detach(), mask, "token-mean", counts),
    }
    if cfg.kl_coef > 0:
        kl = aggregate(kl_penalty(logp, ref_logp, cfg.kl_type), mask, cfg.agg, counts)
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = kl.detach()
    if entropy is not None:
        ent = aggregate(entropy, mask, cfg.agg, counts)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = ent.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics
