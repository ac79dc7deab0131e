"""Independent transcriptions of the reference codes' losses, for ``test_recipes.py``.

Each function is written from the code it names (read from the repositories, not from this project's
docs), in float64 torch, and never calls ``nemo_resrl``:

- verl 0.5.0 (what the released ResRL code patches): ``core_algos.compute_grpo_outcome_advantage``,
  ``compute_rloo_outcome_advantage`` (its vectorised form, one-response groups 0), ``compute_policy_loss``
  (PPO clip, dual clip c), ``agg_loss``, ``kl_penalty``, ``torch_functional.masked_mean`` (+ 1e-8), the
  DAPO reward manager's overlong penalty, the old ``tis_imp_ratio_cap`` truncated importance sampling, and
  ``dp_actor.update_policy``'s micro-batch loop (each micro-batch's loss divided by the gradient-
  accumulation count);
- the released ResRL code (github 1229095296/ResRL, ``dp_actor._compute_svd_token_weights`` and the
  weighted advantages of ``update_policy``; ``reward_manager/naive._apply_length_penalty``), with its
  ``torch.pca_lowrank`` replaced by an exact SVD;
- RLVR-Decomposed (the NSR paper's code): ``compute_psr_nsr_outcome_advantage``, the ``batch.subset`` of
  PSR / NSR before the update, and its ``compute_policy_loss`` (PPO clip without dual clip, ``masked_mean``
  without epsilon) with the entropy bonus.

Inputs are per response: ``logp`` (the current policy's, a leaf with grad) / ``old`` / ``ref`` /
``rollout_logp`` / ``entropy`` [N, T], ``mask`` [N, T] bool, ``scores`` [N], ``uid`` [N] (group ids).
"""

from __future__ import annotations

from collections import defaultdict

import torch

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- verl 0.5
def verl_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / (mask.sum() + 1e-8)


def verl_agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, mode: str) -> torch.Tensor:
    loss_mask = loss_mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return verl_masked_mean(loss_mat, loss_mask)
    if mode == "seq-mean-token-sum":
        return torch.sum(loss_mat * loss_mask, dim=-1).mean()
    if mode == "seq-mean-token-mean":
        return (torch.sum(loss_mat * loss_mask, dim=-1) / torch.sum(loss_mask, dim=-1)).mean()
    if mode == "seq-mean-token-sum-norm":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        return torch.sum(seq_losses) / loss_mask.shape[-1]
    raise ValueError(mode)


def verl_grpo_advantage(
    scores: torch.Tensor, uid: list, norm_adv_by_std: bool = True, epsilon: float = 1e-6
) -> torch.Tensor:
    """[N] outcome advantages (the token broadcast is done by the caller)."""
    scores = scores.clone().to(F64)
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(len(scores)):
        id2score[uid[i]].append(scores[i])
    for idx in id2score:
        if len(id2score[idx]) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
        else:
            id2mean[idx] = torch.mean(torch.tensor(id2score[idx], dtype=F64))
            id2std[idx] = torch.std(torch.tensor([id2score[idx]], dtype=F64))
    for i in range(len(scores)):
        if norm_adv_by_std:
            scores[i] = (scores[i] - id2mean[uid[i]]) / (id2std[uid[i]] + epsilon)
        else:
            scores[i] = scores[i] - id2mean[uid[i]]
    return scores


def verl_rloo_vectorized(scores: torch.Tensor, uid: list) -> torch.Tensor:
    """``rloo_vectorized``: ``(c * r - group_sum) / (c - 1)`` where the group has c > 1 responses, else 0."""
    scores = scores.to(F64)
    out = torch.zeros_like(scores)
    for i in range(len(scores)):
        members = [j for j in range(len(scores)) if uid[j] == uid[i]]
        c = len(members)
        group_sum = sum(float(scores[j]) for j in members)
        out[i] = (c * scores[i] - group_sum) / max(c - 1, 1) * (c > 1)
    return out


def verl_dapo_overlong(length: int, max_resp_len: int, buffer_len: int, penalty_factor: float) -> float:
    """The DAPO reward manager: ``min(-exceed_len / overlong_buffer_len * penalty_factor, 0)``."""
    expected_len = max_resp_len - buffer_len
    exceed_len = length - expected_len
    return min(-exceed_len / buffer_len * penalty_factor, 0.0)


