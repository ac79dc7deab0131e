"""ResRL token weights computed inside the actor's old-log-prob pass, groups spread over ranks.

The old-log-prob pass (forward only, at the rollout weights) runs anyway for GRPO; ResRL rides on it:

1. Plan (every rank, on the host, from a tiny all-gather of per-response metadata over data parallel):
   each group's positive pool (valid tokens of its positive responses, ordered by (response id,
   position)), its skip reason (docs/algorithm.md §4.5), its sampled pool indices (drawn with the same
   seed as the single-process ``compute_resrl_weights``: uniform over the WHOLE group, whichever rank
   holds which response) and its FIT SLOT. The slots are every (data-parallel rank, tensor rank) pair of
   the pipeline stage that owns layer L-2: all of them hold that layer's states, so all of them fit.
   Active groups go to slots largest first, each to the least-loaded slot (rows are the load). A slot's
   tensor rank is the group's COLUMN: every step below for that group runs on the ranks of that column,
   over their data-parallel group.
2. One forward pass. The layer L-2 consumer copies each sampled positive row into a preallocated buffer
   in the states' own dtype, at a slot fixed by the plan (nothing is LayerNorm-ed, sorted or shipped to
   the host). The pass has two layouts, chosen from the plan alike on every rank (``defers_negatives``):
   DEFERRED (the negatives' rows of the largest rank take at most ``cfg.deferred_rows_mib``): GRPO's own
   micro-batches; the consumer also copies the rows of its column's negative tokens into a second
   buffer, and steps 3 and 4 run after the forward pass. TWO-PHASE (above the budget): the positive
   responses first (phase 0) and the negative ones after (phase 1), nothing of the negatives kept; each
   phase is sorted by length on its own, which pads a few percent more at small batches.
3. When every positive has been seen (deferred: after the pass; two-phase: in the micro-batch holding this
   rank's last positive, with expert parallelism at the same micro-batch on every rank): the rows go to
   their fit slot (one all-to-all with split sizes from the plan); each slot fits its groups in batches
   (``fit_group_subspaces``: LayerNorm into a float32 buffer, fixed-iteration randomized subspace
   iteration); each (mu, V_k) goes to the ranks of its column that hold negatives of its group (a second
   all-to-all).
4. For negatives, each token's state becomes its residual energy (on the rank of its group's column;
   two-phase: at once in the consumer; deferred: from the kept rows, after the fits); one float per
   negative token is kept.
5. The residuals of each group are all-gathered over the column (scalars only); every rank computes the
   quantile bounds of its column's groups over ALL their negative tokens and gates its own tokens.
6. The weights of a replica are combined over its tensor ranks (each holds its column's groups) and
   copied to its other pipeline stages.

Memory (``nemo_resrl.plan.resrl``; tested byte for byte): the sampled rows kept and received (<= M x d
per group, in the activation dtype), the deferred layout's negative rows (within its budget), one batch
of float32 fit input and its workspace, the subspaces a rank needs (d x (k + 1) floats per group), one
float per negative token. Nothing keeps all hidden states, and no group is ever split into parts that
silently get weight 1 (the released code's defect, docs/algorithm.md §10).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.profiler import record_function

from nemo_resrl.algorithms.resrl import (
    ResponseMeta,
    ResRLStats,
    SubspaceBatch,
    fit_group_subspaces,
    gate,
    group_sample_seed,
    group_skip_reason,
    grouped_quantile_bounds,
    residuals_of_rows,
    sample_row_indices,
)
from nemo_resrl.common import index_to_device, require, require_finite, require_shape
from nemo_resrl.config.algorithm import ResRLConfig
from nemo_resrl.models.batch import Sequences, TokenOutputs
from nemo_resrl.models.collectives import all_gather_rows

if TYPE_CHECKING:  # pragma: no cover
    from nemo_resrl.models.forward import PenultimateChunk

FP32 = 4


class PassActor(Protocol):
    """What the pass needs of the actor (``MegatronActor``): its layout, the forward-only pass with a
    penultimate-layer consumer, and the reduction over the stage that owns layer L-2."""

    layout: object
    device: torch.device
    hidden_size: int
    activation_bytes: int

    def forward_logprobs(self, seqs: Sequences, **kw) -> TokenOutputs: ...

    def owns_penultimate_layer(self) -> bool: ...

    def combine_from_penultimate_stage(self, t: torch.Tensor, op: str) -> torch.Tensor: ...


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
    pool_holder: dict[int, int] = field(default_factory=dict)  # response id -> data-parallel rank
    neg_tokens_by_rank: Counter = field(default_factory=Counter)  # data-parallel rank -> negative tokens
    rows_by_rank: Counter = field(default_factory=Counter)  # data-parallel rank -> sampled rows it holds
    reason: str | None = None
    active: int = -1  # index among active groups
    slot: int = -1  # fit slot: dp_rank * tp + column
    sample: np.ndarray | None = None  # sorted pool indices [M]

    @property
    def rows(self) -> int:
        return 0 if self.sample is None else int(self.sample.size)


@dataclass
class PassSizes:
    """What one rank of the L-2 stage holds during the pass (counts; the plan's memory term takes them)."""

    rows_sent: int = 0  # sampled positive rows this rank keeps for the fit slots of its column
    rows_received: int = 0  # rows of the groups this rank fits
    owned_group_rows: list[int] = field(default_factory=list)  # rows of each group this rank fits
    subspaces_sent: int = 0
    subspaces_received: int = 0  # subspaces of its column's groups its replica has negatives of
    negatives: int = 0  # negative tokens of its column's active groups on its replica
    negatives_max: int = 0  # the most any rank of its column has (the gather's padding)
    column_groups: int = 0  # active groups of its column
    kept_per_micro_batch: list[int] = field(default_factory=list)  # positive rows kept, per micro-batch
    negatives_per_micro_batch: list[list[int]] = field(default_factory=list)  # per group, per micro-batch
    deferred: bool = False  # the deferred layout: the negatives' rows kept, their residuals after the fits
    deferred_per_micro_batch: list[int] = field(default_factory=list)  # negative rows kept, per micro-batch


def assign_slots(sizes: list[int], slots: int) -> list[int]:
    """Largest first, each to the least-loaded slot (ties: lowest slot): a slot per item."""
    load = [0] * slots
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        s = min(range(slots), key=lambda j: (load[j], j))
        out[i] = s
        load[s] += sizes[i]
    return out


def plan_groups(
    table: np.ndarray, hidden_dim: int, cfg: ResRLConfig, step: int, slots: int
) -> list[GroupPlan]:
    """Groups (sorted by id) from the gathered metadata ``table`` [N, 6] int64 rows
    ``(group id, response id, valid tokens, is_positive, is_penalised, data-parallel rank)``."""
    require(
        np.unique(table[:, 1]).size == table.shape[0],
        "response_ids must be unique over the whole step (all data-parallel ranks)",
    )
    plans: dict[int, GroupPlan] = {}
    for gid, rid, n, pos, pen, holder in table[np.argsort(table[:, 1], kind="stable")].tolist():
        g = plans.setdefault(gid, GroupPlan(gid))
        if pos:
            g.pool_offset[rid] = g.n_pos_tokens
            g.pool_holder[rid] = holder
            g.n_pos += 1
            g.n_pos_tokens += n
        else:
            g.n_neg += 1
            g.n_neg_tokens += n
            g.n_penalised_tokens += n if pen else 0
            g.neg_tokens_by_rank[holder] += n
    out = [plans[k] for k in sorted(plans)]
    active = []
    for g in out:
        g.reason = group_skip_reason(g.n_pos, g.n_neg, g.n_pos_tokens, g.n_neg_tokens, hidden_dim, cfg)
        if g.reason is None:
            g.active = len(active)
            g.sample = sample_row_indices(
                g.n_pos_tokens, cfg.max_rows, group_sample_seed(cfg.seed, step, g.gid)
            ).numpy()
            active.append(g)
    for g, s in zip(active, assign_slots([g.rows for g in active], slots)):
        g.slot = s
        for rid, off, cnt in pool_ranges(g):
            lo, hi = np.searchsorted(g.sample, [off, off + cnt])
            g.rows_by_rank[g.pool_holder[rid]] += int(hi - lo)
    return out


def pool_ranges(g: GroupPlan) -> list[tuple[int, int, int]]:
    """(response id, pool offset, tokens) of each positive response of ``g``, in pool order."""
    ids = sorted(g.pool_offset, key=g.pool_offset.get)
    ends = [g.pool_offset[r] for r in ids[1:]] + [g.n_pos_tokens]
    return [(r, g.pool_offset[r], e - g.pool_offset[r]) for r, e in zip(ids, ends)]


def rank_sizes(active: list[GroupPlan], dp: int, tp: int, dp_rank: int, tp_rank: int) -> PassSizes:
    """What rank (``dp_rank``, ``tp_rank``) of the L-2 stage holds during the pass (its memory: the
    planner's ``nemo_resrl.plan.resrl.pass_bytes``), from the plan alone."""
    col = [g for g in active if g.slot % tp == tp_rank]
    owned = [g for g in col if g.slot // tp == dp_rank]
    per_rank = [sum(g.neg_tokens_by_rank[r] for g in col) for r in range(dp)]
    return PassSizes(
        rows_sent=sum(g.rows_by_rank[dp_rank] for g in col),
        rows_received=sum(g.rows for g in owned),
        owned_group_rows=[g.rows for g in owned],
        subspaces_sent=sum(1 for g in owned for r in range(dp) if g.neg_tokens_by_rank[r]),
        subspaces_received=sum(1 for g in col if g.neg_tokens_by_rank[dp_rank]),
        negatives=per_rank[dp_rank],
        negatives_max=max(per_rank),
        column_groups=len(col),
    )


def most_negatives(active: list[GroupPlan], dp: int, tp: int) -> int:
    """The most negative tokens any rank of the L-2 stage projects (``PassSizes.negatives`` of the
    largest rank)."""
    return max(
        (
            sum(g.neg_tokens_by_rank[r] for g in active if g.slot % tp == c)
            for r in range(dp)
            for c in range(tp)
        ),
        default=0,
    )


def defers_negatives(
    active: list[GroupPlan], dp: int, tp: int, hidden_dim: int, act_bytes: int, budget_mib: float
) -> bool:
    """Whether the pass takes the deferred layout (module docstring, step 2): the layer L-2 rows of the
    negative tokens of the largest rank (``act_bytes`` per element) fit in ``budget_mib``. A function of the
    plan alone, so every rank of the job decides alike (their micro-batches and collectives must agree)."""
    return budget_mib > 0 and most_negatives(active, dp, tp) * hidden_dim * act_bytes <= budget_mib * 2**20


@dataclass
class ResRLPassResult:
    """Old log-probs of all B sequences, the ResRL weights [B, T] (1 outside negative tokens of active
    groups), and what happened to each group."""

    outputs: TokenOutputs
    weights: torch.Tensor
    stats: ResRLStats


class ResRLPass:
    """One old-log-prob pass with ResRL weights over this rank's share (module docstring, steps 1-6).

    Built per call; ``run()`` does the pass. ``__init__`` makes the plan on the host; the device work is
    in ``consume`` (the layer L-2 hook), ``_fit_and_share`` and ``_finish``.
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
        mask = resp_mask if valid_mask is None else (valid_mask.bool().cpu() & resp_mask)
        require_shape(mask, (B, T), "valid_mask")
        for name, t in (("group_ids", meta.group_ids), ("response_ids", meta.response_ids)):
            require_shape(t, (B,), name)
        require_shape(meta.advantages, (B,), "advantages")
        require_finite(meta.advantages, "advantages")
        require(meta.positive is not None, "ResponseMeta.positive (the positive set) is required")
        require_shape(meta.positive, (B,), "positive")
        self.actor, self.seqs, self.cfg, self.step = actor, seqs, cfg, step
        self.B, self.T, self.mask = B, T, mask.numpy()
        self.lay, self.dev, self.d = actor.layout, actor.device, actor.hidden_size
        self.dp_group = ps.get_data_parallel_group()
        self.gid = meta.group_ids.cpu().long().numpy()
        self.rid = meta.response_ids.cpu().long().numpy()
        self.is_pos = meta.positive.cpu().bool().numpy()
        adv = meta.advantages.cpu()
        self.penalised = (~meta.positive.cpu().bool() & (adv < 0)).numpy()
        self.computes = actor.owns_penultimate_layer()  # every tensor rank of that stage
        self.sizes = PassSizes()
        self.fitted = False
        self.send_buf = self.resid_buf = self.subspaces = self.defer_buf = None
        self._plan()

    # 1. the plan, identical on every rank (host only)
    @record_function("resrl/plan")
    def _plan(self) -> None:
        lay, mask = self.lay, self.mask
        n_valid = mask.sum(axis=1)
        local = np.stack(
            [self.gid, self.rid, n_valid, self.is_pos, self.penalised, np.full(self.B, lay.dp_rank)], axis=1
        ).astype(np.int64)
        gathered = all_gather_rows(torch.from_numpy(local).to(self.dev), self.dp_group)
        table = torch.cat(gathered).cpu().numpy()
        self.plans = plan_groups(table, self.d, self.cfg, self.step, lay.dp * lay.tp)
        self.by_gid = {g.gid: g for g in self.plans}
        self.active = [g for g in self.plans if g.reason is None]
        self.pos_left = {i for i in range(self.B) if self.is_pos[i] and self.seqs.response_lens[i] > 0}
        self.deferred = defers_negatives(
            self.active, lay.dp, lay.tp, self.d, self.actor.activation_bytes, self.cfg.deferred_rows_mib
        )
        if not self.computes or not self.active:
            return
        col, me = lay.tp_rank, lay.dp_rank
        tp = lay.tp
        in_col = [g for g in self.active if g.slot % tp == col]
        self.col_index = {g.active: j for j, g in enumerate(in_col)}
        self.owned = [g for g in in_col if g.slot // tp == me]
        sz = self.sizes = rank_sizes(self.active, lay.dp, tp, me, col)
        sz.deferred = self.deferred
        # 2. the sampled rows this rank keeps, ordered by (fit slot's data-parallel rank, group, pool index)
        keep_slot = np.full((self.B, self.T), -1, dtype=np.int64)
        local_of = {int(r): i for i, r in enumerate(self.rid)}
        send_split = [0] * lay.dp
        n = 0
        for dest in range(lay.dp):
            for g in (g for g in in_col if g.slot // tp == dest):
                for rid, off in sorted(g.pool_offset.items()):
                    if g.pool_holder[rid] != me:
                        continue
                    i = local_of[rid]
                    cnt = int(n_valid[i])
                    picked = g.sample[(g.sample >= off) & (g.sample < off + cnt)]
                    positions = np.flatnonzero(mask[i])[picked - off]
                    keep_slot[i, positions] = np.arange(n, n + picked.size)
                    n += picked.size
                    send_split[dest] += picked.size
        self.keep_slot, self.send_split = keep_slot, send_split
        require(n == sz.rows_sent, f"internal error: {n} positive rows kept, the plan says {sz.rows_sent}")
        # rows this rank receives for its own groups, ordered by (source rank, group, pool index); the
        # fit index of each owned group gathers its rows in pool order
        recv_split, keys = [0] * lay.dp, []
        for src in range(lay.dp):
            for g in self.owned:
                held = [
                    g.sample[(g.sample >= off) & (g.sample < off + cnt)]
                    for rid, off, cnt in pool_ranges(g)
                    if g.pool_holder[rid] == src
                ]
                for h in held:
                    keys.append(np.stack([np.full(h.size, g.active), h], axis=1))
                    recv_split[src] += h.size
        self.recv_split = recv_split
        require(
            sum(recv_split) == sz.rows_received, "internal error: the rows received disagree with the plan"
        )
        keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)
        order = np.lexsort((keys[:, 1], keys[:, 0]))  # by group, then pool index
        self.fit_index = []
        pos = 0
        for g in self.owned:
            self.fit_index.append(order[pos : pos + g.rows].copy())
            pos += g.rows
        # 3. subspaces: each owned group to the ranks of the column holding its negatives
        self.sub_send = [[g for g in self.owned if g.neg_tokens_by_rank[dest]] for dest in range(lay.dp)]
        self.sub_recv = [
            [g for g in in_col if g.slot // tp == src and g.neg_tokens_by_rank[me]] for src in range(lay.dp)
        ]
        need = [g for part in self.sub_recv for g in part]
        self.need_index = {g.active: j for j, g in enumerate(need)}
        # 4. this rank's negative tokens of its column's groups, ordered by (group, response id, position)
        resid_slot = np.full((self.B, self.T), -1, dtype=np.int64)
        resid_group = []
        n = 0
        for g in in_col:
            for i in sorted(
                (i for i in range(self.B) if self.gid[i] == g.gid and not self.is_pos[i]),
                key=lambda i: self.rid[i],
            ):
                positions = np.flatnonzero(mask[i])
                if not positions.size:
                    continue
                resid_slot[i, positions] = np.arange(n, n + positions.size)
                resid_group.append(np.full(positions.size, self.need_index[g.active]))
                n += positions.size
        self.resid_slot = resid_slot
        self.resid_group = np.concatenate(resid_group) if resid_group else np.zeros(0, dtype=np.int64)
        require(n == sz.negatives, "internal error: the negative tokens disagree with the plan")
        counts = np.array([[g.neg_tokens_by_rank[r] for g in in_col] for r in range(lay.dp)], dtype=np.int64)
        # the gathered residuals: rank r's block holds its tokens group by group, then padding
        labels = np.full((lay.dp, sz.negatives_max), len(in_col), dtype=np.int64)
        for r in range(lay.dp):
            labels[r, : counts[r].sum()] = np.repeat(np.arange(len(in_col)), counts[r])
        self.gather_labels = labels.reshape(-1)
        self.gather_counts = [*counts.sum(axis=0).tolist(), int((labels == len(in_col)).sum())]
        self.neg_col_group = np.array(
            [self.col_index[need[j].active] for j in self.resid_group.tolist()], dtype=np.int64
        ).reshape(-1)
        self.neg_where = np.nonzero(resid_slot >= 0)  # (i, t) of each slot, in slot order
        order = resid_slot[self.neg_where]
        self.neg_where = (self.neg_where[0][np.argsort(order)], self.neg_where[1][np.argsort(order)])

    @property
    def phases(self) -> list[int] | None:
        """The forward pass's phases (``MegatronActor.forward_logprobs``): None in the deferred layout
        (GRPO's micro-batches), else positives (0) before negatives (1)."""
        return None if self.deferred else [0 if bool(p) else 1 for p in self.is_pos]

    # 2 and 4. the layer L-2 consumer: the sampled positive rows; the negatives' rows (deferred) or their
    # residuals once the positives are fitted (two-phase: positives in phase 0, negatives in phase 1)
    @record_function("resrl/consume")
    def consume(self, chunk: PenultimateChunk) -> None:
        if not self.computes:
            return
        s, r = chunk.seq_index.numpy(), chunk.resp_pos.numpy()
        self.pos_left.difference_update(np.unique(s[self.is_pos[s]]).tolist())
        if not self.active:
            return
        if self.send_buf is None and not self.fitted:
            n, dtype = self.sizes.rows_sent, chunk.states.dtype
            self.send_buf = torch.empty(n, self.d, dtype=dtype, device=self.dev)
            if self.deferred:
                self.defer_buf = torch.empty(self.sizes.negatives, self.d, dtype=dtype, device=self.dev)
        slots = self.keep_slot[s, r]
        sel = np.flatnonzero(slots >= 0)
        self.sizes.kept_per_micro_batch.append(int(sel.size))
        if sel.size:
            with record_function("resrl/capture"):
                rows = chunk.rows(sel)
                self.send_buf.index_copy_(0, index_to_device(slots[sel], self.dev), rows)
                del rows
        if self.deferred:
            slots = self.resid_slot[s, r]
            sel = np.flatnonzero(slots >= 0)
            self.sizes.deferred_per_micro_batch.append(int(sel.size))
            if sel.size:
                with record_function("resrl/defer"):
                    rows = chunk.rows(sel)
                    self.defer_buf.index_copy_(0, index_to_device(slots[sel], self.dev), rows)
                    del rows
            return
        if not self.fitted and chunk.phases_done >= 1:
            # the positives' phase is complete: within the micro-batch holding the last positive, before its
            # negatives (with expert parallelism, at the same micro-batch on every rank: a collective)
            if self.pos_left:
                raise RuntimeError(f"internal error: positives {sorted(self.pos_left)} not seen by phase end")
            self._fit_and_share()
            self.fitted = True
        slots = self.resid_slot[s, r]
        sel = np.flatnonzero(slots >= 0)
        groups = self.resid_group[slots[sel]]
        self.sizes.negatives_per_micro_batch.append(np.bincount(groups).tolist() if sel.size else [])
        if sel.size:
            with record_function("resrl/residuals"):
                values = residuals_of_rows(
                    chunk.states, chunk.state_index[sel], groups, self.subspaces, self.cfg
                )
                self.resid_buf.index_copy_(0, index_to_device(slots[sel], self.dev), values)
                del values

    # 3 and 4 of the deferred layout, after the forward pass
    @record_function("resrl/deferred")
    def _fit_deferred(self) -> None:
        if self.pos_left:
            raise RuntimeError(f"internal error: positives {sorted(self.pos_left)} not seen in the pass")
        self._fit_and_share()
        self.fitted = True
        n, groups = self.sizes.negatives, self.resid_group
        self.sizes.negatives_per_micro_batch.append(np.bincount(groups).tolist() if n else [])
        if n:
            with record_function("resrl/residuals"):
                values = residuals_of_rows(self.defer_buf, np.arange(n), groups, self.subspaces, self.cfg)
                self.resid_buf.index_copy_(0, index_to_device(np.arange(n), self.dev), values)
                del values
        self.defer_buf = None

    # 3. rows to their fit slots, batched fits, subspaces to the ranks that need them
    @record_function("resrl/fit_and_share")
    def _fit_and_share(self) -> None:
        cfg, dp, dev = self.cfg, self.lay.dp, self.dev
        recv = self._exchange(self.send_buf, self.send_split, self.recv_split)
        self.send_buf = None
        owned = None
        if self.owned:
            index = [index_to_device(i, dev) for i in self.fit_index]
            seeds = [group_sample_seed(cfg.seed + 1, self.step, g.gid) for g in self.owned]
            owned = fit_group_subspaces(recv, index, seeds, cfg)
            del index
        del recv
        # (mean, basis, rank) of each subspace a column rank needs, in (destination, group) order
        d, k = self.d, min(cfg.rank, self.d)
        packed = torch.empty(self.sizes.subspaces_sent, d + d * k + 1, dtype=torch.float32, device=dev)
        if self.sizes.subspaces_sent:
            pos = {g.active: j for j, g in enumerate(self.owned)}
            o = index_to_device(np.array([pos[g.active] for part in self.sub_send for g in part]), dev)
            packed[:, :d] = owned.mean.index_select(0, o)
            packed[:, d : d + d * k] = owned.basis.index_select(0, o).view(-1, d * k)
            packed[:, -1] = owned.rank.index_select(0, o)
            del o
        self.ranks = torch.zeros(len(self.active), dtype=torch.float32, device=dev)
        if owned is not None:
            where = index_to_device(np.array([g.active for g in self.owned]), dev)
            self.ranks.index_copy_(0, where, owned.rank.to(torch.float32))
            del where
        del owned
        got = self._exchange(packed, [len(p) for p in self.sub_send], [len(p) for p in self.sub_recv])
        del packed
        n = got.shape[0]
        self.subspaces = SubspaceBatch(
            mean=got[:, :d], basis=got[:, d : d + d * k].view(n, d, k), rank=got[:, -1]
        )
        del got
        # zeros, not empty: the slots past this rank's negatives are gathered too (into a dummy group), and
        # garbage there could be NaN and fail the finiteness check of the bounds
        self.resid_buf = torch.zeros(self.sizes.negatives_max, dtype=torch.float32, device=dev)
        if dp > 1:
            dist.all_reduce(self.ranks, group=self.dp_group)

    @record_function("resrl/exchange")
    def _exchange(self, rows: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Rows [sum(send), w] to the data-parallel ranks of this column (``send[r]`` to rank r, in order);
        returns the [sum(recv), w] received, by source rank. Split sizes come from the plan.

        ``rows`` is consumed: its memory is released as soon as the collective is done (the backend's
        worker may hold a reference to it a little longer, and the fit that follows must not find it
        still allocated: the plan counts it freed)."""
        if self.lay.dp == 1:
            return rows
        w = rows.shape[1]
        out = rows.new_empty(sum(recv), w)
        dist.all_to_all_single(
            out.view(-1),
            rows.view(-1),
            output_split_sizes=[c * w for c in recv],
            input_split_sizes=[c * w for c in send],
            group=self.dp_group,
        )
        rows.untyped_storage().resize_(0)
        return out

    # 5 and 6. quantile bounds per group over all its negative tokens (all ranks of the column), gating,
    # the weights to every tensor / pipeline rank of the replica
    @record_function("resrl/gate_and_combine")
    def _finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.dev
        weights = torch.ones(self.B, self.T, dtype=torch.float32, device=dev)
        if self.computes and self.active:
            ranks, self.ranks = self.ranks, None
            sz, dp = self.sizes, self.lay.dp
            if dp > 1:
                gathered = torch.empty(dp, sz.negatives_max, dtype=torch.float32, device=dev)
                dist.all_gather(list(gathered.unbind(0)), self.resid_buf, group=self.dp_group)
            else:
                gathered = self.resid_buf[None]
            labels = index_to_device(self.gather_labels, dev)
            q_lo, q_hi = grouped_quantile_bounds(
                gathered.view(-1), labels, self.gather_counts, self.cfg.alpha, self.cfg.beta
            )
            del gathered, labels
            mine = index_to_device(self.neg_col_group, dev)
            lo, hi = q_lo.index_select(0, mine), q_hi.index_select(0, mine)
            del mine, q_lo, q_hi
            w = gate(self.resid_buf[: sz.negatives], lo, hi, self.cfg.xi)
            del lo, hi
            self.resid_buf = self.subspaces = None
            flat = index_to_device(self.neg_where[0] * self.T + self.neg_where[1], dev)
            weights.view(-1).index_copy_(0, flat, w)
            del w, flat
        else:
            ranks = torch.zeros(len(self.active), dtype=torch.float32, device=dev)
        weights = self.actor.combine_from_penultimate_stage(weights, "min")
        ranks = self.actor.combine_from_penultimate_stage(ranks, "sum")
        return weights, ranks

    def _stats(self, ranks: torch.Tensor) -> ResRLStats:
        stats = ResRLStats(num_groups=len(self.plans), num_active=len(self.active), skipped=Counter())
        for g in self.plans:
            stats.num_negative_tokens += g.n_penalised_tokens
            if g.reason is None:
                stats.num_weighted_tokens += g.n_penalised_tokens
            else:
                stats.skipped[g.reason] += 1
        stats.subspace_ranks = [int(k) for k in ranks.tolist()]
        return stats

    def run(self, *, with_entropy: bool = False) -> ResRLPassResult:
        """Steps 2-6: one forward pass, the fits, the gating, the combination of the weights."""
        outputs = self.actor.forward_logprobs(
            self.seqs, with_entropy=with_entropy, penultimate_consumer=self.consume, phases=self.phases
        )
        if self.deferred and self.computes and self.active:
            self._fit_deferred()
        if self.computes and self.active and not self.fitted:
            raise RuntimeError("internal error: the positive subspaces were never fitted during the pass")
        weights, ranks = self._finish()
        return ResRLPassResult(outputs=outputs, weights=weights, stats=self._stats(ranks))


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
