"""Independent float64 reference implementations written from docs/algorithm.md (sections cited as §N),
used by the algorithm tests.

Deliberately plain (python loops, numpy float64): they never call the code under test.
"""

from __future__ import annotations

import numpy as np


def grpo(rewards, groups, norm_by_std=True, eps=1e-6):
    """§1: A_i = (r_i - mean_g) / (std_g + eps) (unbiased std) or r_i - mean_g; equal rewards -> 0."""
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = list(groups)
    out = np.zeros_like(rewards)
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        r = rewards[idx]
        if len(set(r.tolist())) == 1:
            continue
        mean = r.sum() / len(r)
        std = np.sqrt(((r - mean) ** 2).sum() / (len(r) - 1))
        for i in idx:
            out[i] = (rewards[i] - mean) / (std + eps) if norm_by_std else rewards[i] - mean
    return out


def layer_norm(h, eps=1e-5):
    """docs/algorithm.md §3: non-parametric LayerNorm over the last axis."""
    h = np.asarray(h, dtype=np.float64)
    mu = h.mean(axis=-1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
    return (h - mu) / np.sqrt(var + eps)


def subspace(x_pos, rank):
    """§4 steps 3-4 with numpy's float64 SVD: (mu [d], V_k [d, k]), k = min(rank, M - 1, d)."""
    x_pos = np.asarray(x_pos, dtype=np.float64)
    m, d = x_pos.shape
    mu = x_pos.mean(axis=0)
    _, _, vt = np.linalg.svd(x_pos - mu, full_matrices=False)
    k = min(rank, m - 1, d)
    return mu, vt[:k].T


def residuals(x, mu, v):
    """docs/algorithm.md §5: R = ||xc - V V^T xc||^2 / d, xc = x - mu, row by row."""
    out = []
    for row in np.asarray(x, dtype=np.float64):
        xc = row - mu
        r = xc - v @ (v.T @ xc)
        out.append(float(r @ r) / len(row))
    return np.array(out)


def gate(r, alpha, beta, xi):
    """docs/algorithm.md §5: quantile gating to [xi, 1] (numpy's default linear quantile)."""
    q_lo, q_hi = np.quantile(r, alpha), np.quantile(r, beta)
    if q_hi - q_lo < 1e-5:
        z = np.full_like(r, 0.5)
    else:
        z = np.clip((r - q_lo) / max(q_hi - q_lo, 1e-6), 0.0, 1.0)
    return xi + (1.0 - xi) * z


def resrl_weights(
    hidden,
    mask,
    groups,
    adv,
    *,
    rank,
    alpha,
    beta,
    xi,
    response_ids=None,
    rows_for_group=None,
    min_pos_tokens=4,
    ln=True,
    positive=None,
):
    """docs/algorithm.md §2-5 for a whole batch: weights [B, T] (1 for positives, skipped groups and padding).

    rows_for_group(gid, pool_size) -> indices of the sampled pool rows; None means take all rows.
    positive: [B] bool, the positive set (None: A > 0).
    """
    hidden = np.asarray(hidden, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    adv = np.asarray(adv, dtype=np.float64)
    b, t, _ = hidden.shape
    groups = list(groups)
    response_ids = list(range(b)) if response_ids is None else list(response_ids)
    w = np.ones((b, t))
    norm = layer_norm if ln else (lambda h: np.asarray(h, dtype=np.float64))
    for g in sorted(set(groups)):
        members = sorted((i for i in range(b) if groups[i] == g), key=lambda i: response_ids[i])
        is_pos = (lambda i: adv[i] > 0) if positive is None else (lambda i: bool(positive[i]))
        pos = [i for i in members if is_pos(i)]
        neg = [i for i in members if not is_pos(i)]
        if not pos or not neg:
            continue
        pool = [hidden[i, j] for i in pos for j in range(t) if mask[i, j]]
        neg_tok = [(i, j) for i in neg for j in range(t) if mask[i, j]]
        if len(pool) < min_pos_tokens or not neg_tok:
            continue
        rows = range(len(pool)) if rows_for_group is None else rows_for_group(g, len(pool))
        mu, v = subspace(norm(np.stack([pool[r] for r in rows])), rank)
        r = residuals(norm(np.stack([hidden[i, j] for i, j in neg_tok])), mu, v)
        for (i, j), wij in zip(neg_tok, gate(r, alpha, beta, xi)):
            w[i, j] = wij
    return w
