"""Low-rank subspace of a group's positive token representations (docs/algorithm.md §4, steps 3-4).

``fit_positive_subspace(x_pos)`` returns ``(mu, V_k)``: the mean of the rows of ``x_pos`` [M, d] and an
orthonormal basis [d, k] of the top-k right singular vectors of the centred rows. Three methods give
the same subspace (checked by principal angles in the tests; chosen by ``bench/bench_resrl_svd.py``):

* ``exact``      ``torch.linalg.svd`` of the centred [M, d] matrix.
* ``gram``       symmetric eigendecomposition of the smaller Gram matrix (``Xc Xc^T`` [M, M] when
                 M <= d, else the scatter matrix ``Xc^T Xc`` [d, d]), in float64.
* ``randomized`` seeded randomised subspace iteration (Halko, Martinsson & Tropp 2011) with ``oversample``
                 extra columns and a Rayleigh-Ritz step (exact SVD of the small projected matrix) per
                 iteration, stopped when the top-k subspace moves by less than ``tol`` between
                 iterations; if it has not settled after ``max_iter`` iterations (no spectral gap near
                 k, where the top-k subspace is ill-defined) it falls back to ``exact``. Unlike
                 ``torch.pca_lowrank`` (the released code: q = k, 4 iterations, no convergence check)
                 it draws from its own generator, so the global RNG is untouched and every rank agrees.
* ``auto``       ``exact`` when ``min(M, d) <= 8 (k + oversample)``, else ``randomized``. Exact SVD costs
                 about ``M d min(M, d)``, the randomised one ``iterations x M d (k + oversample)`` with
                 4-14 iterations: for small models (d = 512: 0.05 s exact vs 0.27 s randomized) exact
                 wins, at Qwen3-8B's d = 4096 randomized does (docs/benchmarks.md).

Directions whose singular value is at the level of float32 rounding noise (rank-deficient positives,
e.g. repeated rows) are dropped: they carry no positive energy and any choice of them would be arbitrary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_resrl.common import require, require_finite
from nemo_resrl.config.algorithm import SVD_METHODS

AUTO_EXACT_FACTOR = 8  # auto: exact SVD when min(M, d) <= this x (k + oversample)


@dataclass(frozen=True)
class PositiveSubspace:
    """``mean`` [d] and orthonormal ``basis`` [d, k] (k may be 0), float32. ``iterations`` and
    ``converged`` report the randomised method (``converged`` False: it fell back to exact SVD)."""

    mean: torch.Tensor
    basis: torch.Tensor
    iterations: int = 0
    converged: bool = True

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])


def _rank_tolerance(x: torch.Tensor) -> float:
    """Singular values of the centred float32 matrix below this are rounding noise of the centring:
    each entry carries an error of about eps * |x|, i.e. a noise matrix of norm ~ eps * ||x||_F."""
    return 10.0 * torch.finfo(torch.float32).eps * float(torch.linalg.matrix_norm(x))


def _top_right_singular_vectors_exact(xc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    return s[:k], vh[:k].T


def _top_right_singular_vectors_gram(xc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    m, d = xc.shape
    a = xc.double()
    if m <= d:
        evals, evecs = torch.linalg.eigh(a @ a.T)  # ascending
        evals, u = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        s = evals.clamp_min(0).sqrt()
        v = (a.T @ u) / s.clamp_min(torch.finfo(torch.float64).tiny)
    else:
        evals, evecs = torch.linalg.eigh(a.T @ a)
        evals, v = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        s = evals.clamp_min(0).sqrt()
    return s, v


def _spectral_sin(v_prev: torch.Tensor, v: torch.Tensor) -> float:
    """Sine of the largest principal angle between orthonormal ``v_prev`` and ``v`` [d, k]."""
    return float(torch.linalg.matrix_norm(v_prev - v @ (v.T @ v_prev), ord=2))


def _top_right_singular_vectors_randomized(
    xc: torch.Tensor, k: int, max_iter: int, oversample: int, seed: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Randomised subspace iteration with a Rayleigh-Ritz step each iteration; stops when the top-k
    Ritz subspace moves by less than ``tol`` (sine of the largest principal angle) between iterations.
    Returns (s [k], V [d, k], iterations, converged)."""
    m, d = xc.shape
    q = min(k + oversample, m, d)
    gen = torch.Generator(device=xc.device).manual_seed(seed)
    z = torch.randn(d, q, generator=gen, device=xc.device, dtype=xc.dtype)
    v_prev = None
    for it in range(max_iter + 1):
        basis_m = torch.linalg.qr(xc @ z).Q  # [M, q]
        small = basis_m.T @ xc  # [q, d]: xc ~= basis_m @ small
        _, s, vh = torch.linalg.svd(small, full_matrices=False)
        v = vh[:k].T
        if v_prev is not None and _spectral_sin(v_prev, v) < tol:
            return s[:k], v, it, True
        v_prev = v
        z = torch.linalg.qr(small.T).Q  # [d, q] = orth(xc^T basis_m)
    return s[:k], v, max_iter, False


