"""ResRL token weights computed inside the actor's old-log-prob pass, groups spread over ranks.

The old-log-prob pass (forward only, at the rollout weights) runs anyway for GRPO; ResRL rides on it:

1. Plan (every rank, from a tiny all-gather of per-response metadata over data parallel): each
   group's positive pool (valid tokens of its positive responses, ordered by (response id, position)),
   its skip reason (SPEC 4.5), its owner (active groups round-robin over the data-parallel ranks) and
   its sampled pool indices, drawn with the same seed as the single-process ``compute_resrl_weights``:
   the sample is uniform over the WHOLE group, whichever rank holds which response.
2. One forward pass with the positive responses first (phase 0) and the negative ones after
   (phase 1). For positives, the layer L-2 consumer keeps only the sampled rows (LayerNorm-ed,
   float32) of this rank's positive tokens.
3. In the micro-batch that holds this rank's last positive response (before its negatives), the rows
   go to their group's owner (all-to-all), which fits (mu, V_k) and broadcasts it. (A collective
   inside the forward-only pass is safe: nothing else in it talks across data-parallel ranks.)
4. For negatives, the consumer turns each token's hidden state into its residual energy at once;
   one float per negative token is kept.
5. The residuals of each group are all-gathered (scalars only); every rank computes the group's
   quantile bounds over ALL its negative tokens and gates its own tokens.
6. The weights go from the rank that computed them to the other tensor / pipeline ranks of its
   data-parallel replica.

Only tensor rank 0 of the pipeline stage that owns layer L-2 does steps 2-5 (tensor ranks hold the
same hidden states): one gather per tensor-parallel group, not one per rank. Extra memory: the
sampled rows (<= M x d per group, spread over ranks), the projectors (groups x d x (k + 1)), and one
float per negative token. Nothing keeps all hidden states, and no group is ever split into parts
that silently get weight 1 (the released code's defect, SPEC 10).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.checks import require, require_finite, require_shape
from nemo_resrl.algorithms.resrl import (
    ResRLConfig,
    ResRLStats,
    gate,
    group_sample_seed,
    group_skip_reason,
    normalize_hidden,
    quantile_bounds,
    sample_row_indices,
)
from nemo_resrl.algorithms.subspace import PositiveSubspace, fit_positive_subspace, residual_energy
from nemo_resrl.distributed.collectives import all_gather_rows, exchange_rows, group_global_rank
from nemo_resrl.models.actor import MegatronActor, PenultimateChunk, TokenOutputs
from nemo_resrl.models.batch import Sequences


@dataclass
class ResponseMeta:
    """Per-sequence metadata of this rank's share, [B] each.

    group_ids: prompt group (unique per prompt within the step); response_ids: unique over the WHOLE
    step (all ranks), it fixes the sampling order; advantages: outcome advantages (A > 0: positive).
    """

    group_ids: torch.Tensor
    response_ids: torch.Tensor
    advantages: torch.Tensor


@dataclass
class GroupPlan:
    """One group as every rank sees it after the metadata all-gather."""

    gid: int
    n_pos: int = 0
    n_neg: int = 0
    n_pos_tokens: int = 0
    n_neg_tokens: int = 0  # valid tokens of non-positive responses (the quantile population)
    n_penalised_tokens: int = 0  # valid tokens of responses with A < 0
    pool_offset: dict[int, int] = field(default_factory=dict)  # response id -> first pool index
    reason: str | None = None
    active: int = -1  # index among active groups
    owner: int = -1  # data-parallel rank that fits the subspace
    sample: torch.Tensor | None = None  # sorted pool indices [M]


@dataclass
class ResRLPassResult:
    """Old log-probs of all B sequences, the ResRL weights [B, T] (1 outside negative tokens of active
    groups), and what happened to each group."""

    outputs: TokenOutputs
    weights: torch.Tensor
    stats: ResRLStats


def plan_groups(
    table: torch.Tensor, hidden_dim: int, cfg: ResRLConfig, step: int, dp: int
) -> list[GroupPlan]:
    """Groups (sorted by id) from the gathered metadata ``table`` [N, 5] int64 rows
    ``(group id, response id, valid tokens, is_positive, is_penalised)``."""
    require(
        torch.unique(table[:, 1]).numel() == table.shape[0],
        "response_ids must be unique over the whole step (all data-parallel ranks)",
    )
    plans: dict[int, GroupPlan] = {}
    order = torch.argsort(table[:, 1])  # response-id order fixes the pool order
    for gid, rid, n, pos, pen in table[order].tolist():
        g = plans.setdefault(gid, GroupPlan(gid))
        if pos:
            g.pool_offset[rid] = g.n_pos_tokens
            g.n_pos += 1
            g.n_pos_tokens += n
        else:
            g.n_neg += 1
            g.n_neg_tokens += n
            g.n_penalised_tokens += n if pen else 0
    out = [plans[k] for k in sorted(plans)]
    n_active = 0
    for g in out:
        g.reason = group_skip_reason(g.n_pos, g.n_neg, g.n_pos_tokens, g.n_neg_tokens, hidden_dim, cfg)
        if g.reason is None:
            g.active, g.owner = n_active, n_active % dp
            g.sample = sample_row_indices(
                g.n_pos_tokens, cfg.max_rows, group_sample_seed(cfg.seed, step, g.gid)
            )
            n_active += 1
    return out


def _pack(sub: PositiveSubspace, width: int) -> torch.Tensor:
    d, k = sub.basis.shape
    out = torch.zeros(d + d * width + 2, dtype=torch.float32, device=sub.mean.device)
    out[:d] = sub.mean
    out[d : d + d * width].view(d, width)[:, :k] = sub.basis
    out[-2], out[-1] = k, float(sub.converged)
    return out


def _unpack(buf: torch.Tensor, d: int, width: int) -> PositiveSubspace:
    k = int(buf[-2])
    basis = buf[d : d + d * width].view(d, width)[:, :k].contiguous()
    return PositiveSubspace(mean=buf[:d].clone(), basis=basis, converged=bool(buf[-1] > 0.5))


def old_logprobs_with_resrl(
    actor: MegatronActor,
    seqs: Sequences,
    meta: ResponseMeta,
    cfg: ResRLConfig,
    *,
    step: int,
    valid_mask: torch.Tensor | None = None,
    with_entropy: bool = False,
) -> ResRLPassResult:
    """The old-log-prob pass of this rank's share ``seqs`` with ResRL weights (see module docstring).

    valid_mask: optional [B, T] response-aligned mask of the tokens that count (default: every response
    token); the same mask the loss will use. Collective over all ranks of the job.
    """
    from megatron.core import parallel_state as ps

    cfg.validate()
    B = len(seqs)
    _, resp_mask = seqs.response_tokens()
    T = resp_mask.shape[1]
    mask = resp_mask if valid_mask is None else (valid_mask.bool() & resp_mask)
    require_shape(mask, (B, T), "valid_mask")
    for name, t in (("group_ids", meta.group_ids), ("response_ids", meta.response_ids)):
        require_shape(t, (B,), name)
    require_shape(meta.advantages, (B,), "advantages")
    require_finite(meta.advantages, "advantages")
    lay = actor.layout
    dev = actor.device
    d = actor.hidden_size
    dp_group = ps.get_data_parallel_group()
    is_pos = meta.advantages > 0
    n_valid = mask.sum(dim=1)

    # 1. plan, identical on every rank
    local = torch.stack(
        [
            meta.group_ids.long(),
            meta.response_ids.long(),
            n_valid.long(),
            is_pos.long(),
            (meta.advantages < 0).long(),
        ],
        dim=1,
    ).to(dev)
    table = torch.cat(all_gather_rows(local, dp_group)).cpu()
    plans = plan_groups(table, d, cfg, step, lay.dp)
    by_gid = {g.gid: g for g in plans}
    active = [g for g in plans if g.reason is None]
    pos_idx = [i for i in range(B) if is_pos[i]]
    neg_idx = [i for i in range(B) if not is_pos[i]]
    seq_group = torch.tensor([by_gid[int(g)].active for g in meta.group_ids], dtype=torch.long)
    computes = actor.owns_penultimate_layer() and lay.tp_rank == 0

    # sampled pool index of each local positive token (-1: not sampled)
    sample_pool = torch.full((B, T), -1, dtype=torch.long)
    for i in pos_idx:
        g = by_gid[int(meta.group_ids[i])]
        if g.reason is not None:
            continue
        o, n = g.pool_offset[int(meta.response_ids[i])], int(n_valid[i])
        picked = g.sample[(g.sample >= o) & (g.sample < o + n)]
        positions = mask[i].nonzero().squeeze(1)[picked - o]
        sample_pool[i, positions] = picked

    subspaces: dict[int, PositiveSubspace] = {}
    width = min(cfg.rank, d)
    info = torch.zeros(len(active), 2)  # (k, converged) per active group
    resid = torch.full((B, T), float("nan"))
    kept_rows, kept_keys = [], []
    # positives with response tokens: once all of them went by, the subspaces can be fitted
    lens = seqs.response_lens
    pos_left = {i for i in pos_idx if lens[i] > 0}
    fitted = False

    def fit_and_share() -> None:
        """Rows to owners (all-to-all), SVD on the owner, projectors broadcast (collective over dp)."""
        if not active:
            return
        rows = torch.cat(kept_rows).to(dev) if kept_rows else torch.zeros(0, d, device=dev)
        keys = torch.cat(kept_keys) if kept_keys else torch.zeros(0, 2, dtype=torch.long)
        owners = torch.tensor([active[a].owner for a in keys[:, 0].tolist()], dtype=torch.long)
        payload = torch.cat([keys.to(torch.float64).to(dev), rows.double()], dim=1)  # exact ids in fp64
        kept_rows.clear()
        kept_keys.clear()
        got, _ = exchange_rows(payload, owners.to(dev), dp_group)
        got = got.cpu()
        packed = []
        for g in (g for g in active if g.owner == lay.dp_rank):
            part = got[got[:, 0].long() == g.active]
            part = part[torch.argsort(part[:, 1].long())]
            require(
                part.shape[0] == g.sample.numel() and torch.equal(part[:, 1].long(), g.sample),
                f"group {g.gid}: received {part.shape[0]} sampled rows, expected {g.sample.numel()} "
                "(ranks disagree on the batch?)",
            )
            sub = fit_positive_subspace(
                part[:, 2:].float().to(dev),
                cfg.rank,
                method=cfg.svd_method,
                max_iter=cfg.svd_max_iter,
                oversample=cfg.svd_oversample,
                tol=cfg.svd_tol,
                seed=group_sample_seed(cfg.seed + 1, step, g.gid),
            )
            packed.append(_pack(sub, width))
        for src in range(lay.dp):
            owned = [g for g in active if g.owner == src]
            if src == lay.dp_rank:
                buf = torch.stack(packed) if packed else torch.zeros(0, d + d * width + 2, device=dev)
            else:
                buf = torch.empty(len(owned), d + d * width + 2, device=dev)
            if lay.dp > 1:
                dist.broadcast(buf, src=group_global_rank(dp_group, src), group=dp_group)
            for g, b in zip(owned, buf):
                sub = _unpack(b, d, width)
                subspaces[g.active] = sub
                info[g.active] = torch.tensor([sub.rank, float(sub.converged)])

    def consume(chunk: PenultimateChunk) -> None:
        """Layer L-2 output of one micro-batch: positives first (phase 0), then negatives (phase 1)."""
        nonlocal fitted
        if not computes:
            return
        s, r = chunk.seq_index.cpu(), chunk.resp_pos.cpu()
        pool = sample_pool[s, r]
        sel = pool >= 0
        if bool(sel.any()):
            kept_rows.append(normalize_hidden(chunk.hidden[sel.to(chunk.hidden.device)], cfg.ln_eps))
            kept_keys.append(torch.stack([seq_group[s[sel]], pool[sel]], dim=1))
        pos_left.difference_update(s[is_pos[s]].unique().tolist())
        if not fitted and not pos_left:
            fit_and_share()  # within the micro-batch holding the last positive, before its negatives
            fitted = True
        grp = seq_group[s]
        use = (grp >= 0) & ~is_pos[s] & mask[s, r]
        for a in torch.unique(grp[use]).tolist():
            pick = use & (grp == a)
            x = normalize_hidden(chunk.hidden[pick.to(chunk.hidden.device)], cfg.ln_eps)
            resid[s[pick], r[pick]] = (
                residual_energy(x, subspaces[a], cfg.residual_chunk_tokens).float().cpu()
            )

    # 2-4. one pass: positives first, negatives after
    phases = [0 if bool(p) else 1 for p in is_pos]
    outputs = actor.forward_logprobs(
        seqs, with_entropy=with_entropy, penultimate_consumer=consume, phases=phases
    )
    if computes and not fitted:
        raise RuntimeError("internal error: the positive subspaces were never fitted during the pass")
    neg_idx_t = torch.tensor(neg_idx, dtype=torch.long)
    neg_group = seq_group[neg_idx_t]
    neg_mask = mask[neg_idx_t]
    resid = resid[neg_idx_t]

    # 5. quantile bounds per group over all its negative tokens (all ranks), gate own tokens
    w_neg = torch.ones(len(neg_idx), T)
    if computes and active:
        have = neg_mask & (neg_group[:, None] >= 0)
        grp_tok = neg_group[:, None].expand(-1, T)[have]
        vals = torch.stack([grp_tok.double(), resid[have].double()], dim=1).to(dev)
        everything = torch.cat(all_gather_rows(vals, dp_group)).cpu()
        for g in active:
            mine = have & (neg_group[:, None] == g.active)
            all_r = everything[everything[:, 0].long() == g.active, 1].float()
            require(
                all_r.numel() == g.n_neg_tokens,
                f"group {g.gid}: {all_r.numel()} negative residuals gathered, expected {g.n_neg_tokens}",
            )
            q_lo, q_hi = quantile_bounds(all_r, cfg.alpha, cfg.beta)
            if bool(mine.any()):
                w_neg[mine] = gate(resid[mine], q_lo, q_hi, cfg.xi)

    # 6. to the other tensor / pipeline ranks of this replica
    w_neg = actor.broadcast_from_penultimate_owner(w_neg)
    info = actor.broadcast_from_penultimate_owner(info)

    weights = torch.ones(B, T)
    if neg_idx:
        weights[neg_idx] = w_neg
    stats = ResRLStats(num_groups=len(plans), num_active=len(active), skipped=Counter())
    for g in plans:
        stats.num_negative_tokens += g.n_penalised_tokens
        if g.reason is None:
            stats.num_weighted_tokens += g.n_penalised_tokens
        else:
            stats.skipped[g.reason] += 1
    stats.subspace_ranks = [int(k) for k in info[:, 0].tolist()]
    stats.svd_fallbacks = int((info[:, 1] < 0.5).sum()) if len(active) else 0
    return ResRLPassResult(outputs=outputs, weights=weights, stats=stats)