def verl_kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str) -> torch.Tensor:
    if kind in ("kl", "k1"):
        return logprob - ref_logprob
    if kind in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    if kind in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    raise ValueError(kind)


def verl_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_low: float,
    cliprange_high: float,
    clip_ratio_c: float,
    loss_agg_mode: str,
    tis_imp_ratio_cap: float = -1,
    rollout_log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """``compute_policy_loss`` (vanilla) of verl 0.5, with the later ``tis_imp_ratio_cap`` lines."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    if tis_imp_ratio_cap > 0 and rollout_log_probs is not None:
        tis_imp_ratio = torch.exp(old_log_prob - rollout_log_probs)
        tis_imp_ratio = torch.clamp(tis_imp_ratio, max=tis_imp_ratio_cap)
        pg_losses = pg_losses * tis_imp_ratio
    return verl_agg_loss(pg_losses, response_mask, loss_agg_mode)


def verl_update(
    rows: list[int],
    micro_size: int,
    logp: torch.Tensor,
    old: torch.Tensor,
    adv_tok: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: tuple[float, float, float],
    agg: str,
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
    ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "low_var_kl",
    tis_cap: float = -1,
    rollout_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss whose gradient one ``dp_actor.update_policy`` mini-batch (``rows``) accumulates before its
    optimizer step: the sum over micro-batches of ``policy_loss / gradient_accumulation``. The tensors are
    [N, max response length] wide, as verl pads them."""
    ga = len(rows) // micro_size
    total = torch.zeros((), dtype=F64)
    for start in range(0, len(rows), micro_size):
        r = rows[start : start + micro_size]
        m = mask[r].to(F64)
        pg_loss = verl_policy_loss(
            old[r],
            logp[r],
            adv_tok[r],
            m,
            clip[0],
            clip[1],
            clip[2],
            agg,
            tis_cap,
            None if rollout_logp is None else rollout_logp[r],
        )
        policy_loss = pg_loss
        if entropy_coeff != 0:
            policy_loss = pg_loss - verl_agg_loss(entropy[r], m, agg) * entropy_coeff
        if kl_coef:
            kld = verl_kl_penalty(logp[r], ref[r], kl_type)
            policy_loss = policy_loss + verl_agg_loss(kld, m, agg) * kl_coef
        total = total + policy_loss / ga
    return total


# ------------------------------------------------------------------------------------- released ResRL
def resrl_length_penalty(
    reward: float, response_length: int, start: int, max_length: int, end: float
) -> float:
    """``NaiveRewardManager._apply_length_penalty``."""
    if reward <= 0:
        return reward
    if response_length <= start:
        return reward
    if response_length <= max_length:
        if max_length <= start:
            return reward * end
        ratio = (response_length - start) / (max_length - start)
        return reward * (1.0 - (1.0 - end) * ratio)
    return reward * end


