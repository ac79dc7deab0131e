"""Low-rank subspaces of positive token representations (docs/algorithm.md §4, steps 3-4), many groups
at once, on any device.

``fit_subspaces(x [G, M, d], counts)`` returns, for each of G groups, the mean ``mu`` [d] of its
``counts[g]`` valid rows and an orthonormal basis [d, k] of the top-k right singular vectors of its
centred rows (k = min(rank, M_g - 1, d); columns past a group's rank are zero, so a zero-padded basis
gives the same residuals as the sliced one). Rows past ``counts[g]`` are padding and are ignored.

Methods (chosen by ``bench/bench_resrl_svd.py``, docs/benchmarks.md):

* ``randomized`` (default): randomized subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4)
  with a block of ``q = k + oversample`` columns and a FIXED number of iterations, every product
  re-orthonormalised (shifted Cholesky QR with a float64 Gram matrix: a few GEMMs and a q x q
  factorisation, fast on a GPU where Householder QR is not), then one Rayleigh-Ritz step solved as a
  generalised q x q eigenproblem in float64 (on the host: q x q is tiny, and a GPU's eigensolver is slow
  at that size). Its cost is ``(2 iterations + 1) x 2 M d q`` flops of batched GEMMs: no tolerance loop,
  no fallback, the same time on every spectrum (no iteration at all when the block is as wide as the
  space, d <= k + oversample: the Rayleigh-Ritz step alone is then exact). Its start block is a
  Rademacher matrix hashed from the group's seed with integer arithmetic, identical on every device
  and rank; the global RNG is untouched.
  Accuracy (docs/benchmarks.md): with the defaults (k = 64, 64 extra columns, 10 iterations) the token
  weights are within 1e-4 of a float64 exact SVD on decaying spectra and on hidden states of the
  embedded model; on a spectrum without a gap at k it captures >= 99 % of exact SVD's energy.
* ``exact``: ``torch.linalg.svd`` of each group's centred rows (the reference; slow on a GPU).

Directions whose singular value is at the level of float32 rounding noise (rank-deficient positives,
e.g. repeated rows) are dropped: they carry no positive energy and any choice of them would be arbitrary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

from nemo_resrl.common import require, require_finite
from nemo_resrl.config.algorithm import SVD_METHODS

FP64 = 8
FP32 = 4
GRAM_SHIFT = 1e-12  # relative shift of the Cholesky QR's Gram matrix: keeps rank-deficient blocks factorable


@dataclass(frozen=True)
class PositiveSubspace:
    """One group's ``mean`` [d] and orthonormal ``basis`` [d, k] (float32; zero columns are allowed and
    do not change residuals)."""

    mean: torch.Tensor
    basis: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        """Number of non-zero basis columns."""
        return int((self.basis.abs().sum(dim=0) > 0).sum())


@dataclass(frozen=True)
class SubspaceBatch:
    """Fits of G groups: ``mean`` [G, d], ``basis`` [G, d, k] (float32, zero columns past each group's
    rank), ``rank`` [G] int64; all on the input's device."""

    mean: torch.Tensor
    basis: torch.Tensor
    rank: torch.Tensor

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def group(self, i: int) -> PositiveSubspace:
        return PositiveSubspace(mean=self.mean[i], basis=self.basis[i])


# splitmix64 constants 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB as signed int64
_SPLITMIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)


def _logical_shift_xor(z: torch.Tensor, shift: int) -> None:
    """z ^= z >>> shift (logical shift on int64), in place."""
    t = z >> shift
    t &= (1 << (64 - shift)) - 1
    z ^= t


