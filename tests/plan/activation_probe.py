"""Measures what one decoder layer of the Megatron actor (local layer spec, CPU) saves for backward, per
token, with ``torch.autograd.graph.saved_tensors_hooks``.

    python -m tests.plan.activation_probe --work DIR

DIR must hold the tiny HF checkpoints ``qwen3/``, ``qwen2/``, ``llama/`` and ``qwen3_moe/``
(``tiny_hf.make_tiny``).

A tensor counts once per storage; parameters, boolean masks and storages that more than one layer saves
(the rotary table, shared by every layer) are left out. Without recomputation, layer 0's saves are those
made between its forward pre-hook and its forward hook. With full recomputation the layer runs under
``no_grad`` inside megatron's ``CheckpointFunction``, which then saves its inputs: those saves come right
after the layer's forward hook, before the next layer starts. ``DIR/activations.json`` gets
{"model dtype recompute attention": {seq_len: bytes per token}} for each of ``CASES``.
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

SEQ_LENS = (16, 64, 256)
ROWS = 2  # rows of one micro-batch (with one row some outputs are views of others and cost nothing)
MODELS = ("qwen3", "qwen2", "llama", "qwen3_moe")
# (model, dtype, recompute, attention): both attentions without recomputation, SDPA (the default) with it
CASES = [
    (m, d, r, a)
    for m in MODELS
    for d in ("fp32", "bf16")
    for r, a in (("none", "sdpa"), ("none", "unfused"), ("full", "sdpa"))
]


def layer_bytes_per_token(gpt, seq_len: int, recompute: bool, attention: str) -> float:
    params = {q.untyped_storage().data_ptr() for q in gpt.parameters()}
    where = {"scope": None}
    saved: dict[object, dict[int, int]] = collections.defaultdict(dict)
    hooks = []
    for i, layer in enumerate(gpt.decoder.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: where.update(scope=("in", i))))
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: where.update(scope=("after", i))))

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params and t.dtype != torch.bool:
            saved[where["scope"]][st.data_ptr()] = st.nbytes()
        return t

    g = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(3, 200, (ROWS, seq_len), generator=g)
    pos = torch.arange(seq_len)[None].expand(ROWS, seq_len)
    # one padded row: the unfused attention takes megatron's causal mask, SDPA none (it is causal itself)
    mask = (
        torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool), 1)
        if attention == "unfused"
        else None
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gpt(ids, pos, mask)
    for h in hooks:
        h.remove()
    kind = "after" if recompute else "in"
    mine, other = saved[(kind, 0)], saved[(kind, 1)]
    return sum(n for ptr, n in mine.items() if ptr not in other) / (ROWS * seq_len)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()

    from nemo_resrl.config import ActorConfig
    from nemo_resrl.models.actor import MegatronActor

    out = {}
    for model, dtype, recompute, attention in CASES:
        cfg = ActorConfig(
            hf_path=str(args.work / model), dtype=dtype, recompute=recompute, attention=attention
        )
        gpt = MegatronActor(cfg.validate()).model.gpt
        gpt.train()
        full = recompute == "full"
        out[f"{model} {dtype} {recompute} {attention}"] = {
            s: layer_bytes_per_token(gpt, s, full, attention) for s in SEQ_LENS
        }
    (args.work / "activations.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