def fit_positive_subspace(
    x_pos: torch.Tensor,
    rank: int,
    *,
    method: str = "auto",
    max_iter: int = 32,
    oversample: int = 64,
    tol: float = 1e-4,
    seed: int = 0,
    exact_fallback: bool = True,
) -> PositiveSubspace:
    """Mean and top-``k`` right singular vectors of the centred rows of ``x_pos`` [M, d].

    ``k = min(rank, M - 1, d)``; directions with numerically zero singular value are dropped, so the
    returned basis has at most ``k`` columns. Requires M >= 2 and finite input.
    ``randomized`` runs at most ``max_iter`` iterations; if its subspace has not settled to ``tol`` by
    then (no spectral gap near k) it falls back to ``exact`` unless ``exact_fallback`` is False.
    """
    require(x_pos.dim() == 2, f"x_pos must be [M, d], got shape {tuple(x_pos.shape)}")
    m, d = x_pos.shape
    require(m >= 2, f"need at least 2 positive rows to fit a subspace, got {m}")
    require(rank >= 1, f"rank must be >= 1, got {rank}")
    require(method in SVD_METHODS, f"svd method must be one of {SVD_METHODS}, got {method!r}")
    require_finite(x_pos, "positive representations")
    x = x_pos.float()
    mean = x.mean(dim=0)
    xc = x - mean
    k = min(rank, m - 1, d)
    if method == "auto":
        method = "exact" if min(m, d) <= AUTO_EXACT_FACTOR * (k + oversample) else "randomized"
    iterations, converged = 0, True
    if method == "gram":
        s, v = _top_right_singular_vectors_gram(xc, k)
    elif method == "randomized":
        s, v, iterations, converged = _top_right_singular_vectors_randomized(
            xc, k, max_iter, oversample, seed, tol
        )
    if method == "exact" or (not converged and exact_fallback):
        s, v = _top_right_singular_vectors_exact(xc, k)
    v = v[:, s > _rank_tolerance(x)]
    return PositiveSubspace(
        mean=mean, basis=v.float().contiguous(), iterations=iterations, converged=converged
    )


def residual_energy(x: torch.Tensor, subspace: PositiveSubspace, chunk_tokens: int = 4096) -> torch.Tensor:
    """``R = ||xc - V V^T xc||^2 / d`` with ``xc = x - mu``, per row of ``x`` [T, d] -> [T] float32.

    The residual is formed explicitly (not as ``||xc||^2 - ||V^T xc||^2``) so it is never negative and
    keeps full relative precision for tokens that lie inside the subspace. Processed in chunks of
    ``chunk_tokens`` rows so the temporary is at most [chunk_tokens, d].
    """
    require(x.dim() == 2, f"x must be [T, d], got shape {tuple(x.shape)}")
    require(
        x.shape[1] == subspace.dim, f"x has width {x.shape[1]} but the subspace has dimension {subspace.dim}"
    )
    require(chunk_tokens >= 1, f"chunk_tokens must be >= 1, got {chunk_tokens}")
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    v = subspace.basis
    for start in range(0, x.shape[0], chunk_tokens):
        xc = x[start : start + chunk_tokens].float() - subspace.mean
        r = xc - (xc @ v) @ v.T
        out[start : start + chunk_tokens] = (r * r).sum(dim=-1) / subspace.dim
    return out


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of ``a`` [d, k1] and ``b`` [d, k2].

    Knyazev & Argentati's combination: arccos of the cosines for large angles, arcsin of the sines for
    small ones (arccos alone cannot resolve angles below ~1e-4 rad). Inputs are re-orthonormalised in
    float64 first. Returns ``min(k1, k2)`` angles.
    """
    qa = torch.linalg.qr(a.double()).Q
    qb = torch.linalg.qr(b.double()).Q
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    k = qb.shape[1]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(0.0, 1.0)  # descending -> angles descending
    sin = sin[:k].flip(0)
    small = cos.square() >= 0.5
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos)).sort().values
