"""Benchmark: the positive-subspace fit of ResRL groups, per method, on CPU or GPU.

Not a test. For each spectrum and method it prints the time of one batched fit of ``--groups`` groups
(per group), the largest token-weight difference against a float64 exact SVD of the same rows (computed
on the same device, weights on the CPU), the energy the subspace captures relative to that exact one, and
the largest principal angle.

Groups: ``--rows`` sampled positive rows (M) and ``--negatives`` negative tokens at width ``--d``;
synthetic representations ``(g * s) @ Q + offset`` with a power-law spectrum ``s_j = j^-p`` in a random
rotation (``--decays``; p = 0 has no gap at k, where the top-k subspace itself is ill-defined), negatives
half from the same distribution, half with extra energy in the weak directions. ``--real FILE`` adds
groups of layer L-2 states of the embedded model saved by ``--save-real FILE`` (needs the embedded model
and transformers; a few minutes on CPU).

    python bench/bench_resrl_svd.py                               # d=2048, M=4096, k=64, CPU
    python bench/bench_resrl_svd.py --device cuda --d 4096 --groups 8
    python bench/bench_resrl_svd.py --d 1024 --rows 1024 --decays 1.0   # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nemo_resrl.algorithms.resrl import ResRLConfig, linear_quantile, normalize_hidden
from nemo_resrl.algorithms.subspace import fit_subspaces, principal_angles


def synthetic(m: int, n: int, d: int, decay: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=gen)).Q
    s = torch.arange(1, d + 1, dtype=torch.float32).pow(-decay)
    offset = 3.0 * torch.randn(d, generator=gen)
    pos = (torch.randn(m, d, generator=gen) * s) @ q + offset
    neg = (torch.randn(n, d, generator=gen) * s) @ q + offset
    neg[: n // 2] += (torch.randn(n // 2, d, generator=gen) * s.flip(0)) @ q
    return normalize_hidden(pos), normalize_hidden(neg)


def save_real(path: str, responses: int = 16, new_tokens: int = 400) -> None:
    """Layer L-2 states of the embedded model on real prompts of the embedded task: per prompt, the
    model's own sampled responses, the first half taken as positives and the rest as negatives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_resrl.models.embedded import ensure_embedded_model

    model_dir = ensure_embedded_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    layer = model.config.num_hidden_layers - 1  # hidden_states[i] is the output of layer i - 1
    prompts = ["What is 7 + 5?", "Compute 9 - 4.", "What is 3 + 8?", "What is 6 + 7?"]
    torch.manual_seed(0)
    out = []
    for p in prompts:
        msgs = [{"role": "user", "content": p + " Explain step by step."}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        seq = model.generate(
            ids.repeat(responses, 1), do_sample=True, max_new_tokens=new_tokens, pad_token_id=tok.eos_token_id
        )
        with torch.no_grad():
            h = model(seq, output_hidden_states=True).hidden_states[layer][:, ids.shape[1] - 1 : -1]
        resp = seq[:, ids.shape[1] :]
        valid = torch.cumsum((resp == tok.eos_token_id).long(), 1) - (resp == tok.eos_token_id).long() == 0
        half = responses // 2
        out.append((h[:half][valid[:half]].bfloat16(), h[half:][valid[half:]].bfloat16()))
    torch.save(out, path)


def weights(r: torch.Tensor, alpha=0.2, beta=0.8, xi=0.1) -> torch.Tensor:
    lo, hi = linear_quantile(r, alpha), linear_quantile(r, beta)
    return xi + (1 - xi) * ((r - lo) / (hi - lo)).clamp(0, 1)


def residuals(x: torch.Tensor, mu: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    xc = x - mu
    r = xc - (xc @ v) @ v.T
    return (r * r).sum(-1) / x.shape[1]


def timed(fn, device: str, repeats: int):
    fn()  # warm-up (CUDA kernels, cuSOLVER handles)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, k = args.device, args.rank
    cfg = ResRLConfig(rank=k)
    methods = [] if args.no_exact else [("exact", {"method": "exact"})]
    methods += [("randomized (default)", {})]
    methods += [(f"randomized it={it} p={p}", {"iterations": it, "oversample": p}) for it, p in args.variants]
    groups = []
    for decay in args.decays:
        pos, neg = synthetic(args.rows, args.negatives, args.d, decay, seed=0)
        groups.append((f"decay {decay}", pos, neg))
    if args.real:
        for i, (pos, neg) in enumerate(torch.load(args.real)):
            groups.append((f"embedded model, prompt {i}", normalize_hidden(pos), normalize_hidden(neg)))
    where = torch.cuda.get_device_name() if dev == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"# device {dev} ({where}), torch {torch.__version__}; k={k}, {args.groups} groups per call")
    cols = ("spectrum", "M", "d", "method", "ms/group", "max |dw|", "energy", "angle deg")
    print("{:>26} {:>5} {:>5} {:>26} {:>9} {:>9} {:>9} {:>9}".format(*cols))
    for label, pos, neg in groups:
        m, d = pos.shape
        x_ref = pos.double()
        mu = x_ref.mean(0)
        # the float64 reference on the device too (a 4096 x 5120 float64 SVD takes tens of seconds on a
        # host: more than a lent GPU's time allows)
        _, _, vh = torch.linalg.svd((x_ref - mu).to(dev), full_matrices=False)
        v_ref = vh[: min(k, m - 1)].T.cpu()
        w_ref = weights(residuals(neg.double(), mu, v_ref))
        e_ref = float(((x_ref - mu) @ v_ref).square().sum())
        batch = pos.to(dev)[None].expand(args.groups, m, d).contiguous()
        for name, kw in methods:
            kw = {"iterations": cfg.svd_iterations, "oversample": cfg.svd_oversample, **kw}

            def fit(kw=kw, batch=batch, m=m):
                return fit_subspaces(
                    batch.clone(), [m] * args.groups, k, seeds=list(range(args.groups)), **kw
                )

            sub, t = timed(fit, dev, args.repeats)
            mean, basis = sub.mean[0].double().cpu(), sub.basis[0].double().cpu()
            w = weights(residuals(neg.double(), mean, basis))
            energy = float(((x_ref - mu) @ basis).square().sum()) / e_ref
            angle = float(principal_angles(basis[:, : v_ref.shape[1]], v_ref).max()) * 180 / np.pi
            print(
                f"{label:>26} {m:>5} {d:>5} {name:>26} {t / args.groups * 1e3:9.2f} "
                f"{float((w - w_ref).abs().max()):9.2e} {energy:9.6f} {angle:9.2f}"
            )
        # the released code's torch.pca_lowrank(q=k, niter=4) (no oversampling), one group at a time
        x = pos.to(dev)
        (u, s, v), t = timed(lambda x=x: torch.pca_lowrank(x, q=k, niter=4), dev, args.repeats)
        basis = v.double().cpu()
        w = weights(residuals(neg.double(), mu, basis))
        energy = float(((x_ref - mu) @ basis).square().sum()) / e_ref
        angle = float(principal_angles(basis, v_ref).max()) * 180 / np.pi
        print(
            f"{label:>26} {m:>5} {d:>5} {'released (pca_lowrank)':>26} {t * 1e3:9.2f} "
            f"{float((w - w_ref).abs().max()):9.2e} {energy:9.6f} {angle:9.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--rows", type=int, default=4096, help="M: sampled positive rows per group")
    p.add_argument("--negatives", type=int, default=8192, help="negative tokens per group")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--groups", type=int, default=1, help="groups fitted in one batched call")
    p.add_argument("--decays", type=float, nargs="*", default=[1.0, 0.5, 0.0])
    p.add_argument(
        "--variants",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        nargs="*",
        default=[(6, 64), (8, 64)],
        help="extra iterations,oversample pairs of the randomized fit",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-exact", action="store_true", help="do not time exact SVD on the device")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--real", default=None, help="a file written by --save-real")
    p.add_argument("--save-real", default=None, help="write layer L-2 states of the embedded model here")
    args = p.parse_args()
    if args.save_real:
        save_real(args.save_real)
        return
    run(args)


if __name__ == "__main__":
    main()
