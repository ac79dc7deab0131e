import math

import numpy as np
import pytest
import torch

from nemo_resrl.algorithms.subspace import (
    SVD_METHODS,
    PositiveSubspace,
    fit_positive_subspace,
    principal_angles,
    residual_energy,
)
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
    """Why the default checks convergence: q = k and 4 iterations (torch.pca_lowrank as released) miss
    the exact subspace on a slowly decaying spectrum."""
    x = _decaying(256, 128, decay=0.5, seed=3)
    exact = fit_positive_subspace(x, 32, method="exact")
    released = fit_positive_subspace(
        x, 32, method="randomized", max_iter=4, oversample=0, tol=0.0, exact_fallback=False
    )
    assert not released.converged
    assert principal_angles(released.basis, exact.basis).max() > 0.1


def test_randomized_falls_back_to_exact_when_it_does_not_settle():
    x = _decaying(256, 128, decay=0.0, seed=3)  # flat spectrum: no gap at k
    exact = fit_positive_subspace(x, 32, method="exact")
    sub = fit_positive_subspace(x, 32, method="randomized", max_iter=3)
    assert not sub.converged and sub.iterations == 3
    assert principal_angles(sub.basis, exact.basis).max() < 1e-3


def test_randomized_converges_early_with_a_gap():
    x = _decaying(300, 64, seed=2, gap_at=16)
    sub = fit_positive_subspace(x, 16, method="randomized", oversample=8)  # q = 24 < d: a real iteration
    assert sub.converged and 0 < sub.iterations < 32
    exact = fit_positive_subspace(x, 16, method="exact")
    assert principal_angles(sub.basis, exact.basis).max() < 1e-3


def test_rank_is_capped_by_m_minus_one_and_d():
    x = _decaying(5, 64, seed=4)
    assert fit_positive_subspace(x, 64, method="exact").rank == 4  # M - 1
    x = _decaying(100, 8, seed=4)
    assert fit_positive_subspace(x, 64, method="gram").rank == 8  # d


@pytest.mark.parametrize("method", SVD_METHODS)
def test_rank_deficient_positives_drop_null_directions(method):
    row = torch.randn(1, 32)
    x = torch.cat([row, row, row, row + torch.randn(1, 32)])  # centred rank 1
    sub = fit_positive_subspace(x, 8, method=method)
    assert sub.rank == 1
    identical = fit_positive_subspace(row.repeat(6, 1), 8, method=method)
    assert identical.rank == 0
    assert torch.isfinite(residual_energy(torch.randn(3, 32), identical)).all()


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
    sub = fit_positive_subspace(torch.randn(6, 8), 2)
    with pytest.raises(ValueError, match="width"):
        residual_energy(torch.randn(3, 9), sub)


def test_auto_picks_exact_for_small_shapes_and_randomized_for_large_ones():
    g = torch.Generator().manual_seed(0)
    small = fit_positive_subspace(torch.randn(200, 64, generator=g), 8)  # min(M, d) = 64 <= 8 * 72
    assert small.iterations == 0
    # a clear gap at k = 4 so the randomised iteration settles: min(M, d) = 600 > 8 * (4 + 64)
    x = torch.randn(600, 4, generator=g) @ torch.randn(4, 600, generator=g) * 10 + torch.randn(
        600, 600, generator=g
    )
    big = fit_positive_subspace(x, 4)
    assert big.iterations > 0 and big.converged
    exact = fit_positive_subspace(x, 4, method="exact")
    assert principal_angles(big.basis, exact.basis).max() < 1e-2
