"""Sequences (prompt + response token ids) laid out as Megatron micro-batches, padded or packed.

Input: ``B`` sequences, sequence ``i`` of ``n_i`` tokens whose first ``p_i`` are the prompt. The actor
returns one value per RESPONSE token, response-aligned as ``[B, T]`` with ``T = max_i (n_i - p_i)``:
entry ``[i, t]`` belongs to token ``p_i + t`` of sequence ``i`` and is computed from the logits (and
the hidden states) at position ``p_i + t - 1``, the position that predicts it.

Layouts (with pipeline parallelism every micro-batch has the same ``[rows, S]`` shape, as the
schedule's fixed-shape point-to-point transfers require; without it, ``uniform_shape=False`` sorts
rows longest first and sizes each micro-batch to its own rows):
- padded: one sequence per row, right-padded to the longest sequence; plain causal attention.
- packed: sequences first-fit into rows of ``max_tokens_per_row`` tokens, each attending only to
  itself (block-diagonal causal mask). Rotary attention depends only on relative positions, so a
  sequence's outputs do not depend on where in the row it sits (tests check this against padded).
Filler rows (to complete the last micro-batch) and the padding tail of a row attend causally among
themselves, so no attention row is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_resrl.algorithms.resrl import ResponseMeta, ResRLStats
from nemo_resrl.common import require
from nemo_resrl.config.algorithm import ResRLConfig


@dataclass
class Sequences:
    """B token sequences with their prompt lengths. tokens[i]: int64 [n_i]; 1 <= p_i <= n_i."""

    tokens: list[torch.Tensor]
    prompt_lens: list[int]

    def __post_init__(self) -> None:
        require(len(self.tokens) == len(self.prompt_lens), "tokens and prompt_lens differ in length")
        for i, (t, p) in enumerate(zip(self.tokens, self.prompt_lens)):
            require(t.dim() == 1 and t.numel() >= 1, f"sequence {i}: tokens must be a non-empty 1-d tensor")
            require(not t.is_floating_point(), f"sequence {i}: tokens must be integer ids, got {t.dtype}")
            require(1 <= p <= t.numel(), f"sequence {i}: prompt length {p} not in [1, {t.numel()}]")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def response_lens(self) -> list[int]:
        return [t.numel() - p for t, p in zip(self.tokens, self.prompt_lens)]

    def response_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, T] (0 at padding), mask [B, T] bool) of the response tokens."""
        lens = self.response_lens
        width = max(lens, default=0)
        ids = torch.zeros(len(self), width, dtype=torch.long)
        mask = torch.zeros(len(self), width, dtype=torch.bool)
        for i, (t, p) in enumerate(zip(self.tokens, self.prompt_lens)):
            ids[i, : lens[i]] = t[p:]
            mask[i, : lens[i]] = True
        return ids, mask

    def check_vocab(self, vocab_size: int) -> None:
        for i, t in enumerate(self.tokens):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
                bad = int(t.max()) if int(t.max()) >= vocab_size else int(t.min())
                raise ValueError(f"sequence {i}: token id {bad} outside the vocabulary [0, {vocab_size})")


@dataclass
class TokenOutputs:
    """Response-aligned per-token outputs [B, T] of a forward pass, on the CPU, float32; ``mask`` marks
    the response tokens."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    mask: torch.Tensor


@dataclass
class ResRLRequest:
    """Ask the log-prob pass for ResRL weights (docs/algorithm.md §3-5): this rank's responses'
    ``meta`` (groups, step-unique response ids, outcome advantages), the settings, and the step (it
    seeds the positive-row sample)."""

    meta: ResponseMeta
    cfg: ResRLConfig
    step: int


@dataclass
class LogprobResult:
    """A log-prob pass over B sequences: ``outputs`` (log-probs, mask [B, T]); with a ``ResRLRequest``,
    ``weights`` [B, T] (1 outside negative tokens of active groups) and the per-group ``stats``; with
    ``reference=True``, the reference policy's log-probs [B, T] (``ref_logprobs``)."""

    outputs: TokenOutputs
    weights: torch.Tensor | None = None
    stats: ResRLStats | None = None
    ref_logprobs: torch.Tensor | None = None


