"""The local layer spec's two core attentions against the sequence length: what one decoder layer keeps
for backward per token, and the time of a forward + backward.

    PYTHONPATH=. .venv/bin/python bench/bench_attention.py [--seq 1024 2048 4096 8192 16384]
    python bench/bench_attention.py --device cuda --hidden 2048 --heads 16 --kv 8 --layers 2

One row of S tokens (``--dtype``: bf16 on a GPU, fp32 on the CPU, whose bf16 matmuls are slow) through a
Qwen3-shaped megatron-core GPT built directly (random weights, ``local_gpt`` of
nemo_resrl.diagnostics.device_check) with each core attention, sdpa and unfused. Saved bytes: the
storages autograd saves inside decoder layer 0 (``saved_tensors_hooks``; parameters, boolean masks and
what layer 1 saves too left out), divided by S; the plan's ``layer_token_bytes`` for the same shape
beside it. Time: median of ``--repeats`` forward + backward passes after one warm-up. On CUDA also the
allocator's peak above what was allocated before the pass. A configuration whose
unfused scores would not fit (``--max-gib``) is skipped and says so.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def saved_bytes_per_token(model, seq: int, device: str) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where = {"scope": None}
    saved: dict[object, dict[int, int]] = collections.defaultdict(dict)
    layers = model.decoder.layers
    hooks = [layers[0].register_forward_pre_hook(lambda m, a: where.update(scope=0))]
    hooks.append(layers[0].register_forward_hook(lambda m, a, o: where.update(scope=None)))
    if len(layers) > 1:
        hooks.append(layers[1].register_forward_pre_hook(lambda m, a: where.update(scope=1)))
        hooks.append(layers[1].register_forward_hook(lambda m, a, o: where.update(scope=None)))

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if where["scope"] is not None and st.data_ptr() not in params and t.dtype != torch.bool:
            saved[where["scope"]][st.data_ptr()] = st.nbytes()
        return t

    tokens, pos, mask = inputs(model, seq, device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(tokens, pos, mask)
    del out
    for h in hooks:
        h.remove()
    shared = set(saved[1]) if 1 in saved else set()
    return sum(n for ptr, n in saved[0].items() if ptr not in shared) // seq


def inputs(model, seq: int, device: str):
    vocab = model.vocab_size
    tokens = torch.randint(0, vocab, (1, seq), device=device, generator=None)
    pos = torch.arange(seq, device=device)[None]
    core = model.decoder.layers[0].self_attention.core_attention
    unfused = type(core).__name__ == "DotProductAttention"
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=device), 1) if unfused else None
    return tokens, pos, mask


def time_fwd_bwd(model, seq: int, device: str, repeats: int) -> tuple[float, float | None]:
    tokens, pos, mask = inputs(model, seq, device)
    cuda = device == "cuda"
    times, peak = [], None
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        model(tokens, pos, mask).float().mean().backward()
        if cuda:
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        if i:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--max-gib", type=float, default=8.0, help="skip unfused runs whose scores exceed this")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    dtype, p = (torch.bfloat16, 2) if args.dtype == "bf16" else (torch.float32, 4)

    from nemo_resrl.diagnostics.device_check import local_gpt
    from nemo_resrl.plan.activations import layer_token_bytes
    from nemo_resrl.plan.arch import ModelArch

    shape = {
        "layers": args.layers,
        "hidden": args.hidden,
        "ffn": 3 * args.hidden,
        "heads": args.heads,
        "kv": args.kv,
        "head_dim": args.head_dim,
        "vocab": args.vocab,
    }
    arch = ModelArch(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv,
        head_dim=args.head_dim,
        intermediate_size=3 * args.hidden,
        vocab_size=args.vocab,
        tie_word_embeddings=False,
        qk_layernorm=True,
    )
    print(f"# {args.device}, {args.dtype}, one row, shape {json.dumps(shape)}")
    print(f"{'S':>6} {'attention':>9} {'saved B/token':>14} {'planned':>8} {'fwd+bwd s':>10} {'peak GiB':>9}")
    for seq in args.seq:
        for attention in ("sdpa", "unfused"):
            # unfused: the scores, the softmax and its saved output, [heads, S, S] each
            need = args.heads * seq * seq * 3 * p / 2**30
            if attention == "unfused" and need > args.max_gib:
                print(f"{seq:>6} {attention:>9}  skipped: its scores need {need:.1f} GiB (> --max-gib)")
                continue
            torch.manual_seed(0)
            model = local_gpt(shape, seq, args.device, attention, dtype)
            saved = saved_bytes_per_token(model, seq, args.device)
            planned = layer_token_bytes(
                arch, tp=1, p=p, seq_len=seq, attention=attention, cuda=args.device == "cuda"
            )
            t, peak = time_fwd_bwd(model, seq, args.device, args.repeats)
            peak_s = f"{peak:9.2f}" if peak is not None else f"{'-':>9}"
            print(f"{seq:>6} {attention:>9} {saved:>14} {planned:>8} {t:>10.3f} {peak_s}", flush=True)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
