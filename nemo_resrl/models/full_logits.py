"""Full-vocabulary logits of the Megatron actor, for checks on small models (the tests' parity with
transformers and conversion round trips, ``tools/gpu_check.sh``). It gathers the whole vocabulary, which
the training path never does."""

from __future__ import annotations

import torch
import torch.distributed as dist


@torch.no_grad()
def gather_logits(actor, seqs) -> list[torch.Tensor]:
    """Logits of every sequence, [n_i, V] float32 on the CPU, on all ranks (collective)."""
    from megatron.core import parallel_state as ps

    runner = actor.forward
    lay = actor.layout
    layout = runner.layout(seqs)
    out = [torch.zeros(t.numel(), actor.vocab_size) for t in seqs.tokens]

    def loss_func(mb, output: torch.Tensor):
        full = output.float()
        if lay.tp > 1:
            parts = [torch.empty_like(full) for _ in range(lay.tp)]
            dist.all_gather(parts, full.contiguous(), group=ps.get_tensor_model_parallel_group())
            full = torch.cat(parts, dim=-1)
        full = full[..., : actor.vocab_size].cpu()
        for i in mb.seq_ids.tolist():
            r, off = mb.placement[i]
            out[i] = full[r, off : off + seqs.tokens[i].numel()].clone()
        return output.new_zeros(()), {}

    for c in actor.model.chunks:
        c.eval()
    runner.run(layout, loss_func, forward_only=True)
    return [runner.broadcast_from_last_stage(t) for t in out]
