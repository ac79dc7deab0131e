"""The one-device check (``tools/gpu_check.sh``): the actor's correctness and its memory / speed numbers on
one device, written as JSON. On a GPU it is the first thing to run; ``--device cpu`` runs the same checks
on tiny shapes so the script cannot rot (CI runs it).

    python -m nemo_resrl.diagnostics.device_check --device cuda --out gpu_check.json

Checks (each ``{"ok": bool, ...numbers}``; one failing does not stop the others; exit status 1 if any
failed):
- ``logits``: a tiny random Qwen3 (fp32) in the Megatron actor against transformers on the same device;
- ``penultimate``: the layer L-2 capture against transformers' ``hidden_states[-2]``;
- ``resrl``: the ResRL weights of the old-log-prob pass against the single-process computation on
  transformers' hidden states;
- ``train_resume``: two optimizer steps, and the same two steps after a save and a load into a fresh actor;
- ``bytes_per_param``: parameters, gradient buffers and optimizer state per parameter, before and after
  the first step (storage accounting; allocator numbers too on a GPU);
- ``activations``: bytes saved for backward per token and layer in one training micro-batch;
- ``plan``: the planner (``nemo-resrl plan``, docs/plan.md) against the built actor: its parameter,
  gradient, master and Adam bytes (exact), and on a GPU the allocator's peak over a train step of one
  micro-batch of 8 x 256 tokens against the plan's activations, logits and log-prob chunks for that
  shape (within 25 %; the optimizer step's temporaries are not in the plan);
- ``cache``: on a GPU, the allocator's cached bytes after training and after ``empty_cache``;
- ``export``: the bandwidth of the weight export the refit streams (device tensors, and host copies);
- ``mfu``: model FLOPs utilisation of a bf16 train step (forward + backward + torch AdamW on the bf16
  parameters) of a Qwen3-1.7B-shaped model (28 layers, hidden 2048) built directly with megatron-core's
  local layer spec and the actor's default SDPA attention (what runs without TransformerEngine), one
  sequence of 8192 tokens, against 989 TFLOP/s dense bf16 (H100 / H200); a tiny shape on CPU (FLOP/s
  only). It measures the local spec's throughput, not the TransformerEngine path's;
- ``loop``: a few real ResRL steps of ``nemo-resrl train`` with the transformers rollout engine in a
  child process, each phase's time and (on a GPU) allocator peak beside ``nemo-resrl plan``'s numbers
  (``nemo_resrl/diagnostics/loop_check.py``).

Needs torch, transformers, megatron-core and megatron-bridge only (no vLLM, no TransformerEngine: the
local layer spec is used).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from nemo_resrl.algorithms.losses import PolicyLoss
from nemo_resrl.algorithms.token_batch import PerToken

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "B200": 2250.0, "A100": 312.0}  # dense bf16, per GPU
QWEN3_1P7B = dict(layers=28, hidden=2048, ffn=6144, heads=16, kv=8, head_dim=128, vocab=151936)
TINY_MFU = dict(layers=2, hidden=256, ffn=512, heads=4, kv=2, head_dim=64, vocab=1024)


def tiny_qwen3(path: Path, seed: int = 0) -> Path:
    """A random 4-layer Qwen3 (hidden 256, 4 heads, 2 KV heads, vocabulary 1024) saved as an HF directory."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    return path


def _batch(seed: int = 0):
    from nemo_resrl.models.batch import Sequences

    g = torch.Generator().manual_seed(seed)
    lens, prompts = (24, 31, 17, 28, 22, 30, 19, 26), (6, 9, 4, 7, 5, 8, 6, 7)
    toks = [torch.randint(3, 1000, (n,), generator=g) for n in lens]
    return Sequences(toks, list(prompts))