def rademacher(seeds: list[int], rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[G, rows, cols] float32 of +-1, one matrix per seed, hashed (splitmix64) from the seed and each
    entry's index with integer arithmetic: the same numbers on every device."""
    out = torch.empty(len(seeds), rows, cols, dtype=torch.float32, device=device)
    base = torch.arange(1, rows * cols + 1, dtype=torch.int64, device=device)
    base *= _SPLITMIX[0]
    for g, seed in enumerate(seeds):
        z = base + (int(seed) & ((1 << 63) - 1))
        _logical_shift_xor(z, 30)
        z *= _SPLITMIX[1]
        _logical_shift_xor(z, 27)
        z *= _SPLITMIX[2]
        _logical_shift_xor(z, 31)
        z &= 1
        out[g].view(-1).copy_(z)
        del z
    return out.mul_(2.0).sub_(1.0)


def orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """[G, n, q] -> [G, n, q] float32 columns spanning (a subspace of) each block's range, orthonormal
    where the block has full rank: Cholesky QR with the Gram matrix in float64, its diagonal shifted by
    ``GRAM_SHIFT`` x its trace so that a rank-deficient block still factors (its null directions then
    come out as near-zero columns, which the Rayleigh-Ritz step drops)."""
    yd = y.double()
    gram = yd.mT @ yd
    diag = gram.diagonal(dim1=-2, dim2=-1)
    shift = diag.sum(-1, keepdim=True)
    shift.mul_(GRAM_SHIFT).add_(torch.finfo(torch.float64).tiny)
    diag.add_(shift)
    del diag, shift
    r, info = torch.linalg.cholesky_ex(gram, upper=True)
    del gram, info
    torch.linalg.solve_triangular(r, yd, upper=True, left=False, out=yd)
    del r
    return yd.float()


ORTHONORMAL_TOL = 1e-5  # a block whose Gram matrix is this close to I is taken as orthonormal


def _host_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of symmetric float64 [..., q, q] host matrices through torch's LAPACK, not
    numpy's: numpy's OpenBLAS keeps its own threads spinning after a call, and on the host they take the
    cores from torch's threads running the rest of the forward pass (the old-log-prob pass of a small
    CPU model ran 2x slower after the fit; ``bench_resrl_pass.py``, OPENBLAS_NUM_THREADS=1 undid it).
    Returns numpy (eigenvalues ascending, vectors)."""
    ev, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(a)))
    out = ev.numpy().copy(), vec.numpy().copy()
    del ev, vec
    return out


def _generalised_ritz(gw: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One rank-deficient group's Rayleigh-Ritz step (float64 [q, q] Gram matrices of w and of b): the
    generalised problem ``c z = s^2 gw z`` with the numerically singular directions of gw dropped.
    Returns (eigenvalues [q] ascending, vectors [q, q]) in w's coordinates."""
    tiny = np.finfo(np.float64).tiny
    lam, u = _host_eigh(gw)
    keep = lam > 1e-10 * max(lam[-1], tiny)
    t = u * np.where(keep, 1.0 / np.sqrt(np.maximum(lam, tiny)), 0.0)[None, :]
    tt = torch.from_numpy(t)
    reduced = (tt.mT @ torch.from_numpy(c) @ tt).numpy().copy()
    ev, e = _host_eigh(reduced)
    return ev, (tt @ torch.from_numpy(e)).numpy().copy()


