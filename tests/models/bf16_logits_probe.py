"""A bf16 actor's logits on their way to the log-probs (one process, CPU or CUDA):

    python -m tests.models.bf16_logits_probe MODEL_DIR

MODEL_DIR: a tiny Qwen3 (vocabulary 256). Records the dtype of the
logits the log-prob layer receives, what it allocates in a forward-only pass (``LiveBytes``), what
backward keeps of them in a train step, and the plan's logits and log-prob-chunk terms for the same
tokens. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken

warnings.filterwarnings("ignore")


def main() -> None:
    from nemo_resrl.config import ActorConfig, OptimConfig
    from nemo_resrl.diagnostics.live_bytes import LiveBytes
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.batch import Sequences

    actor = MegatronActor(
        ActorConfig(
            hf_path=sys.argv[1], dtype="bf16", micro_batch_size=4, logprob_chunk_rows=16, optim=OptimConfig()
        ).validate()
    )
    g = torch.Generator().manual_seed(0)
    seqs = Sequences([torch.randint(3, 256, (n,), generator=g) for n in (40, 33, 29, 38)], [8, 5, 9, 6])
    runner = actor.forward
    seen = {"dtypes": set(), "peak": 0, "rows": 0, "padded": 0}
    inner = runner.token_logprobs

    def measured(logits, mb, with_entropy):
        seen["dtypes"].add(str(logits.dtype))
        seen["padded"] = logits.shape[-1]
        seen["rows"] = max(seen["rows"], int(mb.flat_pos.numel()))
        with LiveBytes() as lb:
            out = inner(logits, mb, with_entropy)
        seen["peak"] = max(seen["peak"], lb.peak)
        return out

    runner.token_logprobs = measured
    out = actor.forward_logprobs(seqs, with_entropy=True)
    saved = []

    def pack(t):
        if t.dim() == 2 and t.shape[-1] == seen["padded"]:
            saved.append((str(t.dtype), t.numel() * t.element_size()))
        return t

    adv = torch.randn(out.logprobs.shape, generator=g) * out.mask
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        metrics = actor.train_step(seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss())
    n, v = seen["rows"], seen["padded"]
    cuda = actor.device.type == "cuda"
    if cuda:  # the allocator's peak over a bf16 train step (Adam's state exists now) against the plan
        from nemo_resrl.plan.activations import layer_token_bytes, logits_bytes, logprob_chunk_bytes
        from nemo_resrl.plan.arch import arch_from_hf_config

        arch = arch_from_hf_config(actor.model.hf_config)
        layout = actor.forward.layout(seqs)
        tokens = sum(mb.tokens.numel() for mb in layout.micro_batches)
        s_len = layout.micro_batches[0].tokens.shape[1]
        per_layer = layer_token_bytes(arch, tp=1, p=2, seq_len=s_len) * tokens
        planned = (
            arch.num_layers * per_layer
            + per_layer
            + 2 * logits_bytes(arch, tp=1, p=2, tokens=tokens)
            + logprob_chunk_bytes(arch, tp=1, chunk_rows=actor.model.cfg.logprob_chunk_rows)
        )
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        actor.train_step(seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss())
        torch.cuda.synchronize()
        train_peak = torch.cuda.max_memory_allocated() - base
    res = {
        "logit_dtypes": sorted(seen["dtypes"]),
        "padded_vocab": v,
        "vocab": actor.model.vocab_size,
        "loss_layer_peak": seen["peak"],
        # the plan's terms for these rows: bf16 logits rows and two float32 chunks
        "planned_logits": n * v * 2,
        "planned_chunks": 2 * actor.model.cfg.logprob_chunk_rows * v * 4,
        "saved_logits": saved,
        "response_tokens": n,
        "device": str(actor.device),
        "train_peak_over_plan": train_peak / planned if cuda else None,
        "finite": bool(torch.isfinite(out.logprobs).all() and torch.isfinite(out.entropy).all())
        and all(map(lambda x: x == x, metrics.values())),
    }
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