class Checks:
    """The checks, sharing one tiny model and actor (see the module docstring)."""

    def __init__(self, device: str, work: Path, deadline: float | None = None) -> None:
        self.device, self.work = device, work
        self.deadline = deadline  # time.monotonic() by which every check must have ended (None: no limit)
        self.cuda = device == "cuda"
        self.model_dir = tiny_qwen3(work / "tiny_qwen3")
        self.seqs = _batch()
        self._actor = None
        self._hf = None

    # shared pieces
    def actor(self, fresh: bool = False):
        from nemo_resrl.config import ActorConfig, OptimConfig
        from nemo_resrl.models.actor import MegatronActor

        if self._actor is None or fresh:
            cfg = ActorConfig(
                hf_path=str(self.model_dir),
                layer_spec="local",
                micro_batch_size=8,
                optim=OptimConfig(lr=1e-3, weight_decay=0.0),
            ).validate()
            actor = MegatronActor(cfg)
            if fresh:
                return actor
            self._actor = actor
        return self._actor

    def hf(self):
        if self._hf is None:
            from transformers import AutoModelForCausalLM

            self._hf = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            self._hf = self._hf.to(self.device).eval()
        return self._hf

    def hf_outputs(self):
        with torch.no_grad():
            return [self.hf()(t[None].to(self.device), output_hidden_states=True) for t in self.seqs.tokens]

    # the checks
    def logits(self) -> dict:
        from nemo_resrl.models.full_logits import gather_logits

        got = gather_logits(self.actor(), self.seqs)
        ref = [o.logits[0].float().cpu() for o in self.hf_outputs()]
        diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
        return {
            "ok": diff < 1e-3,
            "max_abs_diff": diff,
            "logit_scale": max(float(r.abs().max()) for r in ref),
        }

    def penultimate(self) -> dict:
        rows = []
        self.actor().forward_logprobs(
            self.seqs, penultimate_consumer=lambda c: rows.append((c.seq_index, c.resp_pos, c.hidden.cpu()))
        )
        outs = self.hf_outputs()
        diff, n = 0.0, 0
        for seq_index, resp_pos, hidden in rows:
            for s, r, h in zip(seq_index.tolist(), resp_pos.tolist(), hidden.float()):
                p = self.seqs.prompt_lens[s]
                ref = outs[s].hidden_states[-2][0, p - 1 + r].float().cpu()
                diff, n = max(diff, float((h - ref).abs().max())), n + 1
        expected = sum(self.seqs.response_lens)
        return {
            "ok": n == expected and diff < 1e-3,
            "tokens": n,
            "expected_tokens": expected,
            "max_abs_diff": diff,
        }

    def resrl(self) -> dict:
        from nemo_resrl.algorithms.resrl import ResponseMeta, compute_resrl_weights
        from nemo_resrl.config import ResRLConfig
        from nemo_resrl.models.resrl_pass import old_logprobs_with_resrl

        cfg = ResRLConfig(max_rows=32, rank=4)
        gids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, -0.3, 0.8])
        meta = ResponseMeta(group_ids=gids, response_ids=torch.arange(8), advantages=adv, positive=adv > 0)
        res = old_logprobs_with_resrl(self.actor(), self.seqs, meta, cfg, step=3)  # the deferred layout
        two_phase = replace(cfg, deferred_rows_mib=0)  # positives first, negatives projected as they come
        res2 = old_logprobs_with_resrl(self.actor(), self.seqs, meta, two_phase, step=3)
        _, mask = self.seqs.response_tokens()
        hidden = torch.zeros(*mask.shape, 256)
        for i, o in enumerate(self.hf_outputs()):
            p, n = self.seqs.prompt_lens[i], self.seqs.response_lens[i]
            hidden[i, :n] = o.hidden_states[-2][0, p - 1 : p - 1 + n].float().cpu()
        ref = compute_resrl_weights(hidden, mask, gids, adv, cfg, step=3, positive=adv > 0)
        diff = float(((res.weights - ref.weights) * mask).abs().max())
        diff2 = float(((res2.weights - ref.weights) * mask).abs().max())
        weighted = float((res.weights[mask & (adv < 0)[:, None]] < 0.999).float().mean())
        return {
            "ok": max(diff, diff2) < 1e-3 and res.stats.num_active == res2.stats.num_active == 2,
            "max_abs_diff": diff,
            "max_abs_diff_two_phase": diff2,
            "frac_below_1": weighted,
        }

    def train_resume(self) -> dict:

        def steps(actor, seeds) -> tuple[dict[str, torch.Tensor], dict]:
            for s in seeds:
                out = actor.forward_logprobs(self.seqs)
                adv = torch.randn(out.logprobs.shape, generator=torch.Generator().manual_seed(s)) * out.mask
                m = actor.train_step(self.seqs, PerToken(out.logprobs, adv, out.mask), PolicyLoss())
            return {k: v.detach().clone().cpu() for k, v in actor.export_weights(cpu=True)}, m

        # one step, a checkpoint (model, Adam state, schedule), two more steps; a fresh actor loads the
        # checkpoint and takes the same two steps
        a = self.actor(fresh=True)
        ckpt = self.work / "ckpt"
        steps(a, [0])
        a.save_checkpoint(ckpt)
        w1, m = steps(a, [1, 2])
        b = self.actor(fresh=True)
        b.load_checkpoint(ckpt)
        w2, _ = steps(b, [1, 2])
        diff = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
        finite = all(math.isfinite(v) for v in m.values())
        return {"ok": finite and diff <= 1e-6, "max_abs_diff_after_resume": diff, "loss": m["loss"]}

    def bytes_per_param(self) -> dict:
        from nemo_resrl.models.offload import StorageOffload, _optimizer_tensors

        a = self.actor(fresh=True)
        params = [p for c in a.model.chunks for p in c.parameters()]
        n = sum(p.numel() for p in params)
        p_keys = StorageOffload(params).keys()

        def account() -> dict:
            grads = [b.grad_data for c in a.model.chunks for b in c.buffers]
            opt = StorageOffload(
                _optimizer_tensors(a.optimizer), exclude=p_keys | StorageOffload(grads).keys()
            )
            out = {
                "params": StorageOffload(params).nbytes / n,
                "grads": StorageOffload(grads).nbytes / n,
                "optimizer": opt.nbytes / n,
            }
            if self.cuda:
                out["cuda_allocated"] = torch.cuda.memory_allocated() / n
            return out

        before = account()
        out = a.forward_logprobs(self.seqs)
        a.train_step(
            self.seqs, PerToken(out.logprobs, torch.zeros_like(out.logprobs), out.mask), PolicyLoss()
        )
        after = account()
        # fp32 training: 4 (params) + 4 (fp32 grad buffer) before; + 8 (Adam moments) after the first step
        ok = before["optimizer"] < 1 and 7.9 < after["optimizer"] < 8.5 and abs(after["params"] - 4) < 0.1
        return {"ok": ok, "parameters": n, "before_first_step": before, "after_first_step": after}

    def activations(self) -> dict:
        from nemo_resrl.models.offload import StorageOffload

        a = self.actor()
        params = StorageOffload([p for c in a.model.chunks for p in c.parameters()]).keys()
        seen: dict[tuple, int] = {}

        def pack(t: torch.Tensor):
            st = t.untyped_storage()
            key = (str(st.device), st.data_ptr())
            if key not in params:
                seen[key] = max(seen.get(key, 0), st.nbytes())
            return t

        out = a.forward_logprobs(self.seqs)
        layout = a.forward.layout(self.seqs)
        tokens = sum(mb.tokens.numel() for mb in layout.micro_batches)
        if self.cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            a.train_step(
                self.seqs, PerToken(out.logprobs, torch.zeros_like(out.logprobs), out.mask), PolicyLoss()
            )
        per = sum(seen.values()) / (tokens * a.num_layers)
        res = {"ok": per > 0, "bytes_per_token_and_layer": per, "tokens": tokens, "layers": a.num_layers}
        res["hidden"] = a.hidden_size
        if self.cuda:
            res["cuda_peak_over_base_per_token_and_layer"] = (torch.cuda.max_memory_allocated() - base) / (
                tokens * a.num_layers
            )
        return res

    def plan(self) -> dict:
        import json as _json

        from nemo_resrl.diagnostics.actor_memory import measured_bytes
        from nemo_resrl.models.batch import Sequences
        from nemo_resrl.plan.activations import layer_token_bytes, logits_bytes, logprob_chunk_bytes
        from nemo_resrl.plan.arch import arch_from_hf_config
        from nemo_resrl.plan.params import actor_static

        a = self.actor(fresh=True)
        g = torch.Generator().manual_seed(3)
        seqs = Sequences([torch.randint(3, 1000, (256,), generator=g) for _ in range(8)], [32] * 8)

        def step() -> None:
            out = a.forward_logprobs(seqs)
            a.train_step(seqs, PerToken(out.logprobs, torch.ones_like(out.logprobs), out.mask), PolicyLoss())

        step()  # Adam's state exists from here on
        arch = arch_from_hf_config(_json.loads((self.model_dir / "config.json").read_text()))
        st = actor_static(
            arch, tp=1, pp=1, dp=1, stage=0, dtype_bytes=4,
            distributed_optimizer=a.model.cfg.optim.use_distributed_optimizer,
        )  # fmt: skip
        planned = {"params": st.params, "grads": st.grads, "master": st.master, "optimizer": st.optimizer}
        measured = measured_bytes(a)
        res = {"static_measured": measured, "static_planned": planned, "static_exact": measured == planned}
        rows, s = a.forward.layout(seqs).micro_batches[0].tokens.shape
        tokens = rows * s
        per_layer = (
            layer_token_bytes(arch, tp=1, p=4, seq_len=s, attention=a.model.cfg.attention, cuda=self.cuda)
            * tokens
        )
        dynamic = {
            "activations kept": arch.num_layers * per_layer,
            "backward temporaries": per_layer,
            "logits + gradient": 2 * logits_bytes(arch, tp=1, p=4, tokens=tokens),
            "log-prob chunks": logprob_chunk_bytes(arch, tp=1, chunk_rows=a.model.cfg.logprob_chunk_rows),
        }
        res.update(micro_batch=[rows, s], planned_train_step_bytes=dynamic)
        ok = res["static_exact"]
        if self.cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            res["cuda_peak_over_base_bytes"] = peak
            res["peak_over_planned"] = peak / sum(dynamic.values())
            ok = ok and 0.75 <= res["peak_over_planned"] <= 1.25
        res["ok"] = ok
        return res

    def cache(self) -> dict:
        if not self.cuda:
            return {"ok": True, "skipped": "no caching allocator on CPU"}
        import gc

        a = self.actor()
        out = a.forward_logprobs(self.seqs)
        a.train_step(
            self.seqs, PerToken(out.logprobs, torch.zeros_like(out.logprobs), out.mask), PolicyLoss()
        )
        del out
        gc.collect()
        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        torch.cuda.empty_cache()
        after = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return {
            "ok": after <= cached,
            "cached_bytes_after_training": cached,
            "cached_after_empty_cache": after,
        }

    def export(self) -> dict:
        a = self.actor()
        res = {}
        for label, cpu in (("device", False), ("host", True)):
            t0 = time.perf_counter()
            n = sum(t.numel() * t.element_size() for _, t in a.export_weights(cpu=cpu))
            if self.cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            res[f"{label}_bytes"], res[f"{label}_gbytes_per_s"] = n, n / dt / 1e9
        res["ok"] = res["device_bytes"] == res["host_bytes"] > 0
        return res

    def loop(self) -> dict:
        from nemo_resrl.diagnostics.loop_check import run_loop

        return run_loop(self.device, self.work / "loop", deadline=self.deadline)

    def mfu(self) -> dict:
        shape = QWEN3_1P7B if self.cuda else TINY_MFU
        # 8k tokens on a GPU with the SDPA attention (the unfused one ran out of 141 GB at 2 x 4096)
        seq, rows = (8192, 1) if self.cuda else (128, 2)
        return train_step_flops(shape, seq, rows, self.device)


