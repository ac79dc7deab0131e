"""Policy losses (docs/algorithm.md §6), registered by name, with ONE normalisation point: ``aggregate``.

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
from dataclasses import dataclass, field

import torch

from nemo_resrl.algorithms.token_batch import GlobalCounts, PerToken
from nemo_resrl.common import require, require_finite
from nemo_resrl.common.registry import Registry
from nemo_resrl.config.algorithm import AGG_MODES, KL_TYPES, PolicyLossConfig
from nemo_resrl.config.specs import POLICY_LOSS_NAMES


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
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", names=POLICY_LOSS_NAMES)


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: PolicyLossConfig,
) -> PolicyLossTerms:
    """PPO clipped surrogate with clip-higher and dual clip (docs/algorithm.md §6).

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


def tis_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights [B, T]: ``min(exp(old_logp - rollout_logp), cap)``, the
    trainer's old policy over the sampler's per token (verl's token-level ``rollout_is_threshold``, NeMo RL's
    ``tis``); the log-ratio is clamped to +-20 first. Exactly 1 where the two agree."""
    require(cap >= 1, f"the TIS cap must be >= 1, got {cap}")
    require(old_logp.shape == rollout_logp.shape, "old_logp and rollout_logp shapes differ")
    return torch.exp((old_logp - rollout_logp).clamp(-20.0, 20.0)).clamp(max=cap)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str, counts: GlobalCounts, constant: float | None = None
) -> torch.Tensor:
    """Scalar loss from per-token ``values`` [B, T]: THE normalisation point.

    token-mean:              sum_{i,t} v m / N_tokens
    seq-mean-token-mean:     sum_i (sum_t v m / n_i) / N_seqs        (sequences with n_i > 0)
    seq-mean-token-sum:      sum_i sum_t v m / N_seqs
    seq-mean-token-sum-norm: sum_i sum_t v m / (N_seqs * constant)   (Dr.GRPO: a constant, not |o_i|)
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
    elif mode == "seq-mean-token-sum-norm":
        require(constant is not None and constant > 0, f"{mode} needs a constant > 0, got {constant}")
        total, denom = masked.sum(), counts.sequences * constant
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
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch, normalised by the global ``counts``; returns (loss, metrics).

    loss = agg(surrogate * is_weights) + kl_coef * agg(kl) - entropy_coef * agg(entropy). ``is_weights``
    [B, T]: truncated importance-sampling weights (``tis_weights``), constants that multiply each token's
    clipped surrogate (verl's and NeMo RL's place for them). Metrics (detached scalars) are token-means
    over the global token count, so they add up over micro-batches as the loss does.
    """
    shape = logp.shape
    require(logp.dim() == 2, f"logp must be [B, T], got {tuple(shape)}")
    optional = (("ref_logp", ref_logp), ("entropy", entropy), ("is_weights", is_weights))
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask), *optional):
        if t is not None:
            require(t.shape == shape, f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    require(cfg.kl_coef == 0 or ref_logp is not None, "algorithm.loss.kl_coef > 0 needs ref_logp")
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
    per_token = terms.loss if is_weights is None else terms.loss * is_weights.detach().masked_fill(pad, 0.0)
    c = cfg.agg_constant
    loss = aggregate(per_token, mask, cfg.agg, counts, c)
    metrics: dict[str, torch.Tensor] = {
        "pg_loss": loss.detach(),
        "pg_clipfrac": aggregate(terms.clipped.float(), mask, "token-mean", counts),
        "pg_dual_clipfrac": aggregate(terms.dual_clipped.float(), mask, "token-mean", counts),
        "ppo_kl": aggregate((old_logp - logp).detach(), mask, "token-mean", counts),
    }
    if cfg.kl_coef > 0:
        kl = aggregate(kl_penalty(logp, ref_logp, cfg.kl_type), mask, cfg.agg, counts, c)
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = kl.detach()
    if entropy is not None:
        ent = aggregate(entropy, mask, cfg.agg, counts, c)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = ent.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


# metrics every policy-loss step reports (additive over micro-batches, like the loss)
_STEP_METRICS = ("pg_loss", "pg_clipfrac", "pg_dual_clipfrac", "ppo_kl")


@dataclass(frozen=True)
class PolicyLoss:
    """The policy loss as the object the trainer hands to the policy's ``train_step`` (NeMo RL's
    ``LossFunction``): called once per micro-batch with that micro-batch's log-probs and entropies [b, T],
    its rows of the step's ``PerToken`` batch and the step's ``GlobalCounts``; returns (loss, metrics), the
    metrics named by ``metric_keys`` (detached scalars that add up over micro-batches)."""

    cfg: PolicyLossConfig = field(default_factory=PolicyLossConfig)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return (*_STEP_METRICS, *(("kl",) if self.cfg.kl_coef > 0 else ()), "entropy", "loss")

    def __call__(
        self, logp: torch.Tensor, entropy: torch.Tensor | None, batch: PerToken, counts: GlobalCounts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_policy_loss(
            logp,
            batch.old_logprobs,
            batch.advantages,
            batch.mask,
            self.cfg,
            counts,
            ref_logp=batch.ref_logprobs,
            entropy=entropy,
            is_weights=batch.is_weights,
        )
