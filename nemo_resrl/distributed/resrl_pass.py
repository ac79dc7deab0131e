"""ResRL token weights computed inside the actor's old-log-prob pass, groups spread over ranks.

The old-log-prob pass (forward only, at the rollout weights) runs anyway for GRPO; ResRL rides on it:

1. Plan (every rank, from a tiny all-gather of per-response metadata over data parallel): each
   group's positive pool (valid tokens of its positive responses, ordered by (response id, position)),
   its skip reason (docs/algorithm.md §4.5), its owner (active groups round-robin over the data-parallel
   ranks) and
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
that silently get weight 1 (the released code's defect, docs/algorithm.md §10).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.distributed as dist

from nemo_resrl.algorithms.resrl import (
    ResponseMeta,
    ResRLStats,
    gate,
    group_sample_seed,
    group_skip_reason,
    normalize_hidden,
    quantile_bounds,
    sample_row_indices,
)
from nemo_resrl.algorithms.subspace import PositiveSubspace, fit_positive_subspace, residual_energy
from nemo_resrl.common import require, require_finite, require_shape
from nemo_resrl.config.algorithm import ResRLConfig
from nemo_resrl.distributed.collectives import all_gather_rows, exchange_rows, group_global_rank
from nemo_resrl.models.batch import Sequences, TokenOutputs

if TYPE_CHECKING:  # pragma: no cover
    from nemo_resrl.models.forward import PenultimateChunk


class PassActor(Protocol):
    """What the pass needs of the actor (``MegatronActor``): its layout, the forward-only pass with a
    penultimate-layer consumer, and the broadcast from the stage that owns layer L-2."""

    layout: object
    device: torch.device
    hidden_size: int

    def forward_logprobs(self, seqs: Sequences, **kw) -> TokenOutputs: ...

    def owns_penultimate_layer(self) -> bool: ...

    def broadcast_from_penultimate_owner(self, t: torch.Tensor) -> torch.Tensor: ...


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


class ResRLPass:
    """One old-log-prob pass with ResRL weights over this rank's share (module docstring, steps 1-6).

    Built per call; ``run()`` does the pass. The state shared between the steps (the plan, the rows kept
    for the owners, the fitted subspaces, the negative residuals) lives on the instance, and each step is
    a method: ``_plan``, ``consume`` (the layer L-2 hook), ``_fit_and_share``, ``_gate``.
    """

    def __init__(
        self,
        actor: PassActor,
        seqs: Sequences,
        meta: ResponseMeta,
        cfg: ResRLConfig,
        *,
        step: int,
        valid_mask: torch.Tensor | None = None,
    ) -> None:
        from megatron.core import parallel_state as ps

        B = len(seqs)
        _, resp_mask = seqs.response_tokens()
        T = resp_mask.shape[1]
        mask = resp_mask if valid_mask is None else (valid_mask.bool() & resp_mask)
        require_shape(mask, (B, T), "valid_mask")
        for name, t in (("group_ids", meta.group_ids), ("response_ids", meta.response_ids)):
            require_shape(t, (B,), name)
        require_shape(meta.advantages, (B,), "advantages")
        require_finite(meta.advantages, "advantages")
        self.actor, self.seqs, self.meta, self.cfg, self.step = actor, seqs, meta, cfg, step
        self.B, self.T, self.mask = B, T, mask
        self.lay, self.dev, self.d = actor.layout, actor.device, actor.hidden_size
        self.dp_group = ps.get_data_parallel_group()
        self.is_pos = meta.advantages > 0 if meta.positive is None else meta.positive.bool()
        self.n_valid = mask.sum(dim=1)
        # only tensor rank 0 of the stage owning layer L-2 computes; the others receive the weights
        self.computes = actor.owns_penultimate_layer() and self.lay.tp_rank == 0
        self.width = min(cfg.rank, self.d)
        self.subspaces: dict[int, PositiveSubspace] = {}
        self.kept_rows: list[torch.Tensor] = []
        self.kept_keys: list[torch.Tensor] = []
        self.resid = torch.full((B, T), float("nan"))
        self.fitted = False
        self._plan()

    # 1. the plan, identical on every rank
    def _plan(self) -> None:
        meta, mask, B, T = self.meta, self.mask, self.B, self.T
        local = torch.stack(
            [
                meta.group_ids.long(),
                meta.response_ids.long(),
                self.n_valid.long(),
                self.is_pos.long(),
                (~self.is_pos & (meta.advantages < 0)).long(),
            ],
            dim=1,
        ).to(self.dev)
        table = torch.cat(all_gather_rows(local, self.dp_group)).cpu()
        self.plans = plan_groups(table, self.d, self.cfg, self.step, self.lay.dp)
        self.by_gid = {g.gid: g for g in self.plans}
        self.active = [g for g in self.plans if g.reason is None]
        self.pos_idx = [i for i in range(B) if self.is_pos[i]]
        self.neg_idx = [i for i in range(B) if not self.is_pos[i]]
        self.seq_group = torch.tensor([self.by_gid[int(g)].active for g in meta.group_ids], dtype=torch.long)
        self.info = torch.zeros(len(self.active), 2)  # (k, converged) per active group
        # sampled pool index of each local positive token (-1: not sampled)
        self.sample_pool = torch.full((B, T), -1, dtype=torch.long)
        for i in self.pos_idx:
            g = self.by_gid[int(meta.group_ids[i])]
            if g.reason is not None:
                continue
            o, n = g.pool_offset[int(meta.response_ids[i])], int(self.n_valid[i])
            picked = g.sample[(g.sample >= o) & (g.sample < o + n)]
            positions = mask[i].nonzero().squeeze(1)[picked - o]
            self.sample_pool[i, positions] = picked
        # positives with response tokens: once all of them went by, the subspaces can be fitted
        lens = self.seqs.response_lens
        self.pos_left = {i for i in self.pos_idx if lens[i] > 0}

    # 3. rows to owners (all-to-all), SVD on the owner, projectors broadcast (collective over dp)
    def _fit_and_share(self) -> None:
        if not self.active:
            return
        cfg, d, dev, lay, width = self.cfg, self.d, self.dev, self.lay, self.width
        rows = torch.cat(self.kept_rows).to(dev) if self.kept_rows else torch.zeros(0, d, device=dev)
        keys = torch.cat(self.kept_keys) if self.kept_keys else torch.zeros(0, 2, dtype=torch.long)
        owners = torch.tensor([self.active[a].owner for a in keys[:, 0].tolist()], dtype=torch.long)
        payload = torch.cat([keys.to(torch.float64).to(dev), rows.double()], dim=1)  # exact ids in fp64
        self.kept_rows.clear()
        self.kept_keys.clear()
        got, _ = exchange_rows(payload, owners.to(dev), self.dp_group)
        got = got.cpu()
        packed = []
        for g in (g for g in self.active if g.owner == lay.dp_rank):
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
                seed=group_sample_seed(cfg.seed + 1, self.step, g.gid),
            )
            packed.append(_pack(sub, width))
        for src in range(lay.dp):
            owned = [g for g in self.active if g.owner == src]
            if src == lay.dp_rank:
                buf = torch.stack(packed) if packed else torch.zeros(0, d + d * width + 2, device=dev)
            else:
                buf = torch.empty(len(owned), d + d * width + 2, device=dev)
            if lay.dp > 1:
                dist.broadcast(buf, src=group_global_rank(self.dp_group, src), group=self.dp_group)
            for g, b in zip(owned, buf):
                sub = _unpack(b, d, width)
                self.subspaces[g.active] = sub
                self.info[g.active] = torch.tensor([sub.rank, float(sub.converged)])

    # 2 and 4. the layer L-2 consumer: positives first (phase 0), then negatives (phase 1)
    def consume(self, chunk: PenultimateChunk) -> None:
        if not self.computes:
            return
        cfg, mask, is_pos = self.cfg, self.mask, self.is_pos
        s, r = chunk.seq_index.cpu(), chunk.resp_pos.cpu()
        pool = self.sample_pool[s, r]
        sel = pool >= 0
        if bool(sel.any()):
            self.kept_rows.append(normalize_hidden(chunk.hidden[sel.to(chunk.hidden.device)], cfg.ln_eps))
            self.kept_keys.append(torch.stack([self.seq_group[s[sel]], pool[sel]], dim=1))
        self.pos_left.difference_update(s[is_pos[s]].unique().tolist())
        if not self.fitted and chunk.phases_done >= 1:
            # the positives' phase is complete: within the micro-batch holding the last positive, before its
            # negatives (with expert parallelism, at the same micro-batch on every rank: a collective)
            if self.pos_left:
                raise RuntimeError(f"internal error: positives {sorted(self.pos_left)} not seen by phase end")
            self._fit_and_share()
            self.fitted = True
        grp = self.seq_group[s]
        use = (grp >= 0) & ~is_pos[s] & mask[s, r]
        for a in torch.unique(grp[use]).tolist():
            pick = use & (grp == a)
            x = normalize_hidden(chunk.hidden[pick.to(chunk.hidden.device)], cfg.ln_eps)
            self.resid[s[pick], r[pick]] = (
                residual_energy(x, self.subspaces[a], cfg.residual_chunk_tokens).float().cpu()
            )

    # 5. quantile bounds per group over all its negative tokens (all ranks), gate own tokens
    def _gate(self) -> torch.Tensor:
        neg_idx_t = torch.tensor(self.neg_idx, dtype=torch.long)
        neg_group = self.seq_group[neg_idx_t]
        neg_mask = self.mask[neg_idx_t]
        resid = self.resid[neg_idx_t]
        w_neg = torch.ones(len(self.neg_idx), self.T)
        if self.computes and self.active:
            have = neg_mask & (neg_group[:, None] >= 0)
            grp_tok = neg_group[:, None].expand(-1, self.T)[have]
            vals = torch.stack([grp_tok.double(), resid[have].double()], dim=1).to(self.dev)
            everything = torch.cat(all_gather_rows(vals, self.dp_group)).cpu()
            for g in self.active:
                mine = have & (neg_group[:, None] == g.active)
                all_r = everything[everything[:, 0].long() == g.active, 1].float()
                require(
                    all_r.numel() == g.n_neg_tokens,
                    f"group {g.gid}: {all_r.numel()} negative residuals gathered, expected {g.n_neg_tokens}",
                )
                q_lo, q_hi = quantile_bounds(all_r, self.cfg.alpha, self.cfg.beta)
                if bool(mine.any()):
                    w_neg[mine] = gate(resid[mine], q_lo, q_hi, self.cfg.xi)
        return w_neg

    def _stats(self) -> ResRLStats:
        stats = ResRLStats(num_groups=len(self.plans), num_active=len(self.active), skipped=Counter())
        for g in self.plans:
            stats.num_negative_tokens += g.n_penalised_tokens
            if g.reason is None:
                stats.num_weighted_tokens += g.n_penalised_tokens
            else:
                stats.skipped[g.reason] += 1
        stats.subspace_ranks = [int(k) for k in self.info[:, 0].tolist()]
        stats.svd_fallbacks = int((self.info[:, 1] < 0.5).sum()) if len(self.active) else 0
        return stats

    def run(self, *, with_entropy: bool = False) -> ResRLPassResult:
        """Steps 2-6: one forward pass (positives first), the gating, the broadcast of the weights."""
        phases = [0 if bool(p) else 1 for p in self.is_pos]
        outputs = self.actor.forward_logprobs(
            self.seqs, with_entropy=with_entropy, penultimate_consumer=self.consume, phases=phases
        )
        if self.computes and not self.fitted:
            raise RuntimeError("internal error: the positive subspaces were never fitted during the pass")
        w_neg = self._gate()
        # 6. to the other tensor / pipeline ranks of this replica
        w_neg = self.actor.broadcast_from_penultimate_owner(w_neg)
        self.info = self.actor.broadcast_from_penultimate_owner(self.info)
        weights = torch.ones(self.B, self.T)
        if self.neg_idx:
            weights[self.neg_idx] = w_neg
        return ResRLPassResult(outputs=outputs, weights=weights, stats=self._stats())


def old_logprobs_with_resrl(
    actor: PassActor,
    seqs: Sequences,
    meta: ResponseMeta,
    cfg: ResRLConfig,
    *,
    step: int,
    valid_mask: torch.Tensor | None = None,
    with_entropy: bool = False,
) -> ResRLPassResult:
    """The old-log-prob pass of this rank's share ``seqs`` with ResRL weights (module docstring).

    valid_mask: optional [B, T] response-aligned mask of the tokens that count (default: every response
    token); the same mask the loss will use. Collective over all ranks of the job.
    """
    return ResRLPass(actor, seqs, meta, cfg, step=step, valid_mask=valid_mask).run(with_entropy=with_entropy)