def local_gpt(
    shape: dict, seq: int, device: str, attention: str = "sdpa", dtype: torch.dtype = torch.bfloat16
):
    """A megatron-core GPT of ``shape`` (random weights; local layer spec with ``attention``: sdpa | unfused;
    Qwen3's layer: RMSNorm, q / k norms, SwiGLU, rotary; softmax in the model dtype, as megatron-bridge
    configures the actor) in ``dtype`` on ``device``, in a world of one."""
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_resrl.models.parallel import init_parallel

    cuda = device == "cuda"
    init_parallel(1, 1, seed=0)  # megatron's model-parallel state (a world of one), if no check made it yet
    cfg = TransformerConfig(
        num_layers=shape["layers"],
        hidden_size=shape["hidden"],
        ffn_hidden_size=shape["ffn"],
        num_attention_heads=shape["heads"],
        num_query_groups=shape["kv"],
        kv_channels=shape["head_dim"],
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        qk_layernorm=True,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        attention_softmax_in_fp32=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=not cuda,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if attention == "sdpa":
        from nemo_resrl.models.sdpa_attention import SDPADotProductAttention

        spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=shape["vocab"],
        max_sequence_length=seq,
        position_embedding_type="rope",
        rotary_base=1_000_000,
        share_embeddings_and_output_weights=False,
    )
    return model.to(device)


