"""Running the actor's model: micro-batch layouts, megatron's forward(-backward) schedule, per-token
log-probs from vocab-parallel logits, the penultimate-layer hook, and the broadcasts that hand results
from the stage that computed them to every rank of a data-parallel replica.

``ForwardRunner`` holds no weights of its own: it runs a ``MegatronModel`` (``build.py``). Log-probs are
those of softmax(logits / ``temperature``), the distribution the rollout sampled from (verl and NeMo RL
do the same); the temperature is fixed when the actor is built (``rollout.sampling.temperature``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from nemo_resrl.common import index_to_device
from nemo_resrl.models.batch import BatchLayout, MicroBatch, Sequences, TokenOutputs, make_layout
from nemo_resrl.models.build import MegatronModel
from nemo_resrl.models.logprobs import vocab_parallel_logprobs


@dataclass
class PenultimateChunk:
    """Layer L-2 outputs of one micro-batch, handed to the consumer without a copy.

    seq_index / resp_pos: int64 [n] on the HOST (sequence in the caller's batch, position in its response)
    of the micro-batch's response tokens; ``rows(sel)`` gathers the states of those response tokens
    (``sel``: a numpy index or bool mask over the n) as [len(sel), d] in the activation dtype, detached,
    on the compute device; ``hidden`` is ``rows()`` of all n. Identical on every tensor-parallel rank of
    the owning stage (under sequence parallelism the hook gathers the sequence first). ``states`` is the
    layer's own output: gather what you keep during the consumer call.
    """

    seq_index: torch.Tensor
    resp_pos: torch.Tensor
    states: torch.Tensor  # [S * rows, d]: the layer's output, sequence-major, on the device
    state_index: np.ndarray  # int64 [n]: the row of ``states`` of each response token
    phases_done: int = 0  # phases (``logprobs(phases=...)``) whose every sequence is in this chunk or earlier

    def rows(self, sel: np.ndarray | None = None) -> torch.Tensor:
        idx = self.state_index if sel is None else self.state_index[sel]
        return self.states.index_select(0, index_to_device(idx, self.states.device))

    @property
    def hidden(self) -> torch.Tensor:
        return self.rows()


PenultimateConsumer = Callable[[PenultimateChunk], None]


class ForwardRunner:
    """Forward passes of one built model (module docstring); every call is collective over all ranks."""

    def __init__(self, model: MegatronModel, temperature: float = 1.0) -> None:
        self.model = model
        self.temperature = float(temperature)
        self._current_mb: MicroBatch | None = None
        self._current_host_mb: MicroBatch | None = None
        self._pen_stage: int | None = None

    # ------------------------------------------------------------------ layout and schedule
    def layout(self, seqs: Sequences, phases: list[int] | None = None) -> BatchLayout:
        """Micro-batches of ``seqs`` (``phases``: sequences of phase p run before any of phase p + 1)."""
        m = self.model
        seqs.check_vocab(m.vocab_size)
        max_pos = int(m.hf_config.get("max_position_embeddings", 1 << 30))
        longest = max(t.numel() for t in seqs.tokens)
        if longest > max_pos:
            raise ValueError(f"a sequence of {longest} tokens exceeds max_position_embeddings={max_pos}")
        kw = dict(
            pack=m.cfg.pack_sequences,
            max_tokens_per_row=m.cfg.max_tokens_per_row,
            seq_len_multiple=m.seq_len_multiple,  # FP8 GEMMs: 16 / 128; sequence parallelism: tensor_parallel
            uniform_shape=m.layout.pp > 1 or m.layout.ep > 1,
            phases=phases,
        )
        layout = make_layout(seqs, m.cfg.micro_batch_size, **kw)
        if m.layout.ep > 1:
            layout = self._same_shape_on_every_rank(seqs, layout, kw)
        return layout

    def _same_shape_on_every_rank(self, seqs: Sequences, layout: BatchLayout, kw: dict) -> BatchLayout:
        """With expert parallelism every MoE layer exchanges tokens with ranks of other data-parallel
        replicas (megatron's token dispatchers gather equal-shaped blocks): every rank runs the largest
        number of micro-batches of the largest shape any rank needs, filler rows making up the rest."""
        dev, mbs = self.model.device, self.model.cfg.micro_batch_size
        # all-reduces over every rank (the simplest superset of the groups): how many phases, then the shape
        n_phases = torch.tensor([len(layout.phase_rows)], dtype=torch.long, device=dev)
        dist.all_reduce(n_phases, op=dist.ReduceOp.MAX)
        per_phase = list(layout.phase_rows) + [0] * (int(n_phases) - len(layout.phase_rows))
        shape = torch.tensor(
            [len(layout.micro_batches), layout.seq_len, *(-(-r // mbs) for r in per_phase)],
            dtype=torch.long,
            device=dev,
        )
        dist.all_reduce(shape, op=dist.ReduceOp.MAX)
        n, s, phase_mbs = int(shape[0]), int(shape[1]), [int(x) for x in shape[2:]]
        if kw.get("phases") is not None:  # every rank finishes each phase at the same micro-batch
            return make_layout(seqs, mbs, min_seq_len=s, phase_micro_batches=phase_mbs, **kw)
        if (n, s) == (len(layout.micro_batches), layout.seq_len):
            return layout
        return make_layout(seqs, mbs, min_micro_batches=n, min_seq_len=s, **kw)

    def run(self, layout: BatchLayout, loss_func_of: Callable, forward_only: bool) -> list:
        """megatron's schedule over ``layout``'s micro-batches; ``loss_func_of(mb, output)`` is called on
        the last stage with the logits [rows, S, V/tp]. Returns the schedule's per-micro-batch outputs."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def forward_step(data_iterator, model):
            host = next(data_iterator)
            mb = host.to(self.model.device)
            self._current_mb, self._current_host_mb = mb, host
            # bf16 logits stay bf16 (megatron's Float16Module would upcast all of them to float32);
            # token_logprobs computes in float32 per chunk
            kw = {"fp32_output": False} if self.model.half_precision else {}
            out = model(mb.tokens, mb.position_ids, mb.attention_input(self.model.mask_kind), **kw)
            return out, lambda output: loss_func_of(mb, output)

        try:
            return get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(layout.micro_batches),
                model=self.model.chunks,
                num_microbatches=len(layout.micro_batches),
                seq_length=layout.seq_len,
                micro_batch_size=layout.rows,
                forward_only=forward_only,
            )
        finally:
            self._current_mb = self._current_host_mb = None

    def token_logprobs(
        self, logits: torch.Tensor, mb: MicroBatch, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits [rows, S, V/tp] (the model's dtype) -> (logp [n], entropy [n] or None) of the micro-batch's
        response tokens, of the policy at ``temperature`` (logits divided by it, as the sampler does).

        Only the response positions' rows are gathered (in the logits' dtype: what backward keeps); the
        temperature and the vocabulary padding are applied per float32 chunk (``vocab_parallel_logprobs``).
        """
        from megatron.core import parallel_state as ps

        m = self.model
        v_local = logits.shape[-1]
        rows = logits.reshape(-1, v_local).index_select(0, mb.flat_pos)
        labels = mb.labels.reshape(-1).index_select(0, mb.flat_pos)
        return vocab_parallel_logprobs(
            rows,
            labels,
            vocab_start=m.layout.tp_rank * v_local,
            group=ps.get_tensor_model_parallel_group() if m.layout.tp > 1 else None,
            chunk_rows=m.cfg.logprob_chunk_rows,
            with_entropy=with_entropy,
            temperature=self.temperature,
            vocab_size=m.vocab_size,
        )

    # ------------------------------------------------------------------ broadcasts
    def broadcast_from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` from the last pipeline stage to every stage of this replica; returned on the CPU."""
        if self.model.layout.pp > 1:
            from megatron.core import parallel_state as ps

            t = t.to(self.model.device).contiguous()
            dist.broadcast(
                t,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
        return t.cpu()

    def penultimate_layer(self) -> torch.nn.Module | None:
        """The decoder layer with 0-based global index L-2 if this pipeline stage owns it."""
        target = self.model.num_layers - 1  # megatron's layer_number is 1-based
        for layer in self.model.gpt.decoder.layers:
            if layer.layer_number == target:
                return layer
        return None

    def owns_penultimate_layer(self) -> bool:
        """Whether this pipeline stage holds decoder layer L-2 (where penultimate consumers run)."""
        return self.penultimate_layer() is not None

    def penultimate_stage(self) -> int:
        """The pipeline rank that owns decoder layer L-2 (collective over the pipeline group once)."""
        if self._pen_stage is None:
            lay = self.model.layout
            if lay.pp == 1:
                self._pen_stage = 0
            else:
                from megatron.core import parallel_state as ps

                flag = torch.tensor([lay.pp_rank if self.owns_penultimate_layer() else -1]).to(
                    self.model.device
                )
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ps.get_pipeline_model_parallel_group())
                self._pen_stage = int(flag)
        return self._pen_stage

    def combine_from_penultimate_stage(self, t: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce ``t`` (``op``: "min" | "max" | "sum") over the tensor ranks of the stage owning layer L-2,
        where each rank computed part of it, and copy the result to every pipeline stage of this
        data-parallel replica; returns it on the CPU. Collective over the replica's tensor and pipeline
        groups."""
        from megatron.core import parallel_state as ps

        lay = self.model.layout
        stage = self.penultimate_stage()
        t = t.to(self.model.device).contiguous()
        reduce_op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op]
        if lay.tp > 1 and lay.pp_rank == stage:
            dist.all_reduce(t, op=reduce_op, group=ps.get_tensor_model_parallel_group())
        if lay.pp > 1:
            group = ps.get_pipeline_model_parallel_group()
            dist.broadcast(t, src=dist.get_process_group_ranks(group)[stage], group=group)
        return t.cpu()

    # ------------------------------------------------------------------ the forward-only pass
    @torch.no_grad()
    def logprobs(
        self,
        seqs: Sequences,
        *,
        with_entropy: bool = False,
        penultimate_consumer: PenultimateConsumer | None = None,
        phases: list[int] | None = None,
    ) -> TokenOutputs:
        """Per-response-token log-probs [B, T] (and entropy) of ``seqs`` under the current weights.

        ``penultimate_consumer``, if given, is called once per micro-batch, on the ranks of the stage that
        owns decoder layer L-2, with that layer's output at the positions that predict the response
        tokens (the same shift as the log-probs). Nothing else keeps hidden states. ``phases`` (one int
        per sequence) makes every sequence of phase p reach the consumer before any of phase p + 1.
        """
        layout = self.layout(seqs, phases)
        _, mask = seqs.response_tokens()
        B, T = mask.shape
        dev = self.model.device
        logp = torch.zeros(B, T, dtype=torch.float32, device=dev)
        ent = torch.zeros(B, T, dtype=torch.float32, device=dev) if with_entropy else None

        def loss_func(mb: MicroBatch, output: torch.Tensor):
            lp, e = self.token_logprobs(output, mb, with_entropy)
            logp[mb.seq_index, mb.resp_pos] = lp.float()
            if e is not None:
                ent[mb.seq_index, mb.resp_pos] = e.float()
            return output.new_zeros(()), {}

        handle = None
        if penultimate_consumer is not None:
            if self.model.num_layers < 2:
                raise ValueError("a penultimate-layer consumer needs a model with at least 2 decoder layers")
            layer = self.penultimate_layer()
            if layer is not None:
                handle = layer.register_forward_hook(self._penultimate_hook(penultimate_consumer))
        for c in self.model.chunks:
            c.eval()
        try:
            self.run(layout, loss_func, forward_only=True)
        finally:
            if handle is not None:
                handle.remove()
        logp = self.broadcast_from_last_stage(logp)
        if ent is not None:
            ent = self.broadcast_from_last_stage(ent)
        return TokenOutputs(logprobs=logp, entropy=ent, mask=mask)

    def _penultimate_hook(self, consumer: PenultimateConsumer):
        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [S, rows, d] ([S/tp, ...] under SP)
            if self.model.sequence_parallel:
                from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

                hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
            mb = self._current_host_mb
            seq_len, rows = hidden.shape[0], hidden.shape[1]
            # the micro-batch's flat_pos indexes [rows, S] row-major; the states are [S, rows] row-major
            flat_pos = mb.flat_pos.numpy()
            state_index = (flat_pos % seq_len) * rows + flat_pos // seq_len
            states = hidden.detach().reshape(seq_len * rows, hidden.shape[-1])
            consumer(PenultimateChunk(mb.seq_index, mb.resp_pos, states, state_index, mb.phases_done))

        return hook
