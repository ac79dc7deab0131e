"""Tests of nemo_resrl.algorithms.shaping: docs/algorithm.md §7 (length-scaled reward) and DAPO's shaping
(§8).

Expected values come from the plain-python references below (written from docs/algorithm.md) or are
hand-computed.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_resrl.algorithms.shaping import (
    length_scaled_reward,
    nonzero_variance_groups,
    overlong_penalty,
)

F64 = torch.float64


def ref_length_scaled(r, L, start=3500, max_length=4096, end_scale=0.7):
    """docs/algorithm.md §7, one response, branch by branch."""
    if r <= 0:
        return r
    if L <= start:
        return r
    if L <= max_length:
        return r * (1.0 - (1.0 - end_scale) * (L - start) / (max_length - start))
    return r * end_scale


def ref_overlong(L, max_length, buffer, factor=1.0):
    """docs/algorithm.md §8 (DAPO): factor * min(-(L - (L_max - buf)) / buf, 0)."""
    return factor * min(-(L - (max_length - buffer)) / buffer, 0.0)


def ref_keep(rewards, group_ids, tol=0.0):
    """Keep a response iff max - min of its group's rewards exceeds tol."""
    groups = {}
    for r, g in zip(rewards, group_ids):
        groups.setdefault(g, []).append(r)
    return [max(groups[g]) - min(groups[g]) > tol for g in group_ids]


# ----------------------------------------------------------------------------------------------------------
# length_scaled_reward
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "length,scale",
    [
        (0, 1.0),
        (1000, 1.0),
        (3500, 1.0),  # L == S: unscaled
        (3501, 1.0 - 0.3 / 596),
        (3798, 0.85),  # 1 - 0.3 * 298 / 596
        (4096, 0.7),  # L == L_max: exactly s
        (4097, 0.7),
        (100_000, 0.7),
    ],
)
def test_length_scaled_reward_hand_cases(length, scale):
    rewards = torch.tensor([1.0, 2.5, 0.0, -1.0, -0.3], dtype=F64)
    lengths = torch.full((5,), length, dtype=torch.long)
    out = length_scaled_reward(rewards, lengths)
    expected = [1.0 * scale, 2.5 * scale, 0.0, -1.0, -0.3]  # non-positive rewards unchanged (no end_scale)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-14, atol=0)
    assert out.dtype == F64


def test_length_scaled_reward_matches_reference_custom_params():
    rng = np.random.default_rng(0)
    start, max_length, end_scale = 1000, 1800, 0.25
    rewards = rng.choice([-1.0, 0.0, 0.5, 1.0, 3.0], size=200)
    lengths = rng.integers(0, 2500, size=200)
    lengths[:6] = [0, 999, 1000, 1001, 1800, 1801]
    out = length_scaled_reward(
        torch.tensor(rewards, dtype=F64),
        torch.tensor(lengths),
        start=start,
        max_length=max_length,
        end_scale=end_scale,
    )
    expected = [ref_length_scaled(r, int(L), start, max_length, end_scale) for r, L in zip(rewards, lengths)]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-14, atol=1e-15)


def test_length_scaled_reward_keeps_float32_dtype():
    rewards = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float32)
    out = length_scaled_reward(rewards, torch.tensor([3798, 4096, 10]))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [0.85, -1.0, 1.0], rtol=1e-6)


def test_length_scaled_reward_integer_rewards_not_truncated():
    """The released run's rewards are +1 / -1, which callers may hold as an integer tensor. The scaled
    reward 0.85 must come back as 0.85 (a float tensor) or be refused with ValueError, never silently
    truncated to 0."""
    rewards = torch.tensor([1, 1, -1, 1])
    lengths = torch.tensor([3798, 4096, 4096, 100])
    try:
        out = length_scaled_reward(rewards, lengths)
    except ValueError:
        return
    np.testing.assert_allclose(out.double().numpy(), [0.85, 0.7, -1.0, 1.0], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    r=st.floats(-5.0, 5.0, allow_nan=False),
    length=st.integers(0, 20_000),
    start=st.integers(1, 8000),
    span=st.integers(1, 8000),
    end_scale=st.floats(0.0, 1.0),
)
def test_length_scaled_reward_bounds(r, length, start, span, end_scale):
    max_length = start + span
    rewards = torch.tensor([r, r], dtype=F64)
    out = length_scaled_reward(
        rewards, torch.tensor([length, length + 1]), start=start, max_length=max_length, end_scale=end_scale
    )
    v, v_next = float(out[0]), float(out[1])
    if r > 0:
        assert r * end_scale - 1e-12 <= v <= r + 1e-12
        assert v_next <= v + 1e-12  # never rewards a longer response more
    else:
        assert v == r and v_next == r
    assert v == pytest.approx(
        ref_length_scaled(r, length, start, max_length, end_scale), rel=1e-12, abs=1e-12
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": 0},
        {"start": 4096},
        {"start": 5000, "max_length": 4096},
        {"end_scale": -0.1},
        {"end_scale": 1.5},
    ],
)
def test_length_scaled_reward_bad_params(kwargs):
    with pytest.raises(ValueError):
        length_scaled_reward(torch.ones(2), torch.tensor([1, 2]), **kwargs)