def document_spans(doc_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each run of equal ids in int64 [rows, S] (one copy to the host)."""
    host = doc_ids.detach().to("cpu")
    spans = []
    for row in host:
        change = (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
        edges = [0, *change, row.numel()]
        spans.append(list(zip(edges[:-1], edges[1:])))
    return spans


@dataclass
class MicroBatch:
    """One micro-batch. rows x S tokens; the response-token map says where each output comes from.

    tokens / position_ids: int64 [rows, S]. segments: int64 [rows, S], the sequence each position belongs
    to in a packed row (None: padded rows, plain causal attention); ``attention_mask()`` turns them into
    megatron's bool [rows, 1, S, S] (True = masked) on their device, so the host never holds an S x S
    tensor (64 MB per row at S = 8192). labels: int64 [rows, S], the next token of the same sequence (0
    elsewhere).
    flat_pos: int64 [n], index into the row-major ``rows * S`` positions of the logits predicting each
    response token; seq_index / resp_pos: int64 [n], its sequence (global index) and response position.
    seq_ids: the sequences in this micro-batch (global indices, ascending).
    placement: sequence (global index) -> (row, offset of its first token in the row).
    spans: packed rows only, per row the (start, end) of each document and of the padding tail, in order.
    phases_done: how many leading phases (0, 1, ...) have all their rows in this or earlier micro-batches.
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor | None
    labels: torch.Tensor
    flat_pos: torch.Tensor
    seq_index: torch.Tensor
    resp_pos: torch.Tensor
    seq_ids: torch.Tensor
    placement: dict[int, tuple[int, int]]
    phases_done: int = 0
    spans: list[list[tuple[int, int]]] | None = None  # packed: per row, each document's (start, end)

    def attention_input(self, kind: str) -> torch.Tensor | None:
        """What the model takes as its attention mask: None for padded rows (causal); for packed rows,
        ``dense``: ``attention_mask()``; ``document_ids``: the segments int64 [rows, S] with their
        per-row (start, end) spans attached as ``.spans`` (host-made: the attention reads them without a
        device synchronisation)."""
        if self.segments is None:
            return None
        if kind == "dense":
            return self.attention_mask()
        if kind != "document_ids":
            raise ValueError(f"unknown attention input kind {kind!r}")
        ids = self.segments
        ids.spans = self.spans if self.spans is not None else document_spans(ids)
        return ids

    def attention_mask(self) -> torch.Tensor | None:
        """Block-diagonal causal mask of a packed micro-batch, bool [rows, 1, S, S] (True = masked), made on
        the segments' device; None for padded rows (megatron's causal default)."""
        if self.segments is None:
            return None
        seg = self.segments
        s = seg.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=seg.device).tril_()
        same = seg[:, :, None] == seg[:, None, :]  # [rows, S, S]
        return same.logical_and_(causal).logical_not_().unsqueeze(1)

    def to(self, device: torch.device | str) -> MicroBatch:
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return MicroBatch(**kw)


@dataclass
class BatchLayout:
    """How B sequences are laid out as Megatron micro-batches (padded or packed rows of S tokens)."""

    micro_batches: list[MicroBatch]
    rows: int  # rows per micro-batch (at most)
    seq_len: int  # S (the longest micro-batch)
    batch_size: int  # B
    width: int  # T, the response-aligned width
    phase_rows: tuple[int, ...] = ()  # rows (not filler) of each phase


