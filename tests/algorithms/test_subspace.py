import math
import random

import numpy as np
import pytest
import torch

from nemo_resrl.algorithms.resrl import linear_quantile, normalize_hidden
from nemo_resrl.algorithms.subspace import (
    SVD_METHODS,
    PositiveSubspace,
    fit_positive_subspace,
    fit_subspaces,
    fit_workspace_bytes,
    principal_angles,
    rademacher,
    residual_energy,
)
from nemo_resrl.diagnostics.live_bytes import LiveBytes
from tests.algorithms import reference as ref


def _decaying(m, d, decay=1.0, seed=0, gap_at=None):
    """Rows with a power-law spectrum in a random rotation; optional 10x spectral gap after ``gap_at``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(1, d + 1, dtype=torch.float64).pow(-decay)
    if gap_at is not None:
        s[gap_at:] *= 0.1
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    return (
        (torch.randn(m, d, generator=g, dtype=torch.float64) * s) @ q + torch.randn(d, generator=g)
    ).float()


def _weights_vs_float64(x_pos, x_neg, sub, k, alpha=0.2, beta=0.8, xi=0.1):
    """Largest |w - w_ref| over the negatives, w_ref from a float64 exact SVD of the same rows (§4-5)."""
    mu, v = ref.subspace(x_pos.double().numpy(), k)
    want = ref.gate(ref.residuals(x_neg.double().numpy(), mu, v), alpha, beta, xi)
    r = residual_energy(x_neg, sub).double()
    lo, hi = linear_quantile(r, alpha), linear_quantile(r, beta)
    got = xi + (1 - xi) * ((r - lo) / (hi - lo)).clamp(0, 1)
    return float(np.abs(got.numpy() - want).max())


def test_principal_angles_known_values():
    e = torch.eye(4, dtype=torch.float64)
    rotated = e[:, :1] * math.cos(0.3) + e[:, 1:2] * math.sin(0.3)
    assert principal_angles(e[:, :1], rotated).item() == pytest.approx(0.3, abs=1e-12)
    assert principal_angles(e[:, :2], e[:, 2:]).tolist() == pytest.approx([math.pi / 2] * 2)
    tiny = e[:, :1] * math.cos(1e-7) + e[:, 1:2] * math.sin(1e-7)  # arccos alone cannot resolve this
    assert principal_angles(e[:, :1], tiny).item() == pytest.approx(1e-7, rel=1e-6)


@pytest.mark.parametrize("m,d", [(200, 64), (40, 96)])
def test_exact_matches_numpy_float64_reference(m, d):
    x = _decaying(m, d, seed=1)
    sub = fit_positive_subspace(x, 16, method="exact")
    mu, v = ref.subspace(x.double().numpy(), 16)
    np.testing.assert_allclose(sub.mean.double().numpy(), mu, atol=1e-5)
    assert sub.rank == 16
    assert principal_angles(sub.basis, torch.from_numpy(v)).max() < 1e-4


@pytest.mark.parametrize("method", SVD_METHODS)
@pytest.mark.parametrize("m,d", [(300, 64), (48, 128), (600, 200)])  # the last: q = k + 64 < min(m, d)
def test_every_method_matches_exact_subspace(method, m, d):
    """docs/algorithm.md §4.4: any method must reproduce exact SVD's subspace (principal angles)."""
    x = _decaying(m, d, seed=2, gap_at=16)
    exact = fit_positive_subspace(x, 16, method="exact")
    other = fit_positive_subspace(x, 16, method=method)
    assert other.rank == exact.rank == 16
    assert principal_angles(other.basis, exact.basis).max() < 1e-3
    assert torch.allclose(other.mean, exact.mean)


def test_released_code_randomized_setting_is_not_exact_without_a_gap():
    """Why the default oversamples and iterates more: q = k and 4 iterations (torch.pca_lowrank as
    released) miss the exact subspace on a slowly decaying spectrum; the default does not."""
    x = _decaying(256, 128, decay=0.5, seed=3)
    exact = fit_positive_subspace(x, 32, method="exact")
    released = fit_positive_subspace(x, 32, iterations=4, oversample=0)
    assert principal_angles(released.basis, exact.basis).max() > 0.1
    default = fit_positive_subspace(x, 32)
    assert principal_angles(default.basis, exact.basis).max() < 1e-3


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_default_weights_within_1e_3_of_float64_on_decaying_spectra(decay):
    """The accuracy that matters: the token weights, against a float64 exact SVD, on groups shaped like
    real ones (k = 64, M = 2048 rows, d = 512; negatives half near, half off the positive distribution)."""
    d = 512
    x_pos = normalize_hidden(_decaying(2048, d, decay=decay, seed=4))
    g = torch.Generator().manual_seed(5)
    near = normalize_hidden(_decaying(1024, d, decay=decay, seed=4)[:512])
    far = normalize_hidden(_decaying(512, d, decay=decay, seed=4) + 0.05 * torch.randn(512, d, generator=g))
    sub = fit_positive_subspace(x_pos, 64, seed=11)
    assert _weights_vs_float64(x_pos, torch.cat([near, far]), sub, 64) < 1e-3


