"""Old-log-prob pass: plain GRPO vs ResRL riding on it vs the released code's approach, side by side.

    PYTHONPATH=. .venv/bin/python bench/bench_resrl_pass.py [--layers 4 --hidden 512 --groups 8 ...]
    python bench/bench_resrl_pass.py --device cuda --layers 8 --hidden 2048 --vocab 151936 --groups 4 \
        --group-size 8 --prompt-len 256 --resp-min 256 --resp-max 1024

Each variant runs in a fresh process on the same random Qwen3-shaped model and batch (world of one, on
``--device``: the GPU if there is one, else the CPU; bf16 on a GPU, fp32 on the CPU; megatron-core's
local layer spec when TransformerEngine is not installed):
  grpo      ``actor.forward_logprobs`` over the batch (what GRPO needs anyway)
  resrl     ``old_logprobs_with_resrl``: the same pass with the layer L-2 consumer, sampled rows, SVD
            per group, residuals, quantile gating; in GRPO's micro-batches when the negatives' rows fit
            ``--deferred-rows-mib`` (the deferred layout), else in two phases (positives first)
  released  the released code's approach: keep every decoder layer's output for every token
            (``output_hidden_states=True``), then compute the weights from layer L-2 in one process
Where ResRL's extra time goes (not run by default; ``--variants grpo layout capture resrl``):
  layout    GRPO's pass in the layout the ResRL pass takes: the cost of its padding (none when deferred)
  capture   the same with a layer L-2 consumer that does nothing: the cost of handing the rows over
  so resrl - capture is ResRL's own work (sampled rows, fits, residuals, gating).
Reported: median wall time of the pass over ``--repeats`` runs after one warm-up, and the peak extra
resident memory during a pass (RSS sampled every 2 ms above the RSS before the pass; on GPU, peak
allocated CUDA memory above the allocation before the pass).
``--profile``: one more pass of each variant under ``torch.profiler``; prints its wall time, the time
the device was busy with kernels (GPU), each ``resrl/...`` range of the pass (the labels in
``nemo_resrl.models.resrl_pass`` and ``nemo_resrl.algorithms.subspace``: host and device time) and the
kernels that took the most device time. Wall time well above busy time means the device waited for the
host (synchronisations, the host's Rayleigh-Ritz step, kernel launches). ``BENCH_CPROFILE=1`` with
``--variant V --model DIR`` prints the host-side hot spots of one pass (cProfile).
``--padding G [G ...]``: no model; the padded tokens and attention work (rows x S^2) of GRPO's layout (the
deferred layout's too) and of the two-phase one for batches of G groups of this shape (the phase
split's padding shrinks as the batch grows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def make_model(path: Path, args) -> None:
    """A random Qwen3 of the bench's shape, saved as an HF directory (made on the GPU in bf16 there: a
    billion random parameters take minutes on a CPU)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    cuda = args.device == "cuda"
    with torch.device("cuda" if cuda else "cpu"):
        model = Qwen3ForCausalLM(cfg)
    if cuda:
        model = model.to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)


def make_batch(args):
    from nemo_resrl.algorithms.advantages import compute_advantages
    from nemo_resrl.models.batch import Sequences

    g = torch.Generator().manual_seed(1)
    toks, prompts, gids, correct = [], [], [], []
    for gid in range(args.groups):
        prompt = torch.randint(3, args.vocab, (args.prompt_len,), generator=g)
        n_ok = int(torch.randint(1, args.group_size, (1,), generator=g))  # mixed groups
        for j in range(args.group_size):
            n = int(torch.randint(args.resp_min, args.resp_max + 1, (1,), generator=g))
            toks.append(torch.cat([prompt, torch.randint(3, args.vocab, (n,), generator=g)]))
            prompts.append(args.prompt_len)
            gids.append(gid)
            correct.append(j < n_ok)
    gids_t, ok = torch.tensor(gids), torch.tensor(correct)
    return Sequences(toks, prompts), gids_t, compute_advantages("grpo", ok.float(), ok, gids_t)


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator stats on GPU, sampled RSS on CPU."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False

        def sample():
            while not self.stop:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True
            self.thread.join()
            self.extra = max(self.peak, self.proc.memory_info().rss) - self.base


def _device_us(e) -> float:
    return float(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)))


def _self_device_us(e) -> float:
    return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))