def train_step_flops(
    shape: dict, seq: int, rows: int, device: str, steps: int = 3, attention: str = "sdpa"
) -> dict:
    """Time bf16 train steps (forward + backward + Adam) of ``local_gpt(shape, ..., attention)``; FLOPs by
    the usual count: 6 x tokens x matmul parameters, plus the causal attention's 6 x layers x seq x heads
    x head_dim per token."""
    cuda = device == "cuda"
    model = local_gpt(shape, seq, device, attention)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens = torch.randint(0, shape["vocab"], (rows, seq), device=device)
    pos = torch.arange(seq, device=device).unsqueeze(0).expand(rows, seq)

    def step() -> None:
        loss = model(tokens, pos, None, labels=tokens).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the peak below is this model's steps, not earlier checks'
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n)
    n_tok = rows * seq
    flops = 6 * n_tok * matmul + 6 * shape["layers"] * seq * shape["heads"] * shape["head_dim"] * n_tok
    res = {
        "seconds_per_step": dt,
        "tflops_per_s": flops / dt / 1e12,
        "tokens": n_tok,
        "matmul_params": matmul,
    }
    res["shape"] = dict(shape, seq=seq, rows=rows)
    res["measures"] = f"megatron-core local layer spec ({attention} attention), torch AdamW, bf16"
    peak = None
    if cuda:
        name = torch.cuda.get_device_name()
        res["gpu"] = name
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["mfu"] = res["tflops_per_s"] / peak if peak else None
    res["ok"] = math.isfinite(res["tflops_per_s"]) and res["tflops_per_s"] > 0
    return res