@record_function("resrl/fit/rayleigh_ritz")
def _ritz(w: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Rayleigh-Ritz over span(w) [G, d, q] with b = xc @ w [G, M, q]: the (generalised) eigenproblem
    ``(b^T b) z = s^2 (w^T w) z`` of each group, in float64 on the host (q x q is tiny, and a GPU's
    eigensolver is slow at that size). The usual case, an orthonormal block (Cholesky QR made it so),
    is one batched eigendecomposition of ``b^T b`` for all such groups; a rank-deficient block (fewer
    rows than the block has columns) solves the generalised problem (``_generalised_ritz``). Returns
    (coefficients [G, q, k] float32 on w's device, singular values [G, k] float64 numpy), so that
    ``w @ coefficients`` is orthonormal.

    One batched call, not a thread per group: threads each running a LAPACK eigensolver contend for the
    cores."""
    wd = w.double()
    gw = (wd.mT @ wd).cpu().numpy().copy()
    del wd
    bd = b.double()
    c = (bd.mT @ bd).cpu().numpy().copy()
    del bd
    q = gw.shape[-1]
    ortho = np.abs(gw - np.eye(q)).max(axis=(1, 2)) < ORTHONORMAL_TOL
    ev = np.empty(gw.shape[:2])
    vec = np.empty_like(gw)
    if ortho.any():
        ev[ortho], vec[ortho] = _host_eigh(c[ortho])
    for i in np.flatnonzero(~ortho):
        ev[i], vec[i] = _generalised_ritz(gw[i], c[i])
    coef = np.ascontiguousarray(vec[:, :, ::-1][:, :, :k], dtype=np.float32)
    return torch.from_numpy(coef).to(w.device), np.sqrt(np.maximum(ev[:, ::-1][:, :k], 0.0))


def subspace_iterations(d: int, rank: int, oversample: int, iterations: int) -> int:
    """The iterations the randomized fit runs: ``iterations``, or none when its block of
    ``min(rank, d) + oversample`` columns is as wide as the space (d <= k + oversample: small models).
    Such a block spans all of it from the start, the iterations cannot change its span, and the
    Rayleigh-Ritz step alone is exact."""
    return iterations if min(rank, d) + oversample < d else 0


@record_function("resrl/fit/randomized")
def _randomized(xc: torch.Tensor, k: int, q: int, iterations: int, seeds: list[int]):
    """Top-k right singular vectors of each centred block xc [G, M, d]: (basis [G, d, k], s [G, k]).
    ``iterations``: as ``subspace_iterations`` gives."""
    w = orthonormalize(rademacher(seeds, xc.shape[2], q, xc.device))
    for _ in range(iterations):
        y = orthonormalize(xc @ w)
        del w
        z = xc.mT @ y
        del y
        w = orthonormalize(z)
        del z
    coef, s = _ritz(w, xc @ w, k)
    return w @ coef, s


def _exact(xc: torch.Tensor, counts: list[int], k: int):
    g, _, d = xc.shape
    basis = xc.new_zeros(g, d, k)
    s = np.zeros((g, k))
    for i, m in enumerate(counts):
        _, sv, vh = torch.linalg.svd(xc[i, :m], full_matrices=False)
        n = min(k, sv.numel())
        basis[i, :, :n] = vh[:n].T
        s[i, :n] = sv[:n].cpu().double().numpy()
    return basis, s


@record_function("resrl/fit")
def fit_subspaces(
    x: torch.Tensor,
    counts: list[int],
    rank: int,
    *,
    method: str = "randomized",
    iterations: int = 10,
    oversample: int = 64,
    seeds: list[int] | None = None,
    overwrite_input: bool = False,
) -> SubspaceBatch:
    """Mean and top-``k`` right singular vectors of the centred valid rows of each group.

    x: [G, M, d] (LayerNorm-ed representations; rows past ``counts[g]`` are padding, any value);
    counts: valid rows per group (host ints, each >= 2); seeds: one int per group (the randomized start).
    ``overwrite_input`` (float32 ``x`` only) lets the fit centre ``x`` in place instead of in a copy.
    """
    require(x.dim() == 3, f"x must be [G, M, d], got shape {tuple(x.shape)}")
    g, m_max, d = x.shape
    require(len(counts) == g, f"counts has {len(counts)} entries for {g} groups")
    require(all(2 <= c <= m_max for c in counts), f"each group needs 2..{m_max} rows, got {counts}")
    require(rank >= 1, f"rank must be >= 1, got {rank}")
    require(method in SVD_METHODS, f"svd method must be one of {SVD_METHODS}, got {method!r}")
    require(iterations >= 0 and oversample >= 0, "iterations and oversample must be >= 0")
    seeds = list(range(g)) if seeds is None else [int(s) for s in seeds]
    require(len(seeds) == g, f"seeds has {len(seeds)} entries for {g} groups")
    if not (overwrite_input and x.dtype == torch.float32):
        x = x.to(torch.float32, copy=True)
    counts_t = torch.tensor(counts, dtype=torch.int64)
    padding = (torch.arange(m_max)[None, :] >= counts_t[:, None]).to(x.device)  # [G, M]
    x.masked_fill_(padding[..., None], 0.0)
    mean = x.sum(dim=1)  # [G, d]
    if not bool(torch.isfinite(mean).all()):
        require_finite(x, "positive representations")
    # float32 rounding noise of the centring: ~ eps * ||x||_F per group
    tol = torch.linalg.vector_norm(x, dim=(1, 2)).cpu().double().numpy() * (10 * np.finfo(np.float32).eps)
    mean.div_(counts_t.to(x.device, torch.float32)[:, None])
    x.sub_(mean[:, None, :])
    x.masked_fill_(padding[..., None], 0.0)
    del padding
    k = min(rank, d)
    if method == "randomized":
        its = subspace_iterations(d, rank, oversample, iterations)
        basis, s = _randomized(x, k, min(k + oversample, d), its, seeds)
    else:
        basis, s = _exact(x, counts, k)
    # keep the columns j < min(k, M_g - 1) whose singular value is above the noise level
    keep = (s > tol[:, None]) & (np.arange(k)[None, :] < np.asarray(counts)[:, None] - 1)
    basis.mul_(torch.from_numpy(keep).to(basis.device, basis.dtype)[:, None, :])
    rank_t = torch.from_numpy(keep.sum(axis=1).astype(np.int64)).to(x.device)
    return SubspaceBatch(mean=mean, basis=basis, rank=rank_t)


def fit_workspace_bytes(groups: int, rows: int, d: int, rank: int, oversample: int, iterations: int) -> int:
    """Peak device bytes ``fit_subspaces(method="randomized", overwrite_input=True)`` allocates for a
    float32 [groups, rows, d] input, beside the input (its results included). Tested against the
    allocations it makes (``nemo_resrl.diagnostics.live_bytes``)."""
    k = min(rank, d)
    q = min(k + oversample, d)
    iterations = subspace_iterations(d, rank, oversample, iterations)
    G, M = groups, rows
    f32, f64 = G * q * FP32, G * q * FP64  # per row of a [G, n, q] block
    small = G * q * q * FP64  # one [G, q, q] float64 matrix
    mean = G * d * FP32
    # orthonormalize([G, n, q] float32 input): the input, its float64 copy (solved in place), the float32
    # result; at the Cholesky factorisation: the input, the copy, the Gram matrix and its factor
    ortho = lambda n: max(n * (f32 + f64 + f32), n * (f32 + f64) + 2 * small + G * 4)  # noqa: E731
    hashing = 3 * d * q * 8  # rademacher: the index base, one group's hash and its shifted copy
    moments = [
        mean + G * d * q * FP32 + hashing,  # the start block, being hashed
        mean + ortho(d),  # orthonormalising the start block
        mean + d * f32 + M * f32 + max(d, M) * f64 + small,  # Rayleigh-Ritz: w, b, a float64 copy, its Gram
        mean + d * f32 + G * d * k * FP32,  # the basis w @ coef
    ]
    if iterations:
        moments += [
            mean + d * f32 + ortho(M),  # the M-side block, with w
            mean + M * f32 + d * f32,  # xc^T y
            mean + ortho(d),  # the d-side block
        ]
    return max(moments)


def fit_positive_subspace(
    x_pos: torch.Tensor,
    rank: int,
    *,
    method: str = "randomized",
    iterations: int = 10,
    oversample: int = 64,
    seed: int = 0,
) -> PositiveSubspace:
    """One group: ``fit_subspaces`` of ``x_pos`` [M, d] (M >= 2). The basis is sliced to its rank."""
    require(x_pos.dim() == 2, f"x_pos must be [M, d], got shape {tuple(x_pos.shape)}")
    require(x_pos.shape[0] >= 2, f"need at least 2 positive rows to fit a subspace, got {x_pos.shape[0]}")
    fit = fit_subspaces(
        x_pos[None],
        [x_pos.shape[0]],
        rank,
        method=method,
        iterations=iterations,
        oversample=oversample,
        seeds=[seed],
    )
    r = int(fit.rank[0])
    return PositiveSubspace(mean=fit.mean[0], basis=fit.basis[0, :, :r].contiguous())


def residual_energy(x: torch.Tensor, subspace: PositiveSubspace, chunk_tokens: int = 4096) -> torch.Tensor:
    """``R = ||xc - V V^T xc||^2 / d`` with ``xc = x - mu``, per row of ``x`` [T, d] -> [T] float32.

    The residual is formed explicitly (not as ``||xc||^2 - ||V^T xc||^2``) so it is never negative and
    keeps full relative precision for tokens that lie inside the subspace. Processed in chunks of
    ``chunk_tokens`` rows so the temporaries are at most [chunk_tokens, d].
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
        proj = xc @ v
        r = torch.addmm(xc, proj, v.mT, alpha=-1.0)  # xc - V V^T xc
        del xc, proj
        out[start : start + chunk_tokens] = r.square_().sum(dim=-1).div_(subspace.dim)
        del r
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