def profile_pass(fn) -> dict:
    """One call of ``fn`` under torch.profiler: wall ms, device-busy ms (the sum of kernel times), the
    ``resrl/...`` ranges (calls, host ms, device ms) and the ten kernels with the most device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.key.startswith("resrl/")]
    ranges = {}
    for e in events:
        if e.key.startswith("resrl/"):
            calls, host, dev = ranges.get(e.key, (0, 0.0, 0.0))
            ranges[e.key] = (calls + e.count, host + e.cpu_time_total / 1e3, dev + _device_us(e) / 1e3)
    top = sorted(kernels, key=_self_device_us, reverse=True)[:10]
    return {
        "wall_ms": wall * 1e3,
        "busy_ms": sum(_self_device_us(e) for e in kernels) / 1e3,
        "ranges": {k: list(v) for k, v in sorted(ranges.items())},
        "top_kernels": [[e.key[:60], e.count, _self_device_us(e) / 1e3] for e in top],
    }


def print_profile(variant: str, p: dict) -> None:
    if "error" in p:
        print(f"## profile {variant} failed: {p['error']}", flush=True)
        return
    print(f"## profile {variant}: wall {p['wall_ms']:.1f} ms, device busy {p['busy_ms']:.1f} ms", flush=True)
    for name, (calls, host, dev) in p["ranges"].items():
        print(f"##   {name:<28} {calls:5d} calls  host {host:9.2f} ms  device {dev:9.2f} ms")
    for name, calls, dev in p["top_kernels"]:
        print(f"##   kernel {name:<60} {calls:5d} x  {dev:9.2f} ms")


def run_variant(args) -> dict:
    from nemo_resrl.algorithms.resrl import ResRLConfig, compute_resrl_weights
    from nemo_resrl.config.actor import ActorConfig
    from nemo_resrl.models.actor import MegatronActor
    from nemo_resrl.models.resrl_pass import ResponseMeta, ResRLPass, old_logprobs_with_resrl

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the actor builds on the CPU
    dtype = "bf16" if args.device == "cuda" else "fp32"
    t_build = time.perf_counter()
    actor = MegatronActor(ActorConfig(hf_path=args.model, micro_batch_size=args.micro_batch, dtype=dtype))
    seqs, gids, adv = make_batch(args)
    B = len(seqs)
    meta = ResponseMeta(group_ids=gids, response_ids=torch.arange(B), advantages=adv, positive=adv > 0)
    cfg = ResRLConfig(deferred_rows_mib=args.deferred_rows_mib)
    _, mask = seqs.response_tokens()
    T = mask.shape[1]

    def grpo():
        actor.forward_logprobs(seqs)

    def resrl():
        old_logprobs_with_resrl(actor, seqs, meta, cfg, step=0)

    pass_layout = ResRLPass(actor, seqs, meta, cfg, step=0)  # the plan: which layout the pass takes
    phases = pass_layout.phases

    def layout():
        actor.forward_logprobs(seqs, phases=phases)

    def capture():
        actor.forward_logprobs(seqs, phases=phases, penultimate_consumer=lambda chunk: None)

    def released():
        layers = list(actor.gpt.decoder.layers)
        kept: dict[int, list] = {i: [] for i in range(len(layers))}
        handles = []
        for i, layer in enumerate(layers):

            def hook(mod, inp, out, i=i):
                h = out[0] if isinstance(out, tuple) else out  # [S, rows, d]: every token, every layer
                kept[i].append(h.detach().transpose(0, 1).clone())

            handles.append(layer.register_forward_hook(hook))
        try:
            actor.forward_logprobs(seqs)
        finally:
            for h in handles:
                h.remove()
        # re-pad layer L-2 to [B, T, d] response-aligned, as the released code re-pads its hidden states
        hidden = torch.zeros(B, T, actor.hidden_size)
        layout = actor.forward.layout(seqs)
        for mb, h in zip(layout.micro_batches, kept[len(layers) - 2]):
            flat = h.reshape(-1, h.shape[-1]).float().cpu()
            hidden[mb.seq_index, mb.resp_pos] = flat[mb.flat_pos]
        compute_resrl_weights(hidden, mask, gids, adv, cfg, step=0, positive=adv > 0)

    build_s = time.perf_counter() - t_build
    fn = {"grpo": grpo, "resrl": resrl, "released": released, "layout": layout, "capture": capture}[
        args.variant
    ]
    in_pass_layout = args.variant in ("resrl", "layout", "capture")
    lay = actor.forward.layout(seqs, phases if in_pass_layout else None)
    padded = sum(mb.tokens.numel() for mb in lay.micro_batches)
    fn()  # warm-up
    times, peaks = [], []
    for _ in range(args.repeats):
        with PeakMemory() as pm:
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peaks.append(pm.extra)
    profiled = None
    if args.profile:
        try:
            profiled = profile_pass(fn)
        except Exception as e:  # the timings above stand without it (a profiler without CUPTI, say)
            profiled = {"error": f"{type(e).__name__}: {e}"}
    if os.environ.get("BENCH_CPROFILE"):  # host-side hot spots of one pass (a development aid)
        import cProfile
        import pstats

        with cProfile.Profile() as cp:
            fn()
        pstats.Stats(cp).sort_stats("cumulative").print_stats(40)
    return {
        "profile": profiled,
        "variant": args.variant,
        "build_s": build_s,
        "time_s": statistics.median(times),
        "times": times,
        "peak_extra_MiB": max(peaks) / 2**20,
        "tokens": int(sum(t.numel() for t in seqs.tokens)),
        "padded_tokens": int(padded),
        "response_tokens": int(mask.sum()),
        "layout": ("deferred" if pass_layout.deferred else "two-phase") if in_pass_layout else "grpo",
    }


def padding_table(args) -> None:
    """GRPO's layout (also the deferred one) vs the two-phase layout (positives first) for each
    ``--padding`` group count."""
    from nemo_resrl.models.batch import make_layout

    print(
        f"{'groups':>6} {'seqs':>5} {'tokens':>8} {'grpo padded':>12} {'2-phase padded':>15} {'extra':>7} "
        f"{'extra attention':>16} {'micro-batches':>14}"
    )
    for groups in args.padding:
        args.groups = groups
        seqs, _, adv = make_batch(args)
        phases = [0 if bool(p) else 1 for p in adv > 0]
        plain = make_layout(seqs, args.micro_batch, uniform_shape=False)
        split = make_layout(seqs, args.micro_batch, uniform_shape=False, phases=phases)
        pad = [sum(mb.tokens.numel() for mb in lay.micro_batches) for lay in (plain, split)]
        att = [
            sum(mb.tokens.shape[0] * mb.tokens.shape[1] ** 2 for mb in lay.micro_batches)
            for lay in (plain, split)
        ]
        n = sum(t.numel() for t in seqs.tokens)
        print(
            f"{groups:6d} {len(seqs):5d} {n:8d} {pad[0]:12d} {pad[1]:15d} {pad[1] / pad[0] - 1:7.2%} "
            f"{att[1] / att[0] - 1:16.2%} {len(plain.micro_batches):14d}"
        )


def main() -> None:
    from nemo_resrl.config.algorithm import ResRLConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--resp-min", type=int, default=64)
    ap.add_argument("--resp-max", type=int, default=192)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=["grpo", "resrl", "released"])
    ap.add_argument("--profile", action="store_true", help="one more pass of each under torch.profiler")
    ap.add_argument("--padding", type=int, nargs="+", default=None, help="group counts: layouts only")
    ap.add_argument(
        "--deferred-rows-mib",
        type=float,
        default=ResRLConfig.deferred_rows_mib,
        help="algorithm.resrl.deferred_rows_mib (0: the two-phase layout)",
    )
    ap.add_argument("--variant", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if args.padding:
        padding_table(args)
        return
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        make_model(model, args)
        results = []
        for variant in args.variants:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--model", str(model)]
            env = dict(os.environ)
            if args.device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                raise SystemExit(f"{variant} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            results.append(json.loads(line[0][7:]))
            r = results[-1]
            print(
                f"# {variant}: {r['time_s']:.3f} s ({r['times']}), built in {r['build_s']:.1f} s", flush=True
            )
            if r["profile"]:
                print_profile(variant, r["profile"])
    base = results[0]
    print(
        f"device {args.device}; model: {args.layers} layers, d={args.hidden}, vocab {args.vocab}; "
        f"batch: {args.groups} groups x "
        f"{args.group_size} responses, {base['tokens']} tokens ({base['response_tokens']} response tokens)"
    )
    print(
        f"{'variant':<10} {'time s':>8} {'x grpo':>7} {'peak extra MiB':>15} {'padded tokens':>14} "
        f"{'layout':>10}"
    )
    for r in results:
        ratio = r["time_s"] / base["time_s"]
        print(
            f"{r['variant']:<10} {r['time_s']:8.3f} {ratio:7.3f} {r['peak_extra_MiB']:15.1f} "
            f"{r['padded_tokens']:14d} {r['layout']:>10}"
        )


if __name__ == "__main__":
    main()