def test_length_scaled_reward_bad_inputs():
    with pytest.raises(ValueError):
        length_scaled_reward(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        length_scaled_reward(torch.ones(3), torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        length_scaled_reward(torch.tensor([1.0, float("nan")]), torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        length_scaled_reward(torch.ones(2), torch.tensor([1, -2]))


# ----------------------------------------------------------------------------------------------------------
# overlong_penalty
# ----------------------------------------------------------------------------------------------------------
def test_overlong_penalty_hand_cases():
    lengths = torch.tensor([0, 3000, 3584, 3585, 3840, 4096])
    out = overlong_penalty(lengths, max_length=4096, buffer=512)
    np.testing.assert_allclose(out.numpy(), [0.0, 0.0, 0.0, -1 / 512, -0.5, -1.0], rtol=1e-6, atol=0)
    out = overlong_penalty(lengths, max_length=4096, buffer=512, factor=2.0)
    np.testing.assert_allclose(out.numpy(), [0.0, 0.0, 0.0, -2 / 512, -1.0, -2.0], rtol=1e-6, atol=0)
    assert bool((overlong_penalty(lengths, 4096, 512, factor=0.0) == 0).all())


def test_overlong_penalty_matches_reference():
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 8193, size=300)
    out = overlong_penalty(torch.tensor(lengths), max_length=8192, buffer=1024, factor=0.5)
    expected = [ref_overlong(int(L), 8192, 1024, 0.5) for L in lengths]
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-6, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(
    max_length=st.integers(1, 40_000),
    buffer_frac=st.floats(0.0, 1.0),
    factor=st.floats(0.0, 10.0),
    length_frac=st.floats(0.0, 1.0),
)
def test_overlong_penalty_bounds(max_length, buffer_frac, factor, length_frac):
    buffer = max(1, round(buffer_frac * max_length))
    length = round(length_frac * max_length)  # 0 <= L <= L_max
    out = overlong_penalty(
        torch.tensor([length, max_length - buffer, max_length]), max_length, buffer, factor
    )
    v = float(out[0])
    assert -factor * (1 + 1e-6) <= v <= 0.0
    assert v == pytest.approx(ref_overlong(length, max_length, buffer, factor), rel=1e-5, abs=1e-6)
    assert float(out[1]) == 0.0
    assert float(out[2]) == pytest.approx(-factor, rel=1e-6)


@pytest.mark.parametrize(
    "max_length,buffer,factor", [(4096, 0, 1.0), (4096, -5, 1.0), (4096, 5000, 1.0), (4096, 512, -1.0)]
)
def test_overlong_penalty_bad_params(max_length, buffer, factor):
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([10]), max_length, buffer, factor)


# ----------------------------------------------------------------------------------------------------------
# nonzero_variance_groups
# ----------------------------------------------------------------------------------------------------------
def test_nonzero_variance_groups_hand_case():
    # groups (non-contiguous, unsorted ids): 7 mixed, 3 all 1, 9 all 0, 5 singleton, 2 mixed by 1e-9
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.3, 0.3 + 1e-9], dtype=F64)
    gids = torch.tensor([7, 3, 7, 3, 9, 9, 5, 2, 2])
    keep = nonzero_variance_groups(rewards, gids)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, False, True, False, False, False, False, True, True]
    assert keep.tolist() == ref_keep(rewards.tolist(), gids.tolist())
    # tol: a spread of exactly tol is dropped, a larger one kept
    keep = nonzero_variance_groups(torch.tensor([0.0, 0.5, 0.0, 0.75]), torch.tensor([0, 0, 1, 1]), tol=0.5)
    assert keep.tolist() == [False, False, True, True]


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([-1.0, 0.0, 0.5, 1.0])), min_size=1, max_size=24
    )
)
def test_nonzero_variance_groups_matches_reference(data):
    gids = [g * 13 - 20 for g, _ in data]  # negative, non-contiguous ids
    rewards = [r for _, r in data]
    keep = nonzero_variance_groups(torch.tensor(rewards, dtype=torch.float32), torch.tensor(gids))
    assert keep.tolist() == ref_keep(rewards, gids)


def test_nonzero_variance_groups_bad_inputs():
    with pytest.raises(ValueError):
        nonzero_variance_groups(torch.ones(3), torch.tensor([0.0, 1.0, 1.0]))  # float ids
    with pytest.raises(ValueError):
        nonzero_variance_groups(torch.ones(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        nonzero_variance_groups(torch.tensor([1.0, math.nan, 0.0]), torch.tensor([0, 0, 1]))


def test_overlong_penalty_is_capped_at_minus_factor_beyond_max_length():
    out = overlong_penalty(torch.tensor([4096, 5000, 10**6]), max_length=4096, buffer=512, factor=0.5)
    assert out.tolist() == [-0.5, -0.5, -0.5]