def resrl_svd_token_weights(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    is_positive: torch.Tensor,
    uid: list,
    *,
    rank: int = 64,
    q_low: float = 0.2,
    q_high: float = 0.8,
    min_w: float = 0.1,
) -> torch.Tensor:
    """``_compute_svd_token_weights`` on a micro-batch holding whole groups; ``torch.pca_lowrank(Xc, q=k)``
    replaced by the exact top-k right singular vectors of Xc."""
    eps = 1e-6
    bsz, _, hidden_size = hidden.shape
    weights_out = torch.ones(mask.shape, dtype=F64)
    mask_b = mask.bool()
    if not is_positive.any():
        return weights_out
    for pid in sorted(set(uid)):
        group = torch.tensor([u == pid for u in uid])
        pos_mask, neg_mask = group & is_positive, group & ~is_positive
        if not pos_mask.any() or not neg_mask.any():
            continue
        pos_valid = hidden[pos_mask][mask_b[pos_mask]]
        if pos_valid.shape[0] < 4:
            continue
        x = torch.nn.functional.layer_norm(pos_valid.to(F64), (hidden_size,))
        mu = x.mean(dim=0, keepdim=True)
        xc = x - mu
        k = min(rank, xc.shape[0] - 1, xc.shape[1])
        if k < 1:
            continue
        v_k = torch.linalg.svd(xc, full_matrices=False).Vh[:k].T
        neg_idx = torch.where(neg_mask)[0]
        neg_m = mask_b[neg_mask]
        hc = torch.nn.functional.layer_norm(hidden[neg_mask].to(F64), (hidden_size,)) - mu
        resid = hc - (hc @ v_k) @ v_k.T
        distances = (resid * resid).sum(dim=-1) / float(hidden_size)
        valid = distances[neg_m]
        if valid.numel() == 0:
            continue
        lo, hi = torch.quantile(valid, q_low), torch.quantile(valid, q_high)
        range_val = (hi - lo).clamp_min(eps)
        w = torch.ones_like(distances)
        if range_val < eps * 10:
            w[neg_m] = (min_w + 1.0) / 2.0
        else:
            w[neg_m] = min_w + (1.0 - min_w) * ((distances - lo) / range_val).clamp(0.0, 1.0)[neg_m]
        w = w.clamp(min_w, 1.0)
        nm = neg_m.to(F64)
        weights_out[neg_idx] = w * nm + (1.0 - nm)
    return weights_out


def resrl_weighted_advantages(
    adv_tok: torch.Tensor,
    mask: torch.Tensor,
    is_positive: torch.Tensor,
    svd_w: torch.Tensor,
    pos_w: float = 0.1,
) -> torch.Tensor:
    """``update_policy``: positives' advantages times ``svd_pos_weight``, the others' times their weights."""
    adv = adv_tok * mask
    out = adv.clone()
    for i in range(adv.shape[0]):
        out[i] = adv[i] * pos_w if is_positive[i] else adv[i] * svd_w[i]
    return out


# ------------------------------------------------------------------------------------- RLVR-Decomposed
def rlvr_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def rlvr_advantages(
    scores: torch.Tensor, mask: torch.Tensor, advantage: str, weight: float = 1.0
) -> torch.Tensor:
    """``compute_psr_nsr_outcome_advantage`` with gamma 1: the score sits on the last valid token, so the
    return-to-go is the score on every valid token."""
    token_scores = torch.zeros(mask.shape, dtype=F64)
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        if n:
            token_scores[i, n - 1] = scores[i]
    correct_idx = token_scores.sum(-1) == 1
    incorrect_idx = token_scores.sum(-1) == 0
    returns = torch.zeros_like(token_scores)
    running = torch.zeros(mask.shape[0], dtype=F64)
    for t in reversed(range(mask.shape[1])):
        running = token_scores[:, t] + running
        returns[:, t] = running
        running = running * mask[:, t]
    if advantage == "positive":
        adv = returns.clone()
    elif advantage == "negative":
        adv = returns.clone() - 1
    else:
        adv = returns.clone()
        adv[correct_idx] *= weight
        adv[incorrect_idx] -= 1
    return adv * mask


def rlvr_update(
    rows: list[int],
    logp: torch.Tensor,
    old: torch.Tensor,
    adv_tok: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    *,
    cliprange: float = 0.2,
    entropy_coeff: float = 0.001,
    micro_size: int | None = None,
) -> torch.Tensor:
    """One mini-batch (``rows``, after ``batch.subset``) of the fork's ``dp_actor.update_policy``:
    ``masked_mean(max(pg_losses, pg_losses2))`` (no dual clip) minus the entropy bonus, per micro-batch,
    divided by the gradient-accumulation count."""
    micro_size = micro_size or len(rows)
    ga = len(rows) // micro_size
    total = torch.zeros((), dtype=F64)
    for start in range(0, len(rows), micro_size):
        r = rows[start : start + micro_size]
        m = mask[r].to(F64)
        ratio = torch.exp(logp[r] - old[r])
        pg_losses = -adv_tok[r] * ratio
        pg_losses2 = -adv_tok[r] * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
        pg_loss = rlvr_masked_mean(torch.max(pg_losses, pg_losses2), m)
        entropy_loss = rlvr_masked_mean(entropy[r], m)
        total = total + (pg_loss - entropy_loss * entropy_coeff) / ga
    return total