def test_default_captures_the_energy_of_a_spectrum_without_a_gap():
    """No gap at k: the top-k subspace is ill-defined (any method's principal angles are large), but the
    energy it captures is what the residuals see: >= 99 % of exact SVD's."""
    x = normalize_hidden(_decaying(2048, 256, decay=0.0, seed=6))
    exact = fit_positive_subspace(x, 64, method="exact")
    fast = fit_positive_subspace(x, 64, seed=1)
    energy = lambda s: float(((x - s.mean) @ s.basis).square().sum())  # noqa: E731
    assert energy(fast) / energy(exact) > 0.99


def test_a_block_as_wide_as_the_space_runs_no_iteration_and_is_exact(monkeypatch):
    """d <= k + oversample (small models): the start block spans the whole space, so the fit skips the
    iterations (one orthonormalisation instead of 21) and the Rayleigh-Ritz step alone gives the exact
    weights, even on a spectrum without a gap."""
    import nemo_resrl.algorithms.subspace as subspace

    assert subspace.subspace_iterations(128, 64, 64, 10) == 0
    assert subspace.subspace_iterations(129, 64, 64, 10) == 10
    assert subspace.subspace_iterations(96, 8, 0, 10) == 10
    calls = []
    real = subspace.orthonormalize
    monkeypatch.setattr(subspace, "orthonormalize", lambda y: calls.append(y.shape) or real(y))
    d = 96
    x_pos = normalize_hidden(_decaying(1024, d, decay=0.0, seed=8))
    x_neg = normalize_hidden(_decaying(512, d, decay=0.0, seed=9))
    sub = fit_positive_subspace(x_pos, 64, seed=2)
    assert calls == [(1, d, d)]
    assert _weights_vs_float64(x_pos, x_neg, sub, 64) < 1e-5
    calls.clear()
    fit_positive_subspace(x_pos, 16, seed=2)  # q = 80 < d: the iterations run
    assert len(calls) == 21


def test_batched_fit_with_padding_equals_one_group_at_a_time():
    g = torch.Generator().manual_seed(7)
    counts = [300, 57, 4, 120]
    rows = [_decaying(n, 96, seed=i) for i, n in enumerate(counts)]
    x = torch.randn(len(counts), max(counts), 96, generator=g) * 100  # padding holds anything
    for i, r in enumerate(rows):
        x[i, : r.shape[0]] = r
    for method in SVD_METHODS:
        batch = fit_subspaces(x, counts, 16, method=method, seeds=[3, 4, 5, 6])
        for i, r in enumerate(rows):
            one = fit_positive_subspace(r, 16, method=method, seed=3 + i)
            assert int(batch.rank[i]) == one.rank == min(16, counts[i] - 1)
            torch.testing.assert_close(batch.mean[i], one.mean, atol=1e-5, rtol=0)
            assert principal_angles(batch.basis[i][:, : one.rank], one.basis).max() < 1e-4
            assert (batch.basis[i][:, one.rank :] == 0).all()


def test_rademacher_start_is_deterministic_balanced_and_per_seed():
    a = rademacher([1, 2], 64, 32)
    assert a.shape == (2, 64, 32) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, rademacher([1, 2], 64, 32))
    assert not torch.equal(a[0], a[1])
    assert abs(float(rademacher([123], 256, 256).mean())) < 0.01  # 65536 signs: std 0.004
    assert torch.equal(rademacher([2**62 + 5], 3, 3), rademacher([2**62 + 5], 3, 3))


def test_rank_is_capped_by_m_minus_one_and_d():
    x = _decaying(5, 64, seed=4)
    assert fit_positive_subspace(x, 64, method="exact").rank == 4  # M - 1
    assert fit_positive_subspace(x, 64).rank == 4
    x = _decaying(100, 8, seed=4)
    assert fit_positive_subspace(x, 64).rank == 8  # d