ORDER = (
    "logits",
    "penultimate",
    "resrl",
    "train_resume",
    "bytes_per_param",
    "activations",
    "plan",
    "cache",
    "export",
    "mfu",
    "loop",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when one is visible")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--only", nargs="*", choices=ORDER, help="run these checks only")
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds the whole run may take (tools/gpu_check.sh's limit): the loop "
        "check's child gets what is left of it",
    )
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA is first queried: a CPU-only machine's path
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
        torch.backends.cudnn.allow_tf32 = False
    report = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "checks": {},
    }
    t_all = time.perf_counter()
    deadline = time.monotonic() + args.budget if args.budget else None
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        checks = Checks(args.device, Path(tmp), deadline)
        for name in args.only or ORDER:
            t0 = time.perf_counter()
            # written before the check runs: a run killed inside it still names the check it was in
            report["checks"][name] = {"ok": False, "running": True}
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
            try:
                res = getattr(checks, name)()
            except Exception as e:
                res = {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            res["seconds"] = round(time.perf_counter() - t0, 3)
            report["checks"][name] = res
            print(f"{name:16s} {'ok' if res['ok'] else 'FAILED'} ({res['seconds']:.1f} s)", flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["failed"] = [k for k, v in report["checks"].items() if not v["ok"]]
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}: {len(report['checks']) - len(report['failed'])} ok, failed: {report['failed']}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