def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of sequence indices (deterministic; ties by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        for b, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                bins[b].append(i)
                fill[b] += lengths[i]
                break
        else:
            bins.append([i])
            fill.append(lengths[i])
    return [sorted(b) for b in bins]


def make_layout(
    seqs: Sequences,
    micro_batch_size: int,
    *,
    pack: bool = False,
    max_tokens_per_row: int = 4096,
    pad_id: int = 0,
    seq_len_multiple: int = 1,
    uniform_shape: bool = True,
    phases: list[int] | None = None,
    min_micro_batches: int = 0,
    min_seq_len: int = 0,
    phase_micro_batches: list[int] | None = None,
) -> BatchLayout:
    """Lay ``seqs`` out as micro-batches of ``micro_batch_size`` rows (see the module docstring).

    uniform_shape: every micro-batch ``[micro_batch_size, S]`` with one S (filler rows complete the last
    one), as pipeline parallelism's fixed-shape transfers need. False (no pipeline parallelism): rows are
    ordered longest first, each micro-batch is only as long as its longest row and the last one may
    have fewer rows, so padding and filler rows cost almost nothing.
    phases: optional phase (0, 1, ...) per sequence: every row of phase p comes before any row of phase
    p + 1 (a micro-batch may straddle two phases; a row never does).
    min_micro_batches / min_seq_len (uniform_shape only): at least this many micro-batches (the extra ones
    are filler rows only) of at least this length, so that ranks whose MoE layers exchange tokens
    (expert parallelism) run the same number of micro-batches of the same shape.
    phase_micro_batches (uniform_shape only; with phases): phase p fills exactly ``phase_micro_batches[p]``
    micro-batches of its own (filler rows make up the rest), so that every rank reaches the end of a phase
    at the same micro-batch (expert parallelism with a consumer that synchronises at the end of a phase).
    Every micro-batch records how many phases are complete after it (``MicroBatch.phases_done``).
    """
    require(len(seqs) >= 1, "an empty batch has no micro-batches")
    require(micro_batch_size >= 1, "micro_batch_size must be >= 1")
    lengths = [t.numel() for t in seqs.tokens]
    longest = max(lengths)
    phase = list(phases) if phases is not None else [0] * len(seqs)
    require(len(phase) == len(seqs), f"phases has {len(phase)} entries for {len(seqs)} sequences")
    rows_of = []
    for p in sorted(set(phase)):
        members = [i for i in range(len(seqs)) if phase[i] == p]
        if pack:
            require(
                longest <= max_tokens_per_row,
                f"a sequence of {longest} tokens does not fit in max_tokens_per_row={max_tokens_per_row}",
            )
            bins = [
                [members[j] for j in b] for b in _first_fit([lengths[i] for i in members], max_tokens_per_row)
            ]
            rows_of += sorted(bins, key=lambda r: r[0])
        else:
            rows_of += [[i] for i in members]
    fill = lambda r: sum(lengths[i] for i in r)  # noqa: E731
    round_up = lambda n: -(-n // seq_len_multiple) * seq_len_multiple  # noqa: E731
    n_phases = max(phase) + 1
    ends = None  # per phase: the micro-batch after which all its rows have run
    if uniform_shape:
        seq_len = round_up(max(max(fill(r) for r in rows_of), min_seq_len))
        if phase_micro_batches is not None:
            require(len(phase_micro_batches) >= n_phases, "phase_micro_batches must cover every phase")
            groups, ends = [], []
            for p, n_mb in enumerate(phase_micro_batches):
                mine = [r for r in rows_of if phase[r[0]] == p]
                require(
                    len(mine) <= n_mb * micro_batch_size, f"phase {p} needs more than {n_mb} micro-batches"
                )
                mine += [[] for _ in range(n_mb * micro_batch_size - len(mine))]
                groups += [mine[s : s + micro_batch_size] for s in range(0, len(mine), micro_batch_size)]
                ends.append(len(groups) - 1)  # phase p is complete after this micro-batch
        else:
            n_rows = -(-len(rows_of) // micro_batch_size) * micro_batch_size
            n_rows = max(n_rows, min_micro_batches * micro_batch_size)
            rows_of = rows_of + [[] for _ in range(n_rows - len(rows_of))]
            groups = [rows_of[s : s + micro_batch_size] for s in range(0, n_rows, micro_batch_size)]
        mbs = [_build_micro_batch(seqs, g, seq_len, pack, pad_id) for g in groups]
    else:
        # longest first; with phases, each phase sorted so that where two meet the rows have similar
        # lengths (the last phase longest first, the one before it shortest first, ...): the micro-batch
        # that straddles them pads little
        last = n_phases - 1
        rows_of.sort(key=lambda r: (phase[r[0]], (-1) ** (last - phase[r[0]]) * -fill(r), r[0]))
        groups = [rows_of[s : s + micro_batch_size] for s in range(0, len(rows_of), micro_batch_size)]
        mbs = [_build_micro_batch(seqs, g, round_up(max(fill(r) for r in g)), pack, pad_id) for g in groups]
        seq_len = max(mb.tokens.shape[1] for mb in mbs)
    if ends is None:
        last = [-1] * n_phases  # the last micro-batch holding a row of each phase
        for j, g in enumerate(groups):
            for r in g:
                if r:
                    last[phase[r[0]]] = j
        ends = [max(last[: p + 1]) for p in range(n_phases)]
    for j, mb in enumerate(mbs):
        mb.phases_done = sum(1 for e in ends if e <= j)
    width = max(seqs.response_lens)
    phase_rows = tuple(sum(1 for r in rows_of if r and phase[r[0]] == p) for p in range(n_phases))
    return BatchLayout(
        micro_batches=mbs,
        rows=micro_batch_size,
        seq_len=seq_len,
        batch_size=len(seqs),
        width=width,
        phase_rows=phase_rows,
    )


def _build_micro_batch(
    seqs: Sequences, rows_of: list[list[int]], seq_len: int, pack: bool, pad_id: int
) -> MicroBatch:
    rows = len(rows_of)
    tokens = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    labels = torch.zeros(rows, seq_len, dtype=torch.long)
    segment = torch.full((rows, seq_len), -1, dtype=torch.long)
    flat_pos, seq_index, resp_pos = [], [], []
    placement: dict[int, tuple[int, int]] = {}
    for r, members in enumerate(rows_of):
        offset = 0
        for i in members:
            t, p = seqs.tokens[i], seqs.prompt_lens[i]
            n = t.numel()
            tokens[r, offset : offset + n] = t
            placement[i] = (r, offset)
            labels[r, offset : offset + n - 1] = t[1:]
            segment[r, offset : offset + n] = i
            m = n - p
            flat_pos.append(r * seq_len + offset + p - 1 + torch.arange(m))
            seq_index.append(torch.full((m,), i, dtype=torch.long))
            resp_pos.append(torch.arange(m))
            offset += n
    position_ids = torch.arange(seq_len).unsqueeze(0).expand(rows, seq_len).contiguous()
    segments = spans = None
    if pack:
        spans = []
        for members in rows_of:
            edges = [0]
            for i in members:
                edges.append(edges[-1] + seqs.tokens[i].numel())
            if edges[-1] < seq_len:
                edges.append(seq_len)
            spans.append(list(zip(edges[:-1], edges[1:])))
        # each padding tail is its own segment (-2 - row), so it attends causally to itself
        pad_seg = (-2 - torch.arange(rows)).unsqueeze(1).expand(rows, seq_len)
        segments = torch.where(segment >= 0, segment, pad_seg)
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    seq_ids = sorted(i for members in rows_of for i in members)
    return MicroBatch(
        tokens=tokens,
        position_ids=position_ids,
        segments=segments,
        labels=labels,
        flat_pos=cat(flat_pos),
        seq_index=cat(seq_index),
        resp_pos=cat(resp_pos),
        seq_ids=torch.tensor(seq_ids, dtype=torch.long),
        placement=placement,
        spans=spans,
    )