@pytest.mark.parametrize("method", SVD_METHODS)
def test_rank_deficient_positives_drop_null_directions(method):
    row = torch.randn(1, 32)
    x = torch.cat([row, row, row, row + torch.randn(1, 32)])  # centred rank 1
    sub = fit_positive_subspace(x, 8, method=method)
    assert sub.rank == 1
    identical = fit_positive_subspace(row.repeat(6, 1), 8, method=method)
    assert identical.rank == 0
    assert torch.isfinite(residual_energy(torch.randn(3, 32), identical)).all()


def test_the_fit_uses_no_numpy_linear_algebra(monkeypatch):
    """The Rayleigh-Ritz step runs on the host, through torch's LAPACK: numpy's OpenBLAS would leave its
    threads spinning and slow the rest of the forward pass on the host's cores. Both paths: an
    orthonormal block (many rows) and a rank-deficient one (fewer rows than the block's columns), in one
    batched call."""

    def refuse(*a, **k):
        raise AssertionError("numpy linear algebra called by the fit")

    for name in ("eigh", "svd", "qr", "cholesky", "solve"):
        monkeypatch.setattr(np.linalg, name, refuse)
    monkeypatch.setattr(np, "matmul", refuse)
    monkeypatch.setattr(np, "dot", refuse)
    x = torch.zeros(2, 200, 96)
    x[0] = _decaying(200, 96, seed=1, gap_at=16)
    x[1, :5] = _decaying(5, 96, seed=2)
    fit = fit_subspaces(x, [200, 5], 16, oversample=16, iterations=2)
    monkeypatch.undo()
    assert fit.rank.tolist() == [16, 4]
    mu, v = ref.subspace(x[0].double().numpy(), 16)
    assert principal_angles(fit.basis[0], torch.from_numpy(v)).max() < 1e-2


def test_residual_energy_matches_reference_and_is_chunk_invariant():
    x_pos = _decaying(120, 48, seed=5)
    sub = fit_positive_subspace(x_pos, 10, method="exact")
    x = torch.randn(37, 48)
    want = ref.residuals(x.double().numpy(), sub.mean.double().numpy(), sub.basis.double().numpy())
    for chunk in (1, 5, 37, 1000):
        np.testing.assert_allclose(
            residual_energy(x, sub, chunk).double().numpy(), want, rtol=1e-5, atol=1e-7
        )


def test_residual_of_in_subspace_points_is_zero_and_nonnegative():
    basis = torch.linalg.qr(torch.randn(64, 4)).Q
    sub = PositiveSubspace(mean=torch.randn(64), basis=basis)
    inside = sub.mean + torch.randn(10, 4) @ basis.T
    r = residual_energy(inside, sub)
    assert (r >= 0).all() and r.max() < 1e-10


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        fit_positive_subspace(torch.randn(1, 8), 4)
    with pytest.raises(ValueError, match="non-finite"):
        fit_positive_subspace(torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="svd method"):
        fit_positive_subspace(torch.randn(4, 8), 2, method="qr")
    with pytest.raises(ValueError, match="rows"):
        fit_subspaces(torch.randn(2, 5, 8), [5, 1], 2)
    sub = fit_positive_subspace(torch.randn(6, 8), 2)
    with pytest.raises(ValueError, match="width"):
        residual_energy(torch.randn(3, 9), sub)


def test_fit_workspace_bytes_equal_what_the_fit_allocates():
    """The planner's fit term, byte for byte, against the storages the fit creates (random shapes:
    tall and wide blocks, q above and below M and d, zero and several iterations)."""
    rnd = random.Random(0)
    cases = [(8, 512, 256, 64, 64, 10), (2, 300, 64, 8, 16, 1), (1, 50, 40, 64, 64, 2), (3, 34, 282, 2, 0, 0)]
    cases += [
        (
            rnd.randint(1, 4),
            rnd.randint(3, 300),
            rnd.randint(2, 200),
            rnd.randint(1, 70),
            rnd.choice([0, 64]),
            it,
        )
        for it in (0, 1, 3)
        for _ in range(6)
    ]
    for groups, rows, d, rank, oversample, iterations in cases:
        x = torch.randn(groups, rows, d)
        counts = [rows] + [rnd.randint(2, rows) for _ in range(groups - 1)]
        with LiveBytes() as lb:
            fit_subspaces(x, counts, rank, oversample=oversample, iterations=iterations, overwrite_input=True)
        want = fit_workspace_bytes(groups, rows, d, rank, oversample, iterations)
        assert lb.peak == want, (groups, rows, d, rank, oversample, iterations, lb.peak, want)
