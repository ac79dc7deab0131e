"""Benchmark: ResRL weight computation for one prompt group at Qwen3-8B-like shapes, per SVD method.

Not a test. Prints, for each subspace method, the time of the subspace fit, the time of the whole
group weight computation (sampling, LayerNorm, fit, residuals of every negative token, quantile gate),
the largest principal angle against exact SVD's subspace, the fraction of exact SVD's captured energy,
and the largest token-weight difference against the weights computed with exact SVD.

Synthetic representations: rows ``(g * s) @ Q + offset`` with ``g`` Gaussian, ``s_j = j^-p`` a power-law
spectrum and ``Q`` a random rotation, for several decay exponents ``p`` (``p = 0`` is a flat spectrum,
where the top-k subspace itself is ill-defined and any method's principal angles are large).

    python bench/bench_resrl_svd.py                      # d=4096, 16 x 4096 tokens, M=4096, k=64
    python bench/bench_resrl_svd.py --d 1024 --tokens 1024 --max-rows 1024   # quick
"""

from __future__ import annotations

import argparse
import time

import torch

from nemo_resrl.algorithms.resrl import (
    ResRLConfig,
    normalize_hidden,
    quantile_gate,
    sample_row_indices,
)
from nemo_resrl.algorithms.subspace import fit_positive_subspace, principal_angles, residual_energy


def synthetic_group(
    n_pos_tok: int, n_neg_tok: int, d: int, decay: float, seed: int
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=gen)).Q
    s = torch.arange(1, d + 1, dtype=torch.float32).pow(-decay)
    offset = 3.0 * torch.randn(d, generator=gen)
    pos = (torch.randn(n_pos_tok, d, generator=gen) * s) @ q + offset
    # negatives: half near the positive distribution, half with extra energy in other directions
    neg = (torch.randn(n_neg_tok, d, generator=gen) * s) @ q + offset
    shift = torch.randn(n_neg_tok // 2, d, generator=gen) * s.flip(0)
    neg[: n_neg_tok // 2] += shift @ q
    return pos, neg


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(
        f"# d={args.d} positives={args.pos_responses}x{args.tokens} "
        f"negatives={args.neg_responses}x{args.tokens} "
        f"M={args.max_rows} k={args.rank} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    cfg = ResRLConfig(max_rows=args.max_rows, rank=args.rank)
    header = (
        f"{'decay':>5} {'method':>36} {'fit_s':>8} {'group_s':>8} {'max_angle_deg':>13} "
        f"{'energy_vs_exact':>15} {'max_dw_vs_exact':>15}"
    )
    print(header)
    for decay in args.decays:
        pos, neg = synthetic_group(
            args.pos_responses * args.tokens, args.neg_responses * args.tokens, args.d, decay, 0
        )
        rows = sample_row_indices(pos.shape[0], cfg.max_rows, seed=1234)
        x_pos = normalize_hidden(pos[rows])
        x_neg = normalize_hidden(neg)
        results = {}
        methods = [
            ("exact", {}),
            ("gram", {}),
            # the released code: torch.pca_lowrank(q=k, niter=4), no convergence check
            ("randomized", {"max_iter": 4, "oversample": 0, "tol": 0.0, "exact_fallback": False}),
            # this project's default (ResRLConfig): converge to svd_tol, else fall back to exact
            (
                "randomized",
                {"max_iter": cfg.svd_max_iter, "oversample": cfg.svd_oversample, "tol": cfg.svd_tol},
            ),
        ] + [
            ("randomized", {"max_iter": it, "oversample": p, "tol": cfg.svd_tol}) for it, p in args.randomized
        ]
        for name, kw in methods:
            t0 = time.perf_counter()
            sub = fit_positive_subspace(x_pos, cfg.rank, method=name, seed=7, **kw)
            t_fit = time.perf_counter() - t0
            t1 = time.perf_counter()
            r = residual_energy(x_neg, sub)
            w = quantile_gate(r, cfg.alpha, cfg.beta, cfg.xi)
            t_rest = time.perf_counter() - t1
            label = name
            if kw:
                label = f"rand(max_it={kw['max_iter']},p={kw['oversample']})"
                label += (
                    " released"
                    if kw["tol"] == 0
                    else f" ran {sub.iterations}" + ("" if sub.converged else " +exact")
                )
            results[label] = (sub, w, t_fit, t_fit + t_rest)
        exact_sub, exact_w = results["exact"][0], results["exact"][1]
        xc = x_pos - exact_sub.mean
        exact_energy = float((xc @ exact_sub.basis).square().sum())
        for label, (sub, w, t_fit, t_group) in results.items():
            # t_group excludes sampling + LayerNorm of the inputs, which are the same for every method
            angle = float(principal_angles(sub.basis, exact_sub.basis).max()) * 180 / torch.pi
            energy = float(((x_pos - sub.mean) @ sub.basis).square().sum()) / exact_energy
            dw = float((w - exact_w).abs().max())
            print(
                f"{decay:>5} {label:>36} {t_fit:>8.3f} {t_group:>8.3f} {angle:>13.4f} "
                f"{energy:>15.6f} {dw:>15.2e}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per response")
    p.add_argument("--pos-responses", type=int, default=8)
    p.add_argument("--neg-responses", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=4096)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--decays", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    p.add_argument(
        "--randomized",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        nargs="+",
        default=[(32, 16)],
        help="extra max_iter,oversample pairs for the randomized method",
    )
    p.add_argument("--threads", type=int, default=0)
    run(p.parse_args())


if __name__ == "__main__":
    main()
