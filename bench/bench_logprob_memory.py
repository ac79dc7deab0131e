"""Benchmark: peak extra memory and time of token log-probs for Qwen3's vocabulary (151936), chunked vs not.

Not a test. Each case runs in a fresh subprocess; the peak resident set size (ru_maxrss) is measured
after the bf16 logits [N, V] exist, so the number printed is what the log-prob computation adds on top.
"unchunked" is the usual ``log_softmax(logits.float()).gather(...)``; "chunked" is
``nemo_resrl.models.logprobs.vocab_parallel_logprobs`` (float32 temporaries of [chunk_rows, V] only).

    python bench/bench_logprob_memory.py                     # N = 1024, 4096, 8192 tokens
    python bench/bench_logprob_memory.py --tokens 2048 --vocab 32000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_case(mode: str, n: int, vocab: int, chunk: int) -> dict:
    import torch

    from nemo_resrl.models.logprobs import vocab_parallel_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.empty(n, vocab, dtype=torch.bfloat16)
    for a in range(0, n, 64):  # small float32 temporaries only, so they do not set the baseline peak
        logits[a : a + 64] = torch.randn(min(64, n - a), vocab, generator=g)
    labels = torch.randint(0, vocab, (n,), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    if mode == "unchunked":
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    else:
        logp, _ = vocab_parallel_logprobs(logits, labels, chunk_rows=chunk)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_MiB": (peak - base) / 1024, "seconds": dt, "checksum": float(logp.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--chunk-rows", type=int, default=1024)
    p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], int(args.case[1]), args.vocab, args.chunk_rows)))
        return
    print(f"# vocab={args.vocab} chunk_rows={args.chunk_rows}; extra peak RSS over the bf16 logits")
    print(f"{'tokens':>7} {'mode':>10} {'extra_MiB':>10} {'seconds':>8} {'fp32 [N,V] MiB':>15}")
    for n in args.tokens:
        sums = {}
        for mode in ("unchunked", "chunked"):
            cmd = [sys.executable, __file__, "--vocab", str(args.vocab), "--chunk-rows", str(args.chunk_rows)]
            out = subprocess.run([*cmd, "--case", mode, str(n)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            sums[mode] = r["checksum"]
            full = n * args.vocab * 4 / 2**20
            print(f"{n:>7} {mode:>10} {r['extra_MiB']:>10.0f} {r['seconds']:>8.2f} {full:>15.0f}")
        assert abs(sums["chunked"] - sums["unchunked"]) < 1e-2 * n, sums


if __name__ == "__main__":
    main()
