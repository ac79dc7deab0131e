"""Outcome advantage estimators (docs/algorithm.md §1 and 8), one uniform signature, registered by name.

Every estimator maps per-response scalars to per-response advantages::

    estimator(rewards: [B] float, correct: [B] bool, group_ids: [B] int, cfg: AdvantageConfig) -> [B]

``rewards`` are the (possibly shaped) scalar rewards, ``correct`` the verifier's verdicts. The trainer
broadcasts the result over response tokens (ResRL then reweights negative tokens, see ``resrl.py``).

PSR / NSR / W-REINFORCE follow the NSR paper's code (RLVR-Decomposed): the responses an objective does
not train on get advantage 0, and the trainer leaves them out of the update (the reference code's
``batch.subset``), so token-mean normalises over the trained responses' tokens only (docs/algorithm.md §8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nemo_resrl.algorithms.grouping import group_minmax, group_sum, index_groups
from nemo_resrl.common import require, require_finite, require_shape
from nemo_resrl.common.registry import Registry
from nemo_resrl.config.algorithm import AdvantageConfig
from nemo_resrl.config.specs import ADVANTAGE_ESTIMATOR_NAMES

AdvantageFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AdvantageConfig], torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator", names=ADVANTAGE_ESTIMATOR_NAMES)


def _check_inputs(rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> None:
    require(rewards.dim() == 1, f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    b = rewards.shape[0]
    require(b > 0, "rewards is empty: a batch needs at least one response")
    require_shape(correct, (b,), "correct")
    require_shape(group_ids, (b,), "group_ids")
    require(correct.dtype == torch.bool, f"correct must be a bool tensor, got {correct.dtype}")
    require_finite(rewards, "rewards")


def group_normalized_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, norm_by_std: bool, epsilon: float
) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` (unbiased std) or ``r - mean_g``; [B] -> [B].

    Computed in float64. A group whose rewards are all equal (including a group of one) gets exactly 0,
    also when float rounding would leave ``r - mean`` a tiny non-zero number.
    """
    idx = index_groups(group_ids)
    r = rewards.double()
    counts = idx.counts.double()
    mean = group_sum(r, idx) / counts
    dev = r - mean[idx.inverse]
    if norm_by_std:
        var = group_sum(dev * dev, idx) / (counts - 1).clamp_min(1)
        adv = dev / (var.sqrt()[idx.inverse] + epsilon)
    else:
        adv = dev
    lo, hi = group_minmax(r, idx)
    constant = (hi == lo)[idx.inverse]
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.to(rewards.dtype)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """GRPO: group-normalised by mean and unbiased std (docs/algorithm.md §1); also DAPO's and ResRL's
    base advantage."""
    _check_inputs(rewards, correct, group_ids)
    return group_normalized_advantages(rewards, group_ids, norm_by_std=True, epsilon=cfg.epsilon)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """Dr.GRPO: ``r - mean_g`` without the std division (docs/algorithm.md §1, ``norm_by_std: false``)."""
    _check_inputs(rewards, correct, group_ids)
    return group_normalized_advantages(rewards, group_ids, norm_by_std=False, epsilon=cfg.epsilon)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """RLOO: the reward minus the mean of the OTHER responses of its group (leave-one-out baseline,
    NeMo RL's default), ``A_i = r_i - (sum_g r - r_i) / (G - 1) = G / (G - 1) * (r_i - mean_g)``. A group of
    one response, or of equal rewards, gets exactly 0 (docs/algorithm.md §1)."""
    _check_inputs(rewards, correct, group_ids)
    idx = index_groups(group_ids)
    r = rewards.double()
    counts = idx.counts.double()
    total = group_sum(r, idx)
    others = (total[idx.inverse] - r) / (counts[idx.inverse] - 1).clamp_min(1)
    adv = r - others
    lo, hi = group_minmax(r, idx)
    constant = (hi == lo)[idx.inverse] | (counts[idx.inverse] < 2)
    return torch.where(constant, torch.zeros_like(adv), adv).to(rewards.dtype)


@ADVANTAGE_ESTIMATORS.register("psr")
def psr_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """PSR: +1 for correct responses, 0 for the rest (docs/algorithm.md §8)."""
    _check_inputs(rewards, correct, group_ids)
    return correct.to(rewards.dtype)


@ADVANTAGE_ESTIMATORS.register("nsr")
def nsr_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """NSR: -1 for incorrect responses, 0 for the rest (docs/algorithm.md §8)."""
    _check_inputs(rewards, correct, group_ids)
    return -(~correct).to(rewards.dtype)


@ADVANTAGE_ESTIMATORS.register("w_reinforce")
def w_reinforce_advantage(
    rewards: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig
) -> torch.Tensor:
    """W-REINFORCE: lambda for correct, -1 for incorrect, no group normalisation (docs/algorithm.md §8)."""
    _check_inputs(rewards, correct, group_ids)
    lam = torch.full_like(rewards, cfg.w_reinforce_lambda)
    return torch.where(correct, lam, -torch.ones_like(rewards))


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig | None = None,
) -> torch.Tensor:
    """Look up estimator ``name`` in the registry and apply it; [B] -> [B]."""
    return ADVANTAGE_ESTIMATORS.get(name)(rewards, correct, group_ids, cfg or AdvantageConfig())


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B] advantages -> [B, T] token advantages (0 at masked positions)."""
    require(response_mask.dim() == 2, f"response_mask must be [B, T], got {tuple(response_mask.shape)}")
    require_shape(advantages, (response_mask.shape[0],), "advantages")
    return advantages[:, None] * response_mask.to(advantages.dtype)
